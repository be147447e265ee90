"""Timing: the settle window (latest wins) and overdue before expired, on both backends.

No test asserts how long anything took: each waits for a condition, and asserts what must hold
whatever the machine's speed (a wait with a settle window answers with the latest delivery
that landed before it answered, never before the window passed after it).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from typing import Any

import aiohttp
import pytest
from helpers import (
    assert_error,
    eventually,
    mint,
    post_callback,
    read_event,
    start_waiting,
)

from cbhub.domain.model import now_ms
from cbhub.http.keys import HUB

ALL_BACKENDS = True

# The server reads the same clock as the tests: this machine's.
MS_SLACK = 5  # a parsed timestamp may round a millisecond away


def _ms(stamp: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


async def _get(client: Any, token: str) -> dict[str, Any]:
    response = await client.get(f"/v1/callbacks/{token}")
    assert response.status == 200
    return await response.json()


# Settle: the wait


async def test_a_settle_wait_answers_with_the_latest_delivery_once_none_newer_came_for_the_window(client):
    callback = await mint(client)
    token = callback["token"]
    # Begun before any delivery: it cannot answer until there is one.
    waiting = await start_waiting(client, f"/v1/callbacks/{token}/wait?settle=1&timeout=30")
    first = await post_callback(client, callback, data={"n": "1"})
    second = await post_callback(client, callback, data={"n": "2"})
    answered_before_second = waiting.done()
    response = await asyncio.wait_for(waiting, 20)
    answered_at = now_ms()
    assert response.status == 200
    answer = await response.json()
    assert answer["settled"] is True
    result = answer["callback"]["result"]
    if answered_before_second:
        # Only on a machine slower than the window between two posts: then it settled on the first.
        assert result["id"] == first["delivery_id"]
    else:
        # The second delivery restarted the window: the answer is the latest, never the first.
        assert result["id"] == second["delivery_id"]
        assert [d["id"] for d in answer["deliveries"]] == [first["delivery_id"], second["delivery_id"]]
    # Never before the window passed after the delivery it settled on.
    assert answered_at >= _ms(result["received_at"]) + 1000 - MS_SLACK


async def test_a_settle_wait_begun_after_the_window_passed_answers_settled_at_once(client):
    callback = await mint(client)
    delivered = await post_callback(client, callback, data={"n": "1"})
    received_at = _ms((await _get(client, callback["token"]))["result"]["received_at"])
    await eventually(lambda: now_ms() >= received_at + 300 + MS_SLACK, what="the window to pass")
    response = await client.get(f"/v1/callbacks/{callback['token']}/wait?settle=0.3&timeout=30")
    answer = await response.json()
    assert answer["settled"] is True
    assert [d["id"] for d in answer["deliveries"]] == [delivered["delivery_id"]]
    # With `after` at the result, settled with nothing new: the client's copy is final.
    after = delivered["delivery_id"]
    response = await client.get(f"/v1/callbacks/{callback['token']}/wait?settle=0.3&timeout=30&after={after}")
    answer = await response.json()
    assert (answer["settled"], answer["deliveries"]) == (True, [])


async def test_a_settle_wait_timing_out_answers_not_settled_with_deliveries_and_204_without(client):
    callback = await mint(client)
    token = callback["token"]
    response = await client.get(f"/v1/callbacks/{token}/wait?settle=0.3&timeout=0.2")
    assert response.status == 204
    delivered = await post_callback(client, callback, data={"n": "1"})
    response = await client.get(f"/v1/callbacks/{token}/wait?settle=300&timeout=0.2")
    assert response.status == 200
    answer = await response.json()
    assert answer["settled"] is False
    assert [d["id"] for d in answer["deliveries"]] == [delivered["delivery_id"]]
    # Nothing after the cursor: 204, as any wait.
    response = await client.get(f"/v1/callbacks/{token}/wait?settle=300&timeout=0.2&after={delivered['delivery_id']}")
    assert response.status == 204


async def test_a_settle_wait_answers_settled_when_the_callback_can_receive_no_more(client):
    callback = await mint(client)
    token = callback["token"]
    delivered = await post_callback(client, callback, data={"n": "1"})
    waiting = await start_waiting(client, f"/v1/callbacks/{token}/wait?settle=300&timeout=30")
    await client.delete(f"/v1/callbacks/{token}")
    answer = await (await asyncio.wait_for(waiting, 10)).json()
    assert answer["settled"] is True
    assert answer["callback"]["status"] == "cancelled"
    assert [d["id"] for d in answer["deliveries"]] == [delivered["delivery_id"]]


async def test_settle_is_refused_outside_its_bounds(client):
    callback = await mint(client)
    for value in ("0", "-1", "300.5", "soon", "nan", "inf"):
        response = await client.get(f"/v1/callbacks/{callback['token']}/wait?settle={value}&timeout=0")
        error = await assert_error(response, 400, "invalid_parameter")
        assert error["message"].startswith("settle:")
    for value in (0, -0.5, 301, "1", True):
        error = await assert_error(await client.post("/v1/callbacks", json={"settle": value}), 400, "invalid_field")
        assert error["message"].startswith("settle:")
    assert (await mint(client, settle=300))["settle"] == 300
    assert (await mint(client, settle=0.25))["settle"] == 0.25


# Settle: minted with a window


async def test_a_callback_minted_with_settle_waits_with_it_and_shows_settled_at_latest_wins(client):
    callback = await mint(client, settle=0.3)
    token = callback["token"]
    assert (callback["settle"], callback["settled_at"]) == (0.3, None)
    first = await post_callback(client, callback, data={"n": "1"})
    # A plain wait uses the callback's window.
    answer = await (await client.get(f"/v1/callbacks/{token}/wait?timeout=30")).json()
    assert answer["settled"] is True
    assert answer["callback"]["result"]["id"] == first["delivery_id"]

    async def settled_at() -> str | None:
        return (await _get(client, token))["settled_at"]

    await eventually(settled_at, what="settled_at to be set")
    once = await settled_at()
    assert once is not None and _ms(once) >= _ms(answer["callback"]["result"]["received_at"]) + 300
    # A newer delivery: not settled any more, until it has settled in turn.
    await post_callback(client, callback, data={"n": "2"})
    assert await settled_at() is None
    await eventually(settled_at, what="settled_at to be set again")
    again = await settled_at()
    assert again is not None and again > once


async def _subscribe(ws: Any, name: str, **what: Any) -> None:
    await ws.send_json({"op": "subscribe", "id": name, **what})
    assert await ws.receive_json(timeout=5) == {"type": "subscribed", "id": name}


async def _frames_until(ws: Any, kind: str) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = await ws.receive_json(timeout=10)
        frames.append(frame)
        if frame["type"] == kind:
            return frames


async def _events_until(response: Any, kind: str) -> list[dict[str, str]]:
    events = []
    while True:
        event = await asyncio.wait_for(read_event(response), 10)
        assert event is not None, f"the stream ended before a {kind} event"
        events.append(event)
        if event.get("event") == kind:
            return events


async def test_a_settled_event_follows_the_latest_delivery_on_every_stream_that_covers_it(client):
    import orjson

    callback = await mint(client, settle=0.3, group="g")
    token = callback["token"]
    correlated = {"RequestID": "req-7"}
    async with (
        client.ws_connect("/v1/ws") as ws,
        client.get(f"/v1/callbacks/{token}/events") as per_token,
        client.get("/v1/events?group=g") as by_group,
        client.get("/v1/events?correlation_id=req-7") as by_correlation,
        client.get("/v1/events") as everything,
    ):
        await _subscribe(ws, "t", tokens=[token])
        await _subscribe(ws, "g", group="g")
        await _subscribe(ws, "c", correlation_id="req-7")
        streams = (per_token, by_group, by_correlation, everything)
        for stream in streams:
            assert stream.status == 200
        delivered = await post_callback(client, callback, data=correlated)
        for stream in streams:
            events = await _events_until(stream, "settled")
            assert [e["event"] for e in events if e["event"] != "created"] == ["delivery", "settled"]
            data = orjson.loads(events[-1]["data"])
            assert (data["token"], data["delivery_id"]) == (token, delivered["delivery_id"])
            assert data["settled_at"] is not None
        frames = []
        while len([f for f in frames if f["type"] == "settled"]) < 3:
            frames.append(await ws.receive_json(timeout=10))
        for name in ("t", "g", "c"):
            mine = [f for f in frames if f["id"] == name]
            assert [f["type"] for f in mine] == ["delivery", "settled"], name
            assert mine[1]["token"] == token and mine[1]["delivery_id"] == delivered["delivery_id"]


async def test_a_settling_is_no_delivery_to_a_long_poll_on_deliveries(client):
    callback = await mint(client, settle=0.3)
    token = callback["token"]
    delivered = await post_callback(client, callback, data={"n": "1"})
    waiting = await start_waiting(client, f"/v1/deliveries?token={token}&after={delivered['delivery_id']}&wait=30")

    async def settled() -> bool:
        return (await _get(client, token))["settled_at"] is not None

    await eventually(settled, what="the settling")
    # Had the settling woken it, it would have answered (an empty page): it goes on waiting,
    # and answers the next delivery.
    assert not waiting.done()
    second = await post_callback(client, callback, data={"n": "2"})
    page = await (await asyncio.wait_for(waiting, 10)).json()
    assert [d["id"] for d in page["deliveries"]] == [second["delivery_id"]]


# Overdue

# Long enough to set up a test's waiters before the callback turns overdue (checked, not assumed).
EXPECT = 2


async def test_a_callback_still_pending_when_expected_turns_overdue_and_says_so_everywhere(client):
    import orjson

    on_time = await mint(client, expect_within=EXPECT, ttl=60, group="g")
    await post_callback(client, on_time, data={"n": "1"})
    late = await mint(client, expect_within=EXPECT, ttl=60, group="g")
    token = late["token"]
    assert (late["expect_within"], late["overdue"]) == (EXPECT, False)
    waiting = await start_waiting(client, f"/v1/callbacks/{token}/wait?timeout=30")
    async with client.ws_connect("/v1/ws") as ws, client.get("/v1/events?group=g") as stream:
        await _subscribe(ws, "t", tokens=[token])
        await _subscribe(ws, "g", group="g")
        await _not_overdue_yet(client, token)
        answer = await (await asyncio.wait_for(waiting, 20)).json()
        assert answer["deliveries"] == []
        assert (answer["callback"]["status"], answer["callback"]["overdue"]) == ("pending", True)
        frames = [await ws.receive_json(timeout=10) for _ in range(2)]
        overdue = [f for f in frames if f["type"] == "overdue"]
        assert sorted(f["id"] for f in overdue) == ["g", "t"]
        assert all(f["token"] == token and f["status"] == "pending" and f["overdue"] for f in overdue)
        events = await _events_until(stream, "overdue")
        assert orjson.loads(events[-1]["data"])["token"] == token
    # Only it: the one received in time never turns overdue.
    assert (await _get(client, token))["overdue"] is True
    await eventually(lambda: _timers_done(client), what="the sweep to look at both")
    assert (await _get(client, on_time["token"]))["overdue"] is False
    listed = await (await client.get("/v1/callbacks?overdue=true")).json()
    assert [c["token"] for c in listed["callbacks"]] == [token]
    summary = await (await client.get("/v1/groups/g")).json()
    assert (summary["overdue"], summary["pending"], summary["received"], summary["total"]) == (1, 1, 1, 2)
    metrics = await (await client.get("/metrics")).text()
    assert re.search(r"^cbhub_overdue_total 1\.0$", metrics, re.MULTILINE), metrics
    # A wait begun now is not told again: it waits for a delivery, which is still taken.
    response = await client.get(f"/v1/callbacks/{token}/wait?timeout=0.2")
    assert response.status == 204
    await post_callback(client, late, data={"n": "2"})
    after = await _get(client, token)
    assert (after["status"], after["overdue"]) == ("received", True)


async def _not_overdue_yet(client: Any, token: str) -> None:
    """Said, not assumed: every waiter of the test is set up before the callback turns overdue."""
    assert not (await _get(client, token))["overdue"], f"setting up took longer than {EXPECT} s"


async def _timers_done(client: Any) -> bool:
    return not await client.app[HUB].store.has_timers_due(now_ms())


async def test_expect_within_is_refused_unless_below_the_ttl(client):
    for fields in ({"expect_within": 0}, {"expect_within": 10, "ttl": 10}, {"expect_within": 1.5}, {"expect_within": "1"}):
        error = await assert_error(await client.post("/v1/callbacks", json=fields), 400, "invalid_field")
        assert error["message"].startswith("expect_within:")
    assert (await mint(client, expect_within=9, ttl=10))["expect_within"] == 9


async def test_an_overdue_settle_wait_answers_not_settled(client):
    callback = await mint(client, expect_within=EXPECT, ttl=60)
    waiting = await start_waiting(client, f"/v1/callbacks/{callback['token']}/wait?settle=1&timeout=30")
    await _not_overdue_yet(client, callback["token"])
    answer = await (await asyncio.wait_for(waiting, 20)).json()
    assert (answer["settled"], answer["deliveries"], answer["callback"]["overdue"]) == (False, [], True)


# Many instances over one PostgreSQL database


@pytest.mark.postgres_only  # instances share a database on PostgreSQL only
async def test_every_instance_tells_its_subscribers_of_a_settling_and_an_overdue(backend, start_hub, config):
    a, b = await start_hub(config), await start_hub(config)
    pending = await mint(a, expect_within=EXPECT, ttl=60)
    settling = await mint(a, settle=0.3)
    async with a.ws_connect("/v1/ws") as on_a, b.ws_connect("/v1/ws") as on_b:
        for ws in (on_a, on_b):
            await _subscribe(ws, "s", tokens=[pending["token"], settling["token"]])
        await _not_overdue_yet(a, pending["token"])
        await post_callback(b, settling, data={"n": "1"})
        for ws in (on_a, on_b):
            frames = [await ws.receive_json(timeout=10) for _ in range(3)]
            assert sorted(f["type"] for f in frames) == ["delivery", "overdue", "settled"]
            # Each once, whichever instance's sweep marked it.
            with pytest.raises(asyncio.TimeoutError):
                await ws.receive_json(timeout=0.5)


# Restarts: the timers are stored times, not timers in memory


def _serve(serve_process: Any, storage: dict[str, str]) -> Any:
    env = {f"CBHUB_{key.upper().replace('.', '_')}": value for key, value in storage.items()}
    server = serve_process("--port", "0", env=env)
    server.wait_until_serving()
    server.keep_reading()
    return server


# Long enough to stop one process and start the next before it is due; nothing waits it out.
RESTART_WINDOW = 6


async def test_a_restarted_server_still_sends_the_settled_and_overdue_events_when_due(serve_process, storage):
    first = _serve(serve_process, storage)
    async with aiohttp.ClientSession(first.url) as session:
        async with session.post("/v1/callbacks", json={"expect_within": RESTART_WINDOW, "ttl": 60}) as r:
            pending = await r.json()
        async with session.post("/v1/callbacks", json={"settle": RESTART_WINDOW}) as r:
            settling = await r.json()
        async with session.post(f"/cb/{settling['token']}", data={"n": "1"}) as r:
            delivered = await r.json()
    first.proc.send_signal(signal.SIGTERM)
    code, log = first.finish()
    assert code == 0, log

    second = _serve(serve_process, storage)
    async with aiohttp.ClientSession(second.url) as session, session.ws_connect("/v1/ws") as ws:
        await _subscribe(ws, "s", tokens=[pending["token"], settling["token"]])
        # Subscribed before either is due, or this test proves nothing: said, not assumed.
        for callback in (pending, settling):
            async with session.get(f"/v1/callbacks/{callback['token']}") as r:
                now = await r.json()
            assert not now["overdue"] and now["settled_at"] is None, "the restart took longer than the window"
        frames = [await ws.receive_json(timeout=RESTART_WINDOW + 10) for _ in range(2)]
        by_type = {f["type"]: f for f in frames}
        assert by_type["overdue"]["token"] == pending["token"]
        assert by_type["settled"]["token"] == settling["token"]
        assert by_type["settled"]["delivery_id"] == delivered["delivery_id"]
    assert time.time() * 1000 >= _ms(settling["created_at"]) + RESTART_WINDOW * 1000
