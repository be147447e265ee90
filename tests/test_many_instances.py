"""Two `cbhub serve` processes over one PostgreSQL database, as behind a load balancer: a
waiter on one is woken by a callback posted to the other, and nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from helpers import eventually, has_waiters, post_acknowledged, terminate_listeners, waiters

TIMEOUT = aiohttp.ClientTimeout(total=30)


@pytest.fixture
def start_instance(serve_process, pg_dsn):
    """Start one more `cbhub serve` on the test's database; returns (process, base URL)."""

    def start() -> tuple[Any, str]:
        server = serve_process(
            "--port", "0", env={
                "CBHUB_STORAGE_BACKEND": "postgres",
                "CBHUB_STORAGE_DSN": pg_dsn,
                # All the load comes from 127.0.0.1: no per-address rate limit.
                "CBHUB_INGEST_RATE_PER_IP": "0",
            },
        )
        url = server.wait_until_serving()
        server.keep_reading()
        return server, url

    return start


@pytest.fixture
def two(start_instance) -> tuple[str, str]:
    (_, a), (_, b) = start_instance(), start_instance()
    return a, b


async def _mint(session: aiohttp.ClientSession, url: str, count: int, **fields: Any) -> list[str]:
    async with session.post(f"{url}/v1/callbacks/batch", json={"count": count, "ttl": 3600, **fields}) as response:
        assert response.status == 201, await response.text()
        return [c["token"] for c in (await response.json())["callbacks"]]


async def _post(session: aiohttp.ClientSession, url: str, token: str, body: str) -> int:
    async with session.post(
        f"{url}/cb/{token}", data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    ) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["delivery_id"]


async def _all_ids(session: aiohttp.ClientSession, url: str, query: str = "") -> list[int]:
    ids: list[int] = []
    while True:
        async with session.get(f"{url}/v1/deliveries?{query}&after={ids[-1] if ids else 0}&limit=1000") as response:
            page = (await response.json())["deliveries"]
        if not page:
            return ids
        ids += [d["id"] for d in page]


async def test_long_poll_websocket_and_sse_waiters_on_a_are_woken_by_posts_to_b(two):
    a, b = two
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        long_poll, websocket, sse = await _mint(session, b, 3)
        woken: dict[str, float] = {}

        async def wait_long_poll() -> dict:
            async with session.get(f"{a}/v1/callbacks/{long_poll}/wait?timeout=20") as response:
                assert response.status == 200
                woken["long_poll"] = time.monotonic()
                return await response.json()

        async def wait_websocket(ready: asyncio.Event) -> dict:
            async with session.ws_connect(f"{a}/v1/callbacks/{websocket}/ws?once=1") as ws:
                assert (await ws.receive_json(timeout=10))["type"] == "subscribed"
                ready.set()
                frame = await ws.receive_json(timeout=20)
                woken["websocket"] = time.monotonic()
                return frame

        async def wait_sse(ready: asyncio.Event) -> dict:
            async with session.get(f"{a}/v1/callbacks/{sse}/events") as response:
                assert response.status == 200
                event = None
                async for line in response.content:
                    text = line.decode().strip()
                    if text == ": subscribed":
                        ready.set()
                    elif text.startswith("event: "):
                        event = text[7:]
                    elif text.startswith("data: ") and event == "delivery":
                        woken["sse"] = time.monotonic()
                        return orjson.loads(text[6:])
                raise AssertionError("the stream ended")

        ws_ready, sse_ready = asyncio.Event(), asyncio.Event()
        waits = [
            asyncio.create_task(wait_long_poll()),
            asyncio.create_task(wait_websocket(ws_ready)),
            asyncio.create_task(wait_sse(sse_ready)),
        ]
        await asyncio.wait_for(asyncio.gather(ws_ready.wait(), sse_ready.wait()), 10)
        # The long-poll is registered on A too: it is woken, not answered from a read.
        await eventually(lambda: has_waiters(a, long_poll=1, websocket=1, sse=1), what="three waiters on A")
        assert not any(w.done() for w in waits)
        posted = {}
        for name, token in (("long_poll", long_poll), ("websocket", websocket), ("sse", sse)):
            posted[name] = time.monotonic()
            await _post(session, b, token, f"RequestID={name}&StatusCode=OK")
        polled, frame, event = await asyncio.wait_for(asyncio.gather(*waits), 10)
    assert polled["deliveries"][0]["body"] == {"RequestID": "long_poll", "StatusCode": "OK"}
    assert polled["callback"]["status"] == "received"
    assert frame["type"] == "delivery" and frame["delivery"]["token"] == websocket
    assert event["token"] == sse and event["correlation_id"] == "sse"
    for name in posted:
        assert woken[name] - posted[name] < 2.0, f"{name} woke {woken[name] - posted[name]:.3f} s after the POST"


async def test_a_group_of_200_posted_half_to_a_and_half_to_b_is_awaited_with_one_wait_on_a(two):
    a, b = two
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=aiohttp.TCPConnector(limit=100)) as session:
        tokens = await _mint(session, b, 200, group="split-200")
        waiting = asyncio.create_task(session.get(f"{a}/v1/groups/split-200/wait?timeout=30"))
        await eventually(lambda: has_waiters(a, long_poll=1), what="the group wait on A")
        await asyncio.gather(
            *(_post(session, (a, b)[n % 2], token, f"n={n}") for n, token in enumerate(tokens[:199]))
        )
        # One callback is still pending: a wait that answered now would count it pending below.
        await _post(session, b, tokens[199], "n=199")
        response = await asyncio.wait_for(waiting, 10)
        assert response.status == 200
        assert await response.json() == {
            "group": "split-200",
            "total": 200,
            "pending": 0,
            "received": 200,
            "expired": 0,
            "cancelled": 0,
            "overdue": 0,
            # Form bodies "n=..." say nothing of how the calls went.
            "outcomes": {"ok": 0, "error": 0, "unknown": 200},
            "errors": [],
            "pending_tokens": [],
        }
        response.release()


async def test_readers_on_a_get_every_acknowledged_delivery_in_order_while_both_ingest(two):
    a, b = two
    acknowledged: list[int] = []
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=aiohttp.TCPConnector(limit=100)) as session:
        tokens = await _mint(session, a, 20, group="race")
        done = asyncio.Event()

        async def sender(worker: int) -> None:
            for n in range(60):  # bounded: 16 x 60 posts
                url = random.choice((a, b))
                acknowledged.append(await _post(session, url, random.choice(tokens), f"w={worker}&n={n}"))

        async def long_poll_reader() -> list[int]:
            seen: list[int] = []
            while True:
                after = seen[-1] if seen else 0
                async with session.get(f"{a}/v1/deliveries?group=race&after={after}&limit=37&wait=1") as response:
                    page = await response.json()
                seen += [d["id"] for d in page["deliveries"]]
                if done.is_set() and not page["deliveries"] and seen and seen[-1] >= max(acknowledged):
                    return seen

        async def websocket_reader() -> list[int]:
            seen: list[int] = []
            async with session.ws_connect(f"{a}/v1/ws") as ws:
                await ws.send_json({"op": "subscribe", "id": "race", "group": "race", "after": 0})
                assert (await ws.receive_json(timeout=10))["type"] == "subscribed"
                # One receive outstanding at a time (a timed-out receive would close the socket),
                # raced against the end of the load, after which the last id is known.
                receiving = asyncio.ensure_future(ws.receive_json())
                ended = asyncio.ensure_future(done.wait())
                try:
                    while not (done.is_set() and seen and seen[-1] >= max(acknowledged)):
                        await asyncio.wait({receiving, ended}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
                        if receiving.done():
                            seen.append(receiving.result()["delivery"]["id"])
                            receiving = asyncio.ensure_future(ws.receive_json())
                        elif not ended.done():
                            raise AssertionError("no frame for 20 s")
                finally:
                    receiving.cancel()
                    ended.cancel()
            return seen

        readers = [asyncio.create_task(long_poll_reader()), asyncio.create_task(websocket_reader())]
        await asyncio.gather(*(sender(w) for w in range(16)))
        done.set()
        by_long_poll, by_websocket = await asyncio.wait_for(asyncio.gather(*readers), 30)
        stored = await _all_ids(session, b, "group=race")
    assert len(acknowledged) == 960
    expected = sorted(acknowledged)
    assert stored == expected
    assert by_long_poll == expected, "the long-poll reader skipped or doubled nothing"
    assert by_websocket == expected, "the websocket reader got everything live, in id order"


async def test_kill_9_of_one_instance_under_load_loses_nothing_it_acknowledged(start_instance):
    (victim, a), (_, b) = start_instance(), start_instance()
    acknowledged: dict[str, int] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        tokens = await _mint(session, b, 30)
        stop = asyncio.Event()

        async def sender(worker: int) -> None:
            n = 0
            while not stop.is_set() and n < 2000:
                url = (a, b)[n % 2]
                body = f"w={worker}&n={n}"
                n += 1
                if not await post_acknowledged(session, f"{url}/cb/{random.choice(tokens)}", body, acknowledged):
                    await asyncio.sleep(0.01)  # that instance is gone

        senders = [asyncio.create_task(sender(w)) for w in range(24)]
        # Counted, not timed: the load is real before the kill and B goes on acknowledging
        # after it, however slow the machine.
        await eventually(lambda: len(acknowledged) >= 60, timeout=30, what="60 acknowledged POSTs")
        await asyncio.sleep(random.uniform(0, 0.5))  # the kill lands at a random point of the load
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        killed_at = len(acknowledged)
        await eventually(
            lambda: len(acknowledged) >= killed_at + 60, timeout=30, what="the surviving instance acknowledging"
        )
        stop.set()
        await asyncio.gather(*senders)

        stored: dict[str, list[int]] = {}
        after = 0
        while True:
            async with session.get(f"{b}/v1/deliveries?after={after}&limit=1000") as response:
                page = (await response.json())["deliveries"]
            if not page:
                break
            for delivery in page:
                body = "&".join(f"{k}={v}" for k, v in delivery["body"].items())
                stored.setdefault(body, []).append(delivery["id"])
            after = page[-1]["id"]
    for body, delivery_id in acknowledged.items():
        assert stored.get(body) == [delivery_id], "every acknowledged POST is stored exactly once"


async def test_a_waiter_on_a_is_woken_after_its_listening_connection_is_terminated(two, pg_dsn):
    a, b = two
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        [token] = await _mint(session, b, 1)
        waiting = asyncio.create_task(session.get(f"{a}/v1/callbacks/{token}/wait?timeout=20"))
        await eventually(lambda: has_waiters(a, long_poll=1), what="the long-poll on A")
        admin = await asyncpg.connect(pg_dsn)
        try:
            killed = await terminate_listeners(admin, expected=2)
        finally:
            await admin.close()
        assert killed == 2
        posted = time.monotonic()
        delivery_id = await _post(session, b, token, "after=terminate")
        response = await asyncio.wait_for(waiting, 10)
        assert response.status == 200
        assert [d["id"] for d in (await response.json())["deliveries"]] == [delivery_id]
        assert time.monotonic() - posted < 5


async def test_a_cancellation_on_b_and_an_expiry_wake_waiters_on_a(two):
    a, b = two
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        [cancelled] = await _mint(session, b, 1)
        async with session.post(f"{b}/v1/callbacks", json={"ttl": 1}) as response:
            expiring = (await response.json())["token"]
        waits = [
            asyncio.ensure_future(session.get(f"{a}/v1/callbacks/{token}/wait?timeout=20"))
            for token in (cancelled, expiring)
        ]

        async def both_long_polls_on_a() -> bool:
            # The expiring one may be answered already (expired) on a slow machine; the
            # cancelled one must be waiting before B cancels it.
            held = (await waiters(a)).get("long_poll")
            return held == 2 or (held == 1 and waits[1].done())

        async with session.ws_connect(f"{a}/v1/ws") as ws:
            await ws.send_json({"op": "subscribe", "id": "s", "tokens": [cancelled, expiring]})
            assert (await ws.receive_json(timeout=10))["type"] == "subscribed"
            await eventually(both_long_polls_on_a, what="the long-polls on A")
            async with session.delete(f"{b}/v1/callbacks/{cancelled}") as response:
                assert response.status == 200
            statuses = {}
            while len(statuses) < 2:
                frame = await ws.receive_json(timeout=10)
                statuses[frame["token"]] = frame["status"]
        assert statuses == {cancelled: "cancelled", expiring: "expired"}
        for wait, status in zip(waits, ("cancelled", "expired")):
            response = await asyncio.wait_for(wait, 10)
            assert response.status == 200
            assert (await response.json())["callback"]["status"] == status
