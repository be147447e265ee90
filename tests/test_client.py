"""The Python client against a real server: minting, awaiting, errors, and the delivery stream."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from typing import Any, AsyncGenerator

import aiohttp
import pytest
from aiohttp import web
from helpers import MARKETING_CLOUD_FIELDS, eventually, post_callback, registry_size, waiters

from cbhub.app import create_app
from cbhub.client import (
    Cancelled,
    CbHub,
    CbHubError,
    Delivery,
    Expired,
    InvalidRequest,
    NotFound,
    NoWebSocket,
    Unauthorized,
    Unavailable,
    Unreachable,
)
from cbhub.http.keys import HUB

API_KEY = "0123456789abcdef0123"


async def third_party_post(url: str, body: dict) -> None:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        assert response.status == 200


def url_of(client) -> str:
    return f"http://{client.host}:{client.port}"


async def test_create_then_wait_returns_the_delivery_the_third_party_posted(client):
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create(ttl=600, label="UpsertDE", group="nightly", metadata={"row": 7})
        assert cb.url == f"{url_of(client)}/cb/{cb.token}"
        assert (cb.callback.status, cb.callback.label, cb.callback.group) == ("pending", "UpsertDE", "nightly")
        assert cb.callback.metadata == {"row": 7}

        waiting = asyncio.create_task(cb.wait(timeout=20))
        await eventually(lambda: registry_size(client) == 1)
        assert not waiting.done()
        await post_callback(client, {"token": cb.token}, data=MARKETING_CLOUD_FIELDS)
        delivery = await asyncio.wait_for(waiting, 10)

        assert delivery.body == MARKETING_CLOUD_FIELDS
        assert delivery.kind == "form"
        assert delivery.correlation_id == MARKETING_CLOUD_FIELDS["RequestID"]
        assert delivery.token == cb.token and delivery.method == "POST"
        assert (await cb.refresh()).status == "received"


async def test_wait_returns_at_once_when_the_callback_was_already_answered(client):
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create()
        await post_callback(client, {"token": cb.token}, json={"companyName": "Acme Logistics", "employees": 250})
        await post_callback(client, {"token": cb.token}, json={"companyName": "Acme Logistics", "employees": 400})
        # A timeout of zero asks once without holding: the answer is already there.
        latest = await cb.wait(timeout=0)
        assert latest.body == {"companyName": "Acme Logistics", "employees": 400}
        assert latest.kind == "json"
        # A cursor past the latest waits for a newer one.
        with pytest.raises(TimeoutError):
            await cb.wait(timeout=0.3, after=latest.id)


async def test_wait_times_out_with_timeout_error(client):
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create()
        with pytest.raises(TimeoutError, match=cb.token):
            await cb.wait(timeout=0.3)
    assert registry_size(client) == 0


async def test_wait_raises_expired_when_the_callback_expires_unanswered(client):
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create(ttl=1)
        with pytest.raises(Expired) as caught:
            await cb.wait(timeout=20)
        assert caught.value.callback is not None and caught.value.callback.status == "expired"


async def test_wait_raises_cancelled_when_the_callback_is_cancelled_meanwhile(client):
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create()
        waiting = asyncio.create_task(cb.wait(timeout=20))
        await eventually(lambda: registry_size(client) == 1)
        cancelled = await hub.cancel(cb.token)
        assert cancelled.status == "cancelled"
        with pytest.raises(Cancelled):
            await asyncio.wait_for(waiting, 10)
        # A cancelled callback that had been answered still gives its result.
        answered = await hub.create()
        await post_callback(client, {"token": answered.token}, json={"ok": True})
        await answered.cancel()
        assert (await answered.wait(timeout=5)).body == {"ok": True}


async def test_errors_are_mapped_from_the_server_codes(client):
    async with CbHub(url_of(client)) as hub:
        with pytest.raises(NotFound) as missing:
            await hub.wait("no-such-token", timeout=5)
        assert (missing.value.status, missing.value.code) == (404, "callback_not_found")
        with pytest.raises(InvalidRequest) as invalid:
            await hub.create(ttl=0)
        assert invalid.value.code == "invalid_field" and "ttl" in str(invalid.value)
        with pytest.raises(NotFound):
            await hub.group("nobody")


async def test_an_unreachable_server_is_reported_as_such(unused_tcp_port):
    async with CbHub(f"http://127.0.0.1:{unused_tcp_port}") as hub:
        with pytest.raises(Unreachable, match=f"127.0.0.1:{unused_tcp_port}"):
            await hub.create()


async def test_create_batch_mints_distinct_callbacks_in_a_group(client):
    async with CbHub(url_of(client)) as hub:
        batch = await hub.create_batch(3, group="g", ttl=60)
        assert len({cb.url for cb in batch}) == 3
        assert {cb.callback.group for cb in batch} == {"g"}
        await post_callback(client, {"token": batch[1].token}, json={"n": 1})
        status = await hub.group("g")
        assert (status.total, status.pending, status.received) == (3, 2, 1)


async def test_url_and_api_key_come_from_the_environment(aiohttp_server, monkeypatch):
    seen: list[str | None] = []

    async def mint(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response(
            {
                "token": "t",
                "status": "pending",
                "callback_url": "https://hooks.example.com/cb/t",
                "created_at": "2026-01-01T00:00:00.000Z",
                "expires_at": "2026-01-02T00:00:00.000Z",
                "label": None,
                "group": None,
                "metadata": {},
                "deliveries": 0,
                "result": None,
            },
            status=201,
        )

    app = web.Application()
    app.router.add_post("/v1/callbacks", mint)
    server = await aiohttp_server(app)
    monkeypatch.setenv("CBHUB_URL", f"http://127.0.0.1:{server.port}/")
    monkeypatch.setenv("CBHUB_API_KEY", "sekrit")
    async with CbHub() as hub:
        assert hub.base_url == f"http://127.0.0.1:{server.port}"
        cb = await hub.create()
    async with CbHub(api_key="explicit") as hub:
        await hub.create()
    monkeypatch.delenv("CBHUB_API_KEY")
    async with CbHub() as hub:
        await hub.create()
    assert cb.url == "https://hooks.example.com/cb/t"
    assert seen == ["Bearer sekrit", "Bearer explicit", None]


async def collect(stream, into: list, count: int | None = None) -> None:
    """Consume `stream` into `into` (until `count` items, or until cancelled)."""
    async for delivery in stream:
        into.append(delivery)
        if count is not None and len(into) >= count:
            return


async def parked_on(stream: AsyncGenerator[Delivery, None], count: int, registry: Any) -> tuple[list[Delivery], dict]:
    """The first `count` deliveries of `stream`, and how the server counts its waiters once the
    stream waits for more (a long-poll is only parked while the stream is being iterated)."""
    seen: list[Delivery] = []
    reading = asyncio.create_task(collect(stream, seen))
    try:
        await eventually(lambda: len(seen) >= count and bool(registry.count_by_kind()), timeout=10)
        return seen, registry.count_by_kind()
    finally:
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        await stream.aclose()


async def stored_ids(hub: CbHub, **filters: str) -> list[int]:
    return [d.id for d in (await hub.list_deliveries(limit=1000, **filters)).deliveries]


# "auto" finds the websocket of this server; the kind of waiter the server counts shows which.
@pytest.mark.parametrize(
    ("transport", "kind"), [("auto", "websocket"), ("websocket", "websocket"), ("long-poll", "long_poll")]
)
async def test_the_stream_yields_a_groups_deliveries_in_order_then_live_ones(client, transport, kind):
    async with CbHub(url_of(client)) as hub:
        first, second = await hub.create_batch(2, group="import")
        other = await hub.create(group="elsewhere")
        await post_callback(client, {"token": first.token}, json={"n": 1})
        await post_callback(client, {"token": other.token}, json={"n": "not ours"})

        seen: list = []
        stream = hub.deliveries(group="import", transport=transport)
        reading = asyncio.create_task(collect(stream, seen, 3))
        await eventually(lambda: len(seen) == 1 and client.app[HUB].registry.count_by_kind() == {kind: 1})
        assert (await waiters(url_of(client)))[kind] == 1
        await post_callback(client, {"token": second.token}, json={"n": 2})
        await post_callback(client, {"token": first.token}, json={"n": 3})
        await asyncio.wait_for(reading, 10)
        await stream.aclose()

        assert [d.body["n"] for d in seen] == [1, 2, 3]
        assert [d.token for d in seen] == [first.token, second.token, first.token]

        # Resuming from a cursor gives what came after it, and nothing before.
        resumed: list = []
        stream = hub.deliveries(group="import", after=seen[0].id, transport=transport)
        await asyncio.wait_for(collect(stream, resumed, 2), 10)
        await stream.aclose()
        assert [d.id for d in resumed] == [d.id for d in seen[1:]]


async def test_the_stream_filters_by_correlation_id_and_by_token(client):
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create()
        for request_id in ("a", "b", "a"):
            await post_callback(client, {"token": cb.token}, data={**MARKETING_CLOUD_FIELDS, "RequestID": request_id})
        by_correlation: list = []
        stream = hub.deliveries(correlation_id="a")
        await asyncio.wait_for(collect(stream, by_correlation, 2), 10)
        await stream.aclose()
        assert [d.correlation_id for d in by_correlation] == ["a", "a"]

        by_token: list = []
        stream = hub.deliveries(token=cb.token)
        await asyncio.wait_for(collect(stream, by_token, 3), 10)
        assert client.app[HUB].registry.count_by_kind() == {"websocket": 1}
        await stream.aclose()
        assert [d.correlation_id for d in by_token] == ["a", "b", "a"]

        page = await hub.list_deliveries(token=cb.token)
        assert [d.correlation_id for d in page.deliveries] == ["a", "b", "a"]
        assert page.next_after == page.deliveries[-1].id


@pytest.mark.parametrize(("transport", "kind", "why"), [
    ("auto", "websocket", "(1001: server shutting down"),  # the websocket's close code and reason
    ("long-poll", "long_poll", "restarting"),  # the 503 answering the parked long-poll
])  # fmt: skip
async def test_the_stream_survives_a_server_restart_without_losing_or_repeating(
    aiohttp_server, config, unused_tcp_port, caplog, transport, kind, why
):
    caplog.set_level(logging.INFO, logger="cbhub.client")
    port = unused_tcp_port
    server = await aiohttp_server(create_app(config), port=port)
    async with CbHub(f"http://127.0.0.1:{port}") as hub:
        callbacks = await hub.create_batch(4, group="g")

        async def post(n: int) -> None:
            await third_party_post(callbacks[n % len(callbacks)].url, {"n": n})

        seen: list = []
        reading = asyncio.create_task(collect(hub.deliveries(group="g", transport=transport), seen))
        for n in range(10):
            await post(n)
        await eventually(lambda: len(seen) == 10)

        # The stream is parked in a long-poll, or subscribed, when the server stops under it.
        await eventually(lambda: server.app[HUB].registry.count_by_kind() == {kind: 1})
        await server.close()
        server = await aiohttp_server(create_app(config), port=port)
        # Posted before the stream has reconnected: replayed from its cursor.
        for n in range(10, 20):
            await post(n)
        await eventually(lambda: len(seen) == 20, timeout=20)
        await eventually(lambda: server.app[HUB].registry.count_by_kind() == {kind: 1})
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading

        stored = await hub.list_deliveries(group="g", limit=1000)
        assert [d.id for d in seen] == [d.id for d in stored.deliveries]
        assert [d.body["n"] for d in seen] == list(range(20))
        reconnections = [record.message for record in caplog.records if "reconnecting" in record.message]
        assert reconnections and why in reconnections[0]


async def test_a_wait_outlives_a_server_restart(aiohttp_server, config, unused_tcp_port):
    port = unused_tcp_port
    server = await aiohttp_server(create_app(config), port=port)
    async with CbHub(f"http://127.0.0.1:{port}") as hub:
        cb = await hub.create()
        waiting = asyncio.create_task(cb.wait(timeout=30))
        await eventually(lambda: len(server.app[HUB].registry) == 1)
        await server.close()  # the pending long-poll is answered 503, or its connection drops
        assert not waiting.done()
        server = await aiohttp_server(create_app(config), port=port)
        await third_party_post(cb.url, {"after": "restart"})
        delivery = await asyncio.wait_for(waiting, 20)
        assert delivery.body == {"after": "restart"}


@pytest.mark.parametrize(
    ("status", "payload", "headers", "kind", "code"),
    [
        (503, {"error": {"code": "shutting_down", "message": "the server is restarting; retry"}}, {"Retry-After": "1"}, Unavailable, "shutting_down"),
        (502, "<html>Bad Gateway</html>", {}, Unavailable, None),
        (401, {"error": {"code": "unauthorized", "message": "a valid API key is required"}}, {}, Unauthorized, "unauthorized"),
        (422, {"error": {"code": "idempotency_key_reused", "message": "reused"}}, {}, InvalidRequest, "idempotency_key_reused"),
        (410, {"error": {"code": "callback_expired", "message": "expired"}}, {}, Expired, "callback_expired"),
        (500, {"error": {"code": "internal_error", "message": "internal server error"}}, {}, CbHubError, "internal_error"),
    ],
)  # fmt: skip
async def test_every_error_answer_becomes_the_exception_a_caller_catches(
    aiohttp_server, status, payload, headers, kind, code
):
    async def answer(request: web.Request) -> web.Response:
        if isinstance(payload, str):
            return web.Response(status=status, text=payload, content_type="text/html", headers=headers)
        return web.json_response(payload, status=status, headers=headers)

    app = web.Application()
    app.router.add_get("/v1/callbacks/{token}", answer)
    server = await aiohttp_server(app)
    async with CbHub(f"http://127.0.0.1:{server.port}") as hub:
        with pytest.raises(kind) as caught:
            await hub.get("t")
    assert type(caught.value) is kind
    assert (caught.value.status, caught.value.code) == (status, code)
    if code == "shutting_down":
        assert caught.value.retry_after == 1.0 and str(caught.value) == "the server is restarting; retry"
    if status == 502:
        assert "Bad Gateway" in str(caught.value)


async def test_another_transport_slots_in_and_the_stream_still_never_repeats(client):
    """The seam the shipped transports use: any object with `stream(filters, after)`. This one
    wraps the long-poll transport, drops its connection after every second new delivery, and on
    reconnecting replays from the start, as a careless transport might: the stream stays exact."""
    from cbhub.client import LongPoll

    class Forgetful:
        def __init__(self, inner: LongPoll) -> None:
            self.inner = inner
            self.connections = 0

        async def stream(self, filters, after):
            self.connections += 1
            new = 0
            async for delivery in self.inner.stream(filters, 0):  # ignores `after`: replays all
                yield delivery
                new += delivery.id > after
                if new == 2:
                    raise Unavailable("connection dropped")

    async with CbHub(url_of(client)) as hub:
        cb = await hub.create(group="g")
        posted = [(await post_callback(client, {"token": cb.token}, json={"n": n}))["delivery_id"] for n in range(5)]
        transport = Forgetful(LongPoll(hub))
        seen: list = []
        stream = hub.deliveries(group="g", transport=transport)
        await asyncio.wait_for(collect(stream, seen, 5), 20)
        await stream.aclose()
    assert [d.id for d in seen] == posted
    assert transport.connections == 3


# The websocket transport: resumed exactly, and long-poll where the websocket cannot serve


async def test_a_consumer_too_slow_for_the_server_is_cut_off_and_resumes_losing_nothing(
    start_hub, make_config, caplog
):
    caplog.set_level(logging.INFO, logger="cbhub.client")
    client = await start_hub(make_config(**{"realtime.max_backlog": "5"}))
    registry = client.app[HUB].registry
    # Large bodies fill the socket buffers, so the server's sends back up into its backlog.
    big = base64.b64encode(os.urandom(192 * 1024)).decode()  # 256 KiB of text per delivery
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create(group="bulk")
        await post_callback(client, {"token": cb.token}, json={"n": 0})
        stream = hub.deliveries(group="bulk")
        seen = [await asyncio.wait_for(anext(stream), 10)]

        # The consumer stops iterating while deliveries pour in, until the server gives up on it.
        posted = 0
        while posted < 20 or registry.count_by_kind():
            assert posted < 200, "the consumer was never found too slow"
            await post_callback(client, {"token": cb.token}, json={"n": posted + 1, "pad": big})
            posted += 1

        stored = await stored_ids(hub, group="bulk")
        assert len(stored) == posted + 1
        await asyncio.wait_for(collect(stream, seen, len(stored)), 30)
        # Back on a websocket, live: one more arrives in order.
        await post_callback(client, {"token": cb.token}, json={"n": "last"})
        await asyncio.wait_for(collect(stream, seen, len(stored) + 1), 10)
        assert registry.count_by_kind() == {"websocket": 1}
        await stream.aclose()

    assert [d.id for d in seen] == stored + [seen[-1].id]
    assert [d.body["n"] for d in seen] == [*range(posted + 1), "last"]
    assert any("1013: too slow" in r.message and "reconnecting" in r.message for r in caplog.records)


async def test_a_loop_body_slower_than_the_servers_heartbeat_keeps_its_websocket(start_hub, make_config, caplog):
    """The server drops a peer that leaves its ping unanswered for half a heartbeat; the stream
    keeps answering while the consumer is busy with a delivery."""
    caplog.set_level(logging.INFO, logger="cbhub.client")
    client = await start_hub(make_config(**{"realtime.heartbeat": "1"}))
    registry = client.app[HUB].registry
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create(group="g")
        await post_callback(client, {"token": cb.token}, json={"n": 1})
        stream = hub.deliveries(group="g")
        first = await asyncio.wait_for(anext(stream), 10)
        await post_callback(client, {"token": cb.token}, json={"n": 2})
        await asyncio.sleep(3)  # a loop body taking three heartbeats
        assert registry.count_by_kind() == {"websocket": 1}
        second = await asyncio.wait_for(anext(stream), 10)
        await stream.aclose()
    assert (first.body, second.body) == ({"n": 1}, {"n": 2})
    assert not [r.message for r in caplog.records if "reconnecting" in r.message]


async def start_proxy_without_websocket(aiohttp_server: Any, upstream: str, refused: list[str]) -> str:
    """A reverse proxy in front of `upstream` that passes every request on except `GET /v1/ws`,
    which it answers 404: a server from before the websocket, as the client sees it."""
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/ws":
            refused.append(request.headers.get("Upgrade", ""))
            return web.json_response({"error": {"code": "not_found", "message": "no such route"}}, status=404)
        headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")}
        async with session.request(
            request.method, upstream + request.path_qs, headers=headers, data=await request.read()
        ) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k in ("Content-Type", "Retry-After")}
            return web.Response(status=answer.status, body=body, headers=kept)

    async def close_session(app: web.Application) -> None:
        await session.close()

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", forward)
    app.on_cleanup.append(close_session)
    proxy = await aiohttp_server(app)
    return f"http://127.0.0.1:{proxy.port}"


async def test_auto_falls_back_to_long_poll_when_the_server_has_no_websocket(client, aiohttp_server, caplog):
    caplog.set_level(logging.INFO, logger="cbhub.client")
    refused: list[str] = []
    proxy = await start_proxy_without_websocket(aiohttp_server, url_of(client), refused)
    registry = client.app[HUB].registry
    async with CbHub(proxy) as hub:
        cb = await hub.create(group="g")
        await post_callback(client, {"token": cb.token}, json={"n": 1})
        seen: list[Delivery] = []
        stream = hub.deliveries(group="g")
        reading = asyncio.create_task(collect(stream, seen, 2))
        await eventually(lambda: len(seen) == 1 and registry.count_by_kind() == {"long_poll": 1})
        await post_callback(client, {"token": cb.token}, json={"n": 2})
        await asyncio.wait_for(reading, 10)
        await stream.aclose()
        assert [d.body["n"] for d in seen] == [1, 2]
        assert refused == ["websocket"]

        # Remembered: the next stream of this hub does not try the websocket again.
        again: list[Delivery] = []
        stream = hub.deliveries(group="g", after=seen[0].id)
        await asyncio.wait_for(collect(stream, again, 1), 10)
        await stream.aclose()
        assert [d.id for d in again] == [seen[1].id] and refused == ["websocket"]

        # Forcing the websocket says plainly that there is none.
        with pytest.raises(NoWebSocket, match="does not offer the websocket") as caught:
            await anext(hub.deliveries(group="g", transport="websocket"))
        assert caught.value.status == 404
    assert any("using long-poll" in r.message for r in caplog.records)


async def test_filters_a_subscribe_frame_cannot_express_go_over_long_poll(client):
    registry = client.app[HUB].registry
    async with CbHub(url_of(client)) as hub:
        cb = await hub.create(group="g")
        other = await hub.create(group="g")
        for n, request_id in enumerate(("a", "b", "a")):
            await post_callback(client, {"token": cb.token}, json={"n": n, "RequestID": request_id})
        await post_callback(client, {"token": other.token}, json={"n": 9, "RequestID": "a"})

        # A token with a correlation id (the websocket takes tokens, or group and/or correlation id).
        seen, kinds = await parked_on(hub.deliveries(token=cb.token, correlation_id="a"), 2, registry)
        assert [d.body["n"] for d in seen] == [0, 2] and kinds == {"long_poll": 1}

        # A group with a correlation id is one frame: the websocket.
        seen, kinds = await parked_on(hub.deliveries(group="g", correlation_id="a"), 3, registry)
        assert [d.body["n"] for d in seen] == [0, 2, 9] and kinds == {"websocket": 1}

        # No filter at all: every delivery of the hub, by long-poll.
        seen, kinds = await parked_on(hub.deliveries(), 4, registry)
        assert len(seen) == 4 and kinds == {"long_poll": 1}

        # Forced onto the websocket, the server's refusal is the client's exception.
        with pytest.raises(InvalidRequest, match="tokens") as caught:
            await anext(hub.deliveries(token=cb.token, group="g", transport="websocket"))
        assert caught.value.code == "invalid_field"
        with pytest.raises(NotFound) as missing:
            await anext(hub.deliveries(token="no-such-token", transport="websocket"))
        assert missing.value.code == "callback_not_found"
        with pytest.raises(ValueError, match="transport"):
            hub.deliveries(group="g", transport="carrier-pigeon")  # type: ignore[arg-type]
    await eventually(lambda: registry.count_by_kind() == {})


async def test_the_websocket_authenticates_with_the_api_key(start_hub, make_config, monkeypatch):
    monkeypatch.delenv("CBHUB_API_KEY", raising=False)  # api_key=None below means none at all
    client = await start_hub(make_config(**{"auth.api_keys": {"k": API_KEY}}))
    registry = client.app[HUB].registry
    async with CbHub(url_of(client), api_key=API_KEY) as hub:
        cb = await hub.create(group="g")
        await post_callback(client, {"token": cb.token}, json={"n": 1})
        seen: list[Delivery] = []
        stream = hub.deliveries(group="g")
        await asyncio.wait_for(collect(stream, seen, 1), 10)
        assert registry.count_by_kind() == {"websocket": 1}
        await stream.aclose()
        assert seen[0].body == {"n": 1}

    for key in ("wrong-key-0123456789", None):
        async with CbHub(url_of(client), api_key=key) as hub:
            for transport in ("auto", "websocket"):
                with pytest.raises(Unauthorized) as caught:
                    await asyncio.wait_for(anext(hub.deliveries(group="g", transport=transport)), 10)
                assert caught.value.status == 401
