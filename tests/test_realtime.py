"""Realtime: a worker awaits many callbacks over one websocket, or a browser over SSE.

Two independent websocket clients are used, aiohttp's and the `websockets` library's, so the
protocol is not only proven against the server's own stack.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from helpers import eventually, has_waiters, mint, post_callback, read_event, registry_size
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from cbhub.http.keys import STREAMS

# Every test here runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True


def ws_url(client: TestClient, path: str) -> str:
    return str(client.make_url(path)).replace("http://", "ws://", 1)


def connect_ws(client: TestClient, path: str, **options: Any) -> connect:
    """A websocket by the `websockets` library (no proxy from the environment)."""
    return connect(ws_url(client, path), proxy=None, **options)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    return orjson.loads(await asyncio.wait_for(ws.recv(), 5))


async def stored_ids(client: TestClient, query: str) -> list[int]:
    """Every stored delivery id matching `query`, oldest first, read page by page."""
    ids: list[int] = []
    after = 0
    while True:
        page = await (await client.get(f"/v1/deliveries?{query}&after={after}&limit=1000")).json()
        if not page["deliveries"]:
            return ids
        ids += [d["id"] for d in page["deliveries"]]
        after = page["next_after"]


# WebSocket: /v1/ws


async def test_a_subscriber_is_sent_each_delivery_as_it_arrives(client):
    first, second = await mint(client), await mint(client)
    async with client.ws_connect("/v1/ws") as ws:
        await ws.send_json({"op": "subscribe", "id": "mine", "tokens": [first["token"], second["token"]]})
        assert await ws.receive_json(timeout=5) == {"type": "subscribed", "id": "mine"}

        await post_callback(client, second, data={"RequestID": "r-2", "StatusCode": "OK"})
        frame = await ws.receive_json(timeout=5)
        assert frame["type"] == "delivery" and frame["id"] == "mine"
        assert frame["delivery"]["token"] == second["token"]
        assert frame["delivery"]["body"] == {"RequestID": "r-2", "StatusCode": "OK"}
        assert frame["delivery"]["correlation_id"] == "r-2"

        await post_callback(client, first, json={"n": 1})
        frame = await ws.receive_json(timeout=5)
        assert frame["delivery"]["token"] == first["token"] and frame["delivery"]["body"] == {"n": 1}

        await ws.send_json({"op": "ping"})
        assert await ws.receive_json(timeout=5) == {"type": "pong"}
        assert registry_size(client) == 1  # one subscription over two tokens
    await eventually(lambda: registry_size(client) == 0 and len(client.app[STREAMS]) == 0)


async def test_websockets_library_subscribes_by_correlation_id_and_unsubscribes(client):
    callback = await mint(client)
    async with connect_ws(client, "/v1/ws") as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "id": 7, "correlation_id": "req-42"}).decode())
        assert await recv(ws) == {"type": "subscribed", "id": 7}
        await post_callback(client, callback, json={"requestId": "other"})
        await post_callback(client, callback, json={"requestId": "req-42", "ok": True})
        frame = await recv(ws)
        assert frame["id"] == 7 and frame["delivery"]["body"] == {"requestId": "req-42", "ok": True}

        await ws.send(orjson.dumps({"op": "unsubscribe", "id": 7}).decode())
        assert await recv(ws) == {"type": "unsubscribed", "id": 7}
        await post_callback(client, callback, json={"requestId": "req-42"})
        await ws.send('{"op": "ping"}')
        assert await recv(ws) == {"type": "pong"}  # and no delivery before it
        assert registry_size(client) == 0


async def test_replay_with_after_while_a_writer_keeps_posting_has_no_gap_and_no_duplicate(client):
    callbacks = (await (await client.post("/v1/callbacks/batch", json={"count": 5, "group": "g"})).json())["callbacks"]
    posted = [await post_callback(client, callbacks[n % 5], json={"n": n}) for n in range(300)]
    after = posted[40]["delivery_id"]

    async def keep_posting() -> None:
        for n in range(300, 500):
            await post_callback(client, callbacks[n % 5], json={"n": n})

    writer = asyncio.create_task(keep_posting())
    received: list[int] = []
    async with connect_ws(client, "/v1/ws") as ws:
        # Subscribed while the writer posts: the replay of 259 stored deliveries and the live
        # ones arriving meanwhile meet at a seam.
        await ws.send(orjson.dumps({"op": "subscribe", "id": "g", "group": "g", "after": after}).decode())
        assert await recv(ws) == {"type": "subscribed", "id": "g"}
        await writer
        expected = [i for i in await stored_ids(client, "group=g") if i > after]
        assert len(expected) == 459
        while len(received) < len(expected):
            frame = await recv(ws)
            assert frame["type"] == "delivery" and frame["id"] == "g"
            received.append(frame["delivery"]["id"])
        await ws.send('{"op": "ping"}')
        assert await recv(ws) == {"type": "pong"}  # nothing after the last one
    assert received == expected


async def test_one_subscription_awaits_a_group_of_200_and_another_the_same_200_by_token(client):
    minted = await client.post("/v1/callbacks/batch", json={"count": 200, "group": "import-7"})
    callbacks = (await minted.json())["callbacks"]
    tokens = {c["token"] for c in callbacks}
    async with client.ws_connect("/v1/ws") as ws:
        await ws.send_json({"op": "subscribe", "id": "group", "group": "import-7"})
        await ws.send_json({"op": "subscribe", "id": "tokens", "tokens": sorted(tokens)})
        assert await ws.receive_json(timeout=5) == {"type": "subscribed", "id": "group"}
        assert await ws.receive_json(timeout=5) == {"type": "subscribed", "id": "tokens"}

        async def post_all(chunk: list[dict]) -> None:
            for callback in chunk:
                await post_callback(client, callback, json={"token": callback["token"]})

        await asyncio.gather(*(post_all(callbacks[i::8]) for i in range(8)))
        seen: dict[str, list[str]] = {"group": [], "tokens": []}
        for _ in range(400):
            frame = await ws.receive_json(timeout=5)
            seen[frame["id"]].append(frame["delivery"]["token"])
        assert sorted(seen["group"]) == sorted(tokens)
        assert sorted(seen["tokens"]) == sorted(tokens)
        assert registry_size(client) == 2
    await eventually(lambda: registry_size(client) == 0)


async def test_expiry_and_cancellation_are_sent_as_status_frames(client):
    expiring, cancelled, received = await mint(client, ttl=1), await mint(client), await mint(client)
    await client.delete(f"/v1/callbacks/{received['token']}")  # closed before the subscribe
    async with connect_ws(client, "/v1/ws") as ws:
        tokens = [expiring["token"], cancelled["token"], received["token"]]
        await ws.send(orjson.dumps({"op": "subscribe", "id": "s", "tokens": tokens}).decode())
        assert await recv(ws) == {"type": "subscribed", "id": "s"}
        # A callback already closed is reported at once: nobody waits for it forever.
        assert await recv(ws) == {"type": "status", "id": "s", "token": received["token"], "status": "cancelled"}
        await client.delete(f"/v1/callbacks/{cancelled['token']}")
        assert await recv(ws) == {"type": "status", "id": "s", "token": cancelled["token"], "status": "cancelled"}
        assert await recv(ws) == {"type": "status", "id": "s", "token": expiring["token"], "status": "expired"}


async def test_bad_frames_are_answered_with_errors_and_the_connection_stays_usable(client):
    callback = await mint(client)
    async with client.ws_connect("/v1/ws") as ws:
        bad_frames = [
            ("{nope", None, "invalid_json"),
            ("[1, 2]", None, "invalid_frame"),
            ('{"op": "dance", "id": "x"}', "x", "invalid_field"),
            ('{"op": "subscribe", "id": "a"}', "a", "invalid_field"),
            ('{"op": "subscribe", "tokens": ["t"]}', None, "invalid_field"),
            ('{"op": "subscribe", "id": "a", "tokens": []}', "a", "invalid_field"),
            ('{"op": "subscribe", "id": "a", "tokens": ["x"], "group": "g"}', "a", "invalid_field"),
            ('{"op": "subscribe", "id": "a", "group": "g", "after": -1}', "a", "invalid_field"),
            ('{"op": "subscribe", "id": "a", "group": "g", "colour": "red"}', "a", "unknown_field"),
            ('{"op": "subscribe", "id": "a", "tokens": ["no-such-token"]}', "a", "callback_not_found"),
            ('{"op": "unsubscribe", "id": "never"}', "never", "subscription_not_found"),
        ]
        for text, name, code in bad_frames:
            await ws.send_str(text)
            frame = await ws.receive_json(timeout=5)
            assert frame["type"] == "error" and frame["id"] == name, text
            assert frame["error"]["code"] == code, (text, frame)
            assert frame["error"]["message"]
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive_json(timeout=5))["error"]["code"] == "invalid_frame"

        await ws.send_json({"op": "subscribe", "id": "a", "tokens": [callback["token"]]})
        assert await ws.receive_json(timeout=5) == {"type": "subscribed", "id": "a"}
        await post_callback(client, callback, data="still here")
        assert (await ws.receive_json(timeout=5))["delivery"]["body"] == "still here"
        assert not ws.closed
        assert registry_size(client) == 1


async def test_subscription_and_token_limits_are_error_frames(start_hub, make_config):
    client = await start_hub(make_config(**{"realtime.max_subscriptions": "3"}))
    callback = await mint(client)
    async with connect_ws(client, "/v1/ws") as ws:
        for n in range(3):
            await ws.send(orjson.dumps({"op": "subscribe", "id": n, "tokens": [callback["token"]]}).decode())
            assert await recv(ws) == {"type": "subscribed", "id": n}
        await ws.send(orjson.dumps({"op": "subscribe", "id": 1, "group": "g"}).decode())
        assert (await recv(ws))["error"]["code"] == "subscription_exists"
        await ws.send(orjson.dumps({"op": "subscribe", "id": 3, "group": "g"}).decode())
        frame = await recv(ws)
        assert frame["id"] == 3 and frame["error"]["code"] == "too_many_subscriptions"
        assert "3" in frame["error"]["message"]

        await ws.send(orjson.dumps({"op": "unsubscribe", "id": 0}).decode())
        assert await recv(ws) == {"type": "unsubscribed", "id": 0}
        too_many = [f"token-{n}" for n in range(1001)]
        await ws.send(orjson.dumps({"op": "subscribe", "id": "big", "tokens": too_many}).decode())
        frame = await recv(ws)
        assert frame["id"] == "big" and frame["error"]["code"] == "too_many_tokens"
        await ws.send(orjson.dumps({"op": "subscribe", "id": "g", "group": "g"}).decode())
        assert await recv(ws) == {"type": "subscribed", "id": "g"}
        assert registry_size(client) == 3

        await ws.send(orjson.dumps({"op": "subscribe", "id": "huge", "group": "g" * (1024 * 1024)}).decode())
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    await eventually(lambda: registry_size(client) == 0)


def _unread_socket(client: TestClient) -> socket.socket:
    """A connected socket with a tiny receive buffer: a consumer that barely reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((client.host, client.port))
    sock.setblocking(False)
    return sock


async def test_a_slow_consumer_is_closed_with_1013_and_resumes_with_after_losing_nothing(start_hub, make_config):
    client = await start_hub(make_config(**{"realtime.max_backlog": "5"}))
    callback = await mint(client, group="bulk")
    big = base64.b64encode(os.urandom(192 * 1024))  # a 256 KiB text body per delivery
    received: list[int] = []
    # max_queue=1: the client stops reading the socket once one message waits unread.
    async with connect_ws(client, "/v1/ws", sock=_unread_socket(client), max_queue=1, compression=None) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "id": "b", "group": "bulk"}).decode())
        assert await recv(ws) == {"type": "subscribed", "id": "b"}
        # Post while it does not read, until the server gives up on it (its subscription goes).
        for _ in range(200):
            await post_callback(client, callback, data=big, headers={"Content-Type": "text/plain"})
            if registry_size(client) == 0:
                break
        assert registry_size(client) == 0, "the consumer was never found too slow"
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frame = await recv(ws)
                received.append(frame["delivery"]["id"])
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert "resubscribe with after" in closed.value.rcvd.reason
    stored = await stored_ids(client, "group=bulk")
    assert received == stored[: len(received)] and len(received) < len(stored)

    async with client.ws_connect("/v1/ws") as ws:
        await ws.send_json({"op": "subscribe", "id": "b", "group": "bulk", "after": received[-1] if received else 0})
        assert await ws.receive_json(timeout=5) == {"type": "subscribed", "id": "b"}
        while len(received) < len(stored):
            received.append((await ws.receive_json(timeout=5))["delivery"]["id"])
    assert received == stored


async def test_registry_and_streams_are_empty_once_the_client_hangs_up(client):
    await mint(client, group="g")
    for _ in range(20):
        async with client.ws_connect("/v1/ws") as ws:
            await ws.send_json({"op": "subscribe", "id": "a", "group": "g", "after": 0})
            assert await ws.receive_json(timeout=5) == {"type": "subscribed", "id": "a"}
    await eventually(lambda: registry_size(client) == 0 and len(client.app[STREAMS]) == 0)


# WebSocket: /v1/callbacks/{token}/ws


async def test_the_callback_socket_sends_what_arrived_and_with_once_closes_after_one(client):
    callback = await mint(client)
    first = await post_callback(client, callback, json={"n": 1})
    async with connect_ws(client, f"/v1/callbacks/{callback['token']}/ws") as ws:
        assert await recv(ws) == {"type": "subscribed", "id": callback["token"]}
        # What arrived before the connection is sent first (no `after`: from the beginning).
        assert (await recv(ws))["delivery"]["id"] == first["delivery_id"]
        await post_callback(client, callback, json={"n": 2})
        assert (await recv(ws))["delivery"]["body"] == {"n": 2}

    path = f"/v1/callbacks/{callback['token']}/ws?once=1&after={first['delivery_id']}"
    async with client.ws_connect(path) as ws:
        assert await ws.receive_json(timeout=5) == {"type": "subscribed", "id": callback["token"]}
        frame = await ws.receive_json(timeout=5)
        assert frame["delivery"]["body"] == {"n": 2}
        message = await ws.receive(timeout=5)
        assert message.type is WSMsgType.CLOSE and ws.close_code == 1000


async def test_the_callback_socket_waits_for_the_result_then_closes(client):
    callback = await mint(client)
    async with connect_ws(client, f"/v1/callbacks/{callback['token']}/ws?once=1") as ws:
        assert await recv(ws) == {"type": "subscribed", "id": callback["token"]}
        await post_callback(client, callback, json={"done": True})
        assert (await recv(ws))["delivery"]["body"] == {"done": True}
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


async def test_the_callback_socket_of_an_unknown_token_is_404_before_upgrading(client):
    response = await client.get("/v1/callbacks/no-such-token/ws", headers=UPGRADE)
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "callback_not_found"
    with pytest.raises(InvalidStatus) as refused:
        async with connect_ws(client, "/v1/callbacks/no-such-token/ws"):
            pass
    assert refused.value.response.status_code == 404
    known = (await mint(client))["token"]
    response = await client.get(f"/v1/callbacks/{known}/ws?once=maybe", headers=UPGRADE)
    assert response.status == 400 and (await response.json())["error"]["code"] == "invalid_parameter"
    for path in ("/v1/ws", f"/v1/callbacks/{known}/ws"):  # a plain GET, no upgrade
        response = await client.get(path)
        assert response.status == 426 and response.headers["Upgrade"] == "websocket"
        assert (await response.json())["error"]["code"] == "websocket_required"
    assert registry_size(client) == 0 and len(client.app[STREAMS]) == 0


# Server-Sent Events


async def test_sse_streams_deliveries_and_resumes_from_last_event_id(client):
    callback = await mint(client)
    ids = [(await post_callback(client, callback, json={"n": n}))["delivery_id"] for n in range(3)]
    path = f"/v1/callbacks/{callback['token']}/events"
    async with client.get(path) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        for n, delivery_id in enumerate(ids):
            event = await read_event(response)
            assert event is not None and event["event"] == "delivery" and event["id"] == str(delivery_id)
            assert orjson.loads(event["data"])["body"] == {"n": n}

    # An EventSource reconnecting sends the last id it saw: only what came after follows.
    async with client.get(path, headers={"Last-Event-ID": str(ids[1])}) as response:
        event = await read_event(response)
        assert event is not None and event["id"] == str(ids[2])
        late = await post_callback(client, callback, json={"n": 3})
        event = await read_event(response)
        assert event is not None and event["id"] == str(late["delivery_id"])
        await client.delete(f"/v1/callbacks/{callback['token']}")
        event = await read_event(response)
        assert event is not None and event["event"] == "status" and "id" not in event
        assert orjson.loads(event["data"]) == {"token": callback["token"], "status": "cancelled", "closed": True}
        assert await read_event(response) is None  # a closed callback's stream ends

    async with client.get(f"{path}?after={ids[0]}") as response:
        event = await read_event(response)
        assert event is not None and event["id"] == str(ids[1])


async def test_sse_for_a_group_streams_live_deliveries_and_keeps_the_connection_alive(start_hub, make_config):
    client = await start_hub(make_config(**{"realtime.heartbeat": "0.2"}))
    callback = await mint(client, group="nightly")
    await post_callback(client, callback, json={"old": True})
    async with client.get("/v1/events?group=nightly") as response:
        # Without `after` the stream starts now: a keep-alive comment comes, not the old one.
        assert await asyncio.wait_for(response.content.readuntil(b": keep-alive\n\n"), 5)
        await post_callback(client, callback, json={"new": True})
        event = await read_event(response)
        assert event is not None and orjson.loads(event["data"])["body"] == {"new": True}
        await client.delete(f"/v1/callbacks/{callback['token']}")
        event = await read_event(response)
        assert event is not None and event["event"] == "status"
        assert orjson.loads(event["data"]) == {"token": callback["token"], "status": "cancelled"}


async def test_sse_refusals_are_json_errors(client):
    for path, status, code in (
        ("/v1/callbacks/no-such-token/events", 404, "callback_not_found"),
        ("/v1/events?token=no-such-token", 404, "callback_not_found"),
        ("/v1/events?group=g&after=x", 400, "invalid_parameter"),
    ):
        response = await client.get(path)
        assert response.status == status, path
        assert (await response.json())["error"]["code"] == code, path
    response = await client.get("/v1/events?group=g", headers={"Last-Event-ID": "abc"})
    assert response.status == 400 and (await response.json())["error"]["code"] == "invalid_header"
    assert registry_size(client) == 0 and len(client.app[STREAMS]) == 0


async def test_a_last_event_id_in_other_digits_is_refused_not_a_server_error(client):
    # "²".isdigit() holds, and int("²") fails: the header must be ASCII digits.
    for header in ("²", "١٢", str(2**63)):
        response = await client.get("/v1/events?group=g", headers={"Last-Event-ID": header})
        assert response.status == 400, header
        assert (await response.json())["error"]["code"] == "invalid_header"
    assert registry_size(client) == 0 and len(client.app[STREAMS]) == 0


# Shutdown


async def test_sigterm_closes_sockets_with_1001_ends_streams_answers_long_polls_503_and_exits_0(serve_process):
    server = serve_process("--port", "0")
    url = await asyncio.to_thread(server.wait_until_serving)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v1/callbacks", json={"group": "g"}) as response:
            token = (await response.json())["token"]
        by_aiohttp = await session.ws_connect(f"{url}/v1/ws")
        await by_aiohttp.send_json({"op": "subscribe", "id": "g", "group": "g"})
        assert await by_aiohttp.receive_json(timeout=5) == {"type": "subscribed", "id": "g"}
        idle = await session.ws_connect(f"{url}/v1/ws")  # no subscription at all
        by_websockets = await connect(f"{url.replace('http://', 'ws://')}/v1/callbacks/{token}/ws", proxy=None)
        assert await recv(by_websockets) == {"type": "subscribed", "id": token}
        stream = await session.get(f"{url}/v1/callbacks/{token}/events")
        assert await stream.content.readuntil(b"\n\n") == b": subscribed\n\n"
        long_poll = asyncio.create_task(session.get(f"{url}/v1/callbacks/{token}/wait?timeout=60"))
        await eventually(lambda: has_waiters(url, long_poll=1), what="the long-poll waiting")

        server.proc.send_signal(signal.SIGTERM)

        message = await by_aiohttp.receive(timeout=10)
        assert message.type is WSMsgType.CLOSE and message.data == 1001
        assert "shutting down" in message.extra
        assert (await idle.receive(timeout=10)).data == 1001
        with pytest.raises(ConnectionClosed) as closed:
            await recv(by_websockets)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert await asyncio.wait_for(stream.content.read(), 10) == b""  # the stream ended
        stream.release()
        response = await asyncio.wait_for(long_poll, 10)
        assert response.status == 503 and response.headers["Retry-After"] == "1"
        assert (await response.json())["error"]["code"] == "shutting_down"
        await by_aiohttp.close()
        await idle.close()
    code, log = await asyncio.to_thread(server.finish)
    assert code == 0, log
    assert "Traceback" not in log
