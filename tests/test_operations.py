"""Running it: readiness through a store outage, metrics, retention."""

from __future__ import annotations

import asyncio
import sqlite3

from cbhub.http.ingest import INGESTS
from cbhub.http.keys import HUB
from cbhub.domain.model import now_ms
from helpers import eventually, mint, post_callback


async def test_a_locked_store_answers_503_never_200_and_recovers_by_itself(client, db_path):
    callback = await mint(client)
    assert (await client.get("/readyz")).status == 200

    # Another process holds the write lock (a stuck maintenance job, a backup tool...).
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        async with client.post(f"/cb/{callback['token']}", data="while locked") as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert (await response.json())["error"]["code"] == "store_unavailable"
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200  # alive, just not writable
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    async def ready() -> bool:
        return (await client.get("/readyz")).status == 200

    await eventually(ready, what="ready again once the lock is gone")
    await post_callback(client, callback, data="after the outage")
    state = await (await client.get(f"/v1/callbacks/{callback['token']}")).json()
    assert state["deliveries"] == 1 and state["result"]["body"] == "after the outage"


async def test_a_sender_that_hangs_up_while_its_commit_waits_is_still_stored(client, db_path):
    callback = await mint(client)
    # The writer is held at its next commit by another connection's write lock (for less than
    # its 2 s busy timeout), so the POST below is submitted and waiting when its sender leaves.
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        body = b"result=ready"
        writer.write(
            f"POST /cb/{callback['token']} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        await writer.drain()
        await eventually(lambda: client.app[INGESTS].count == 1)
        writer.close()  # gone before any answer
        await writer.wait_closed()
        await eventually(lambda: client.app[INGESTS].count == 0)  # its handler was cancelled
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    async def stored() -> bool:
        state = await (await client.get(f"/v1/callbacks/{callback['token']}")).json()
        return state["deliveries"] == 1 and state["result"]["body"] == {"result": "ready"}

    await eventually(stored, what="the delivery of the sender that left, stored")
    await post_callback(client, callback, data="the next one")  # the writer goes on as before


async def test_metrics_show_deliveries_callbacks_waiters_and_commits(client):
    callback = await mint(client)
    await mint(client)
    await post_callback(client, callback, json={"ok": True})
    await post_callback(client, callback, json={"ok": True}, headers={"webhook-id": "m1"})
    await post_callback(client, callback, json={"ok": True}, headers={"webhook-id": "m1"})
    async with client.post("/cb/" + "n" * 43, data="x") as response:
        assert response.status == 404
    waiting = asyncio.create_task(client.get(f"/v1/callbacks/{callback['token']}/wait?timeout=5&after=999"))
    await eventually(lambda: len(client.app[HUB].registry) == 1)

    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert 'cbhub_deliveries_total{outcome="stored"} 2.0' in text
    assert 'cbhub_deliveries_total{outcome="duplicate"} 1.0' in text
    assert 'cbhub_deliveries_total{outcome="not_found"} 1.0' in text
    assert 'cbhub_callbacks{status="pending"} 1.0' in text
    assert 'cbhub_callbacks{status="received"} 1.0' in text
    assert 'cbhub_waiters{kind="long_poll"} 1.0' in text
    assert "cbhub_commit_batch_size_count" in text and "cbhub_commit_seconds_bucket" in text
    assert "cbhub_ingest_seconds_count 3.0" in text
    assert "process_resident_memory_bytes" in text
    waiting.cancel()


async def test_metrics_can_be_guarded_by_a_token(start_hub, make_config):
    client = await start_hub(make_config(**{"metrics.token": "s3cret"}))
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})).status == 200


async def test_retention_deletes_only_what_expired_long_enough_ago(client, db_path):
    old = [await mint(client, ttl=1, group="old") for _ in range(3)]
    for callback in old:
        for n in range(2):
            await post_callback(client, callback, data=f"n={n}")
    fresh = await mint(client, ttl=86400 * 29, group="fresh")
    await post_callback(client, fresh, data="keep me")
    hub = client.app[HUB]

    # Not yet: retention keeps expired callbacks for retention.days (30) after their expiry.
    assert await hub.apply_retention(now=now_ms() + 29 * 86_400_000) == 0
    gone = await hub.apply_retention(now=now_ms() + 31 * 86_400_000)
    assert gone == 3 + 3 * 2
    for callback in old:
        assert (await client.get(f"/v1/callbacks/{callback['token']}")).status == 404
    state = await (await client.get(f"/v1/callbacks/{fresh['token']}")).json()
    assert state["result"]["body"] == "keep me"
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental
    assert conn.execute("SELECT COUNT(*) FROM deliveries").fetchone() == (1,)
    conn.close()


async def test_retention_zero_keeps_everything(start_hub, make_config):
    client = await start_hub(make_config(**{"retention.days": "0"}))
    callback = await mint(client, ttl=1)
    await post_callback(client, callback, data="x")
    assert await client.app[HUB].apply_retention(now=now_ms() + 10_000 * 86_400_000) == 0
    assert (await client.get(f"/v1/callbacks/{callback['token']}")).status == 200
