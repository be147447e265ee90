"""Everything survives a restart: callbacks, deliveries, statuses and cursors."""

from __future__ import annotations

import sqlite3

import pytest

from cbhub.errors import SchemaTooNew
from cbhub.store.sqlite.store import SQLiteStore
from helpers import mint, post_callback


async def test_data_and_cursors_survive_a_restart(start_hub, config):
    first = await start_hub(config)
    received = await mint(first, group="g", label="kept", metadata={"a": [1, 2]})
    cancelled = await mint(first, group="g")
    pending = await mint(first, group="g")
    ids = [(await post_callback(first, received, json={"n": n}))["delivery_id"] for n in range(3)]
    await first.delete(f"/v1/callbacks/{cancelled['token']}")
    before = await (await first.get(f"/v1/callbacks/{received['token']}")).json()
    await first.close()

    second = await start_hub(config)
    after = await (await second.get(f"/v1/callbacks/{received['token']}")).json()
    assert {k: v for k, v in after.items() if k != "callback_url"} == {
        k: v for k, v in before.items() if k != "callback_url"
    }
    assert (await (await second.get(f"/v1/callbacks/{cancelled['token']}")).json())["status"] == "cancelled"
    assert (await (await second.get(f"/v1/callbacks/{pending['token']}")).json())["status"] == "pending"

    # A client that saw the first delivery before the restart resumes from its cursor.
    resumed = await (await second.get(f"/v1/deliveries?group=g&after={ids[0]}")).json()
    assert [d["id"] for d in resumed["deliveries"]] == ids[1:]
    # New deliveries continue the sequence.
    newer = await post_callback(second, pending, json={"n": 3})
    assert newer["delivery_id"] > ids[-1]
    counts = await (await second.get("/v1/groups/g")).json()
    assert (counts["received"], counts["cancelled"], counts["pending"]) == (2, 1, 0)


async def test_a_database_from_a_newer_cbhub_is_refused_and_left_untouched(db_path):
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE future (x)")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    before = db_path.read_bytes()

    store = SQLiteStore(db_path)
    with pytest.raises(SchemaTooNew, match="99"):
        await store.open()
    assert db_path.read_bytes() == before


async def test_the_database_file_is_private_to_its_owner(client, db_path):
    await mint(client)
    assert db_path.stat().st_mode & 0o777 == 0o600


async def test_a_database_made_by_the_first_schema_version_is_migrated_forward(start_hub, make_config, db_path):
    from cbhub.store.sqlite.migrations import MIGRATIONS

    # Exactly what the first released cbhub wrote: schema version 1 and its rows.
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    MIGRATIONS[0](conn)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO callbacks (token, status, created_at, expires_at, label, group_name, metadata, deliveries,"
        " last_delivery_id) VALUES ('t' || hex(randomblob(20)), 'received', 1700000000000, 4102444800000, 'old', 'g',"
        " '{\"v\": 1}', 1, 1)"
    )
    conn.execute(
        "INSERT INTO deliveries (callback_id, group_name, received_at, method, content_type, remote_addr, headers,"
        " query, body, correlation_id) VALUES (1, 'g', 1700000001000, 'POST', 'application/x-www-form-urlencoded',"
        " '192.0.2.1', CAST('{}' AS BLOB), 'x=1', CAST('RequestID=r-1&StatusCode=OK' AS BLOB), 'r-1')"
    )
    (token,) = conn.execute("SELECT token FROM callbacks").fetchone()
    conn.commit()
    conn.close()

    client = await start_hub(make_config())
    state = await (await client.get(f"/v1/callbacks/{token}")).json()
    assert state["label"] == "old" and state["metadata"] == {"v": 1} and state["status"] == "received"
    assert state["result"]["body"] == {"RequestID": "r-1", "StatusCode": "OK"}
    assert state["result"]["query"] == {"x": "1"}
    found = await (await client.get("/v1/deliveries?correlation_id=r-1")).json()
    assert [d["id"] for d in found["deliveries"]] == [1]
    # And it keeps working: a new delivery continues the cursor.
    receipt = await post_callback(client, {"token": token}, data="RequestID=r-2")
    assert receipt["delivery_id"] == 2
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    conn.close()
