"""Awaiting many callbacks at once, and leaving nothing behind in the registry."""

from __future__ import annotations

import asyncio
import random

import aiohttp

from helpers import eventually, post_callback, registry_size, start_waiting

# Every test here runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True


async def test_a_group_of_50_is_awaited_with_one_request_while_callbacks_arrive(client):
    response = await client.post("/v1/callbacks/batch", json={"count": 50, "group": "import-7"})
    callbacks = (await response.json())["callbacks"]

    waiting = await start_waiting(client, "/v1/groups/import-7/wait?timeout=20")

    async def third_party(callback):
        await asyncio.sleep(random.uniform(0, 0.3))  # the callbacks arrive at random moments
        await post_callback(client, callback, data={"RequestID": callback["token"][:8], "StatusCode": "OK"})

    await asyncio.gather(*(third_party(c) for c in callbacks[:49]))
    # One callback is still pending: a wait that answered now would count it pending below.
    await client.delete(f"/v1/callbacks/{callbacks[49]['token']}")

    response = await asyncio.wait_for(waiting, 5)
    assert response.status == 200
    assert await response.json() == {
        "group": "import-7",
        "total": 50,
        "pending": 0,
        "received": 49,
        "expired": 0,
        "cancelled": 1,
        "overdue": 0,
        # Marketing Cloud's StatusCode OK: every result is ok.
        "outcomes": {"ok": 49, "error": 0, "unknown": 0},
        "errors": [],
        "pending_tokens": [],
    }
    deliveries = await (await client.get("/v1/deliveries?group=import-7&limit=1000")).json()
    assert {d["token"] for d in deliveries["deliveries"]} == {c["token"] for c in callbacks[:49]}


async def test_a_group_wait_times_out_with_204(client):
    await client.post("/v1/callbacks/batch", json={"count": 2, "group": "slow"})
    response = await client.get("/v1/groups/slow/wait?timeout=0.2")
    assert response.status == 204
    assert registry_size(client) == 0


async def test_the_registry_is_empty_after_a_thousand_timed_out_waits(client):
    response = await client.post("/v1/callbacks/batch", json={"count": 100, "group": "quiet"})
    tokens = [c["token"] for c in (await response.json())["callbacks"]]
    connector = aiohttp.TCPConnector(limit=1000)
    async with aiohttp.ClientSession(connector=connector) as session:
        base = f"http://{client.host}:{client.port}"

        async def wait(i):
            if i % 10 == 0:
                url = f"{base}/v1/deliveries?group=quiet&wait=0.5"
            else:
                url = f"{base}/v1/callbacks/{tokens[i % 100]}/wait?timeout=0.5"
            async with session.get(url) as response:
                return response.status

        statuses = await asyncio.gather(*(wait(i) for i in range(1000)))
    assert statuses.count(204) == 900 and statuses.count(200) == 100
    assert registry_size(client) == 0


async def test_a_client_that_hangs_up_leaves_nothing_behind(client):
    response = await client.post("/v1/callbacks/batch", json={"count": 20})
    tokens = [c["token"] for c in (await response.json())["callbacks"]]
    base = f"http://{client.host}:{client.port}"
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(session.get(f"{base}/v1/callbacks/{t}/wait?timeout=60")) for t in tokens]
        await eventually(lambda: registry_size(client) == 20)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await eventually(lambda: registry_size(client) == 0)


async def test_many_waiters_on_one_token_are_all_woken(client):
    response = await client.post("/v1/callbacks", json={})
    callback = await response.json()
    waits = [
        asyncio.create_task(client.get(f"/v1/callbacks/{callback['token']}/wait?timeout=10")) for _ in range(20)
    ]
    await eventually(lambda: registry_size(client) == 20)
    await post_callback(client, callback, json={"ok": 1})
    answers = await asyncio.wait_for(asyncio.gather(*waits), 5)
    assert all(a.status == 200 for a in answers)
    assert registry_size(client) == 0
