"""Websocket liveness with one heartbeat for all sockets: a peer that answers pings stays, one
that does not is dropped (and its subscription with it), a client's own pings are answered."""

from __future__ import annotations

from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from helpers import eventually, mint, post_callback

from cbhub.http.keys import HUB
from cbhub.http.realtime import HEARTBEAT
from cbhub.waiting.registry import Registry

HEARTBEAT_SECONDS = "0.3"


def websockets_held(client: TestClient) -> int:
    registry: Registry = client.app[HUB].registry
    return registry.count_by_kind().get("websocket", 0)


async def test_a_peer_answering_pings_keeps_its_websocket(start_hub, make_config):
    client = await start_hub(make_config(**{"realtime.heartbeat": HEARTBEAT_SECONDS}))
    callback = await mint(client)
    # autoping off: this client answers the server's pings itself, and counts them.
    async with client.ws_connect(f"/v1/callbacks/{callback['token']}/ws", autoping=False) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
        pinged = 0
        while pinged < 4:  # two heartbeats and more: each ping answered in time
            message = await ws.receive(timeout=10)
            assert message.type is WSMsgType.PING, message
            pinged += 1
            await ws.pong(message.data)
        assert websockets_held(client) == 1
        await post_callback(client, callback, json={"n": 1})
        while (message := await ws.receive(timeout=10)).type is WSMsgType.PING:
            await ws.pong(message.data)
        assert message.json()["type"] == "delivery"
    await eventually(lambda: websockets_held(client) == 0 and len(client.app[HEARTBEAT]) == 0)


async def test_a_peer_leaving_a_ping_unanswered_is_dropped(start_hub, make_config):
    client = await start_hub(make_config(**{"realtime.heartbeat": HEARTBEAT_SECONDS}))
    callback = await mint(client)
    async with client.ws_connect(f"/v1/callbacks/{callback['token']}/ws", autoping=False) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
        assert (await ws.receive(timeout=10)).type is WSMsgType.PING
        # Not answered: the server gives up on this peer and lets go of its subscription.
        await eventually(lambda: websockets_held(client) == 0, what="the silent peer dropped")
        while (message := await ws.receive(timeout=10)).type is WSMsgType.PING:
            pass
        assert message.type in (WSMsgType.CLOSED, WSMsgType.CLOSE, WSMsgType.ERROR)
    assert len(client.app[HEARTBEAT]) == 0


async def test_a_clients_own_ping_is_answered(start_hub, make_config):
    client = await start_hub(make_config(**{"realtime.heartbeat": "60"}))
    async with client.ws_connect("/v1/ws", autoping=False) as ws:
        await ws.ping(b"are you there")
        message = await ws.receive(timeout=5)
        assert (message.type, message.data) == (WSMsgType.PONG, b"are you there")
