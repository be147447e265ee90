"""A database from before outcomes: migrated in place; what it stored reads as unknown."""

from __future__ import annotations

import sqlite3

from helpers import post_callback

from cbhub.domain.model import now_ms
from cbhub.store.sqlite.migrations import MIGRATIONS

# Found by name, not by number: steps added after it leave this test as it is.
BEFORE_OUTCOMES = next(index for index, step in enumerate(MIGRATIONS) if step.__name__ == "_outcomes")


def _database_before_outcomes(path) -> str:
    token = "before-outcomes-0123456789abcdefghijklmnopqrstu"
    conn = sqlite3.connect(path)
    for step in MIGRATIONS[:BEFORE_OUTCOMES]:
        step(conn)
    now = now_ms()
    callback_id = conn.execute(
        "INSERT INTO callbacks (token, status, created_at, expires_at, group_name, deliveries) VALUES (?, ?, ?, ?, ?, 1)",
        (token, "received", now, now + 3_600_000, "old"),
    ).lastrowid
    delivery_id = conn.execute(
        "INSERT INTO deliveries (callback_id, group_name, received_at, method, headers, query, body)"
        " VALUES (?, 'old', ?, 'POST', '{}', '', ?)",
        (callback_id, now, b'{"status": "failed"}'),
    ).lastrowid
    conn.execute("UPDATE callbacks SET last_delivery_id = ? WHERE id = ?", (delivery_id, callback_id))
    conn.execute(f"PRAGMA user_version = {BEFORE_OUTCOMES}")
    conn.commit()
    conn.close()
    return token


async def test_a_database_from_before_outcomes_reads_its_deliveries_as_unknown(start_hub, make_config, db_path):
    token = _database_before_outcomes(db_path)
    client = await start_hub(make_config())
    old = await (await client.get(f"/v1/callbacks/{token}")).json()
    # Decided when stored: what was stored before is not judged again.
    assert (old["outcome"], old["error"], old["outcome_rule"]) == ("unknown", None, None)
    assert (old["result"]["outcome"], old["result"]["error"]) == ("unknown", None)
    summary = await (await client.get("/v1/groups/old")).json()
    assert summary["outcomes"] == {"ok": 0, "error": 0, "unknown": 1}

    await post_callback(client, old, json={"status": "failed"})
    assert (await (await client.get(f"/v1/callbacks/{token}")).json())["outcome"] == "error"
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
