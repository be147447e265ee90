"""Realtime routes: websocket subscriptions and Server-Sent Events.

Handlers parse frames and render messages; what is sent, in which order and when (replay, the
seam, the backlog) is the feed's business (cbhub.waiting.subscriptions). One writer per connection sends
what the feed gives it, one message at a time; on a websocket it exists only while there is
something to send.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from cbhub.domain.filters import DeliveryFilter
from cbhub.domain.model import RECEIVED, SETTLED, TERMINAL, Callback, now_ms, rfc3339
from cbhub.domain.outcomes import OUTCOMES
from cbhub.errors import (
    CbhubError,
    InvalidField,
    InvalidFrame,
    InvalidHeader,
    InvalidJson,
    ShuttingDown,
    SubscriptionNotFound,
    WebsocketRequired,
)
from cbhub.http.deadline import held
from cbhub.http.errors import error_frame
from cbhub.http.heartbeat import Heartbeat
from cbhub.http.keys import CONFIG, HUB, STREAMS, base_url, caller
from cbhub.http.params import (
    AFTER,
    DELIVERY_FILTERS,
    MAX_CURSOR,
    FlagParam,
    IntParam,
    Query,
    field_int,
    field_name,
    query_filter,
    refuse_unknown_fields,
    transient_query,
)
from cbhub.waiting.subscriptions import IDLE, NOTHING, End, Feed, Idle, Notice, Reply

log = logging.getLogger(__name__)

SUBSCRIBE_FIELDS = frozenset({"op", "id", "tokens", "group", "correlation_id", "outcome", "after"})
OTHER_FIELDS = frozenset({"op", "id"})
# The largest frame a client may send: a subscribe naming 1000 tokens fits many times over.
MAX_FRAME_BYTES = 1024 * 1024
# How long a closing handshake may take before the connection is simply dropped.
CLOSE_TIMEOUT = 5.0
SSE_KEEPALIVE = b": keep-alive\n\n"
# The name of an SSE stream's one subscription (it is never shown).
SSE_SUBSCRIPTION = "events"
# The one heartbeat of every websocket of the app.
HEARTBEAT = web.AppKey("heartbeat", Heartbeat)

# What each route reads, declared once (published by cbhub.http.openapi).
ONCE = FlagParam("once", "close after the first delivery")
CALLBACK_WEBSOCKET_PARAMS = (AFTER, ONCE)
CALLBACK_EVENTS_PARAMS = (AFTER,)
# Without `after`, a stream of many callbacks starts with what arrives from now.
REPLAY_AFTER = IntParam("after", None, 0, MAX_CURSOR, "replay the deliveries after this id first")
EVENTS_PARAMS = (*DELIVERY_FILTERS, REPLAY_AFTER)


# WebSocket


async def websocket(request: web.Request) -> web.StreamResponse:
    """GET /v1/ws: subscribe and unsubscribe by frames; GET /v1/callbacks/{token}/ws: one
    callback's deliveries, subscribed on connect.

    One coroutine for both routes, which reads the socket itself: a socket spends its whole
    life in it, and every coroutine it awaited through would be kept that long (0.3 KB each)."""
    ws = _upgradable(request)
    token = request.match_info.get("token")
    after, once = _callback_options(request) if token is not None else (None, False)
    streams = request.app[STREAMS]
    feed = streams.open("websocket")
    if token is not None:
        await _subscribe_callback(request, feed, token, after)
    heartbeat = request.app[HEARTBEAT]
    transport = request.transport
    try:
        await ws.prepare(request)
        held(request)
        writer = _Writer(ws, feed, once)
        if transport is not None:
            heartbeat.watch(transport)
        try:
            # receive() itself, not `async for`: no __anext__ coroutine kept while idle.
            while (message := await ws.receive()).type not in _CLOSING:
                if transport is not None:
                    heartbeat.heard(transport)
                if message.type is WSMsgType.PING:
                    await ws.pong(message.data)
                elif message.type is WSMsgType.TEXT:
                    await _handle_frame(feed, message.data, caller(request).owner)
                elif message.type is WSMsgType.BINARY:
                    feed.reply(error_frame(None, InvalidFrame("frames must be text frames holding JSON")))
                elif message.type is WSMsgType.ERROR:
                    break
        finally:
            if transport is not None:
                heartbeat.forget(transport)
            # Ends the feed (if the writer has not already): the writer closes the socket.
            streams.close(feed)
            await writer.finished()
        return ws
    finally:
        streams.close(feed)


# What ends the reading of a socket, as `async for` over it would end.
_CLOSING = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED})


def _callback_options(request: web.Request) -> tuple[int | None, bool]:
    """A callback socket's `after` and `once`."""
    query = transient_query(request)
    return AFTER.parse(query), ONCE.parse(query)


async def _subscribe_callback(request: web.Request, feed: Feed, token: str, after: int | None) -> None:
    """Subscribe a callback's socket to its deliveries before the upgrade, so that an unknown
    token is a plain 404."""
    confirm = {"type": "subscribed", "id": token}
    where = DeliveryFilter(token=token, owner=caller(request).owner)
    await _subscribe_or_refuse(request, feed, token, where, after, confirm)


class _Socket(web.WebSocketResponse[Literal[True]]):
    """aiohttp's websocket response, with every attribute an open socket will have set at once.

    aiohttp sets most of them later, in prepare(), after the first ones made by the class's
    first instance. CPython shares one table of attribute names between the instances of a
    class, but lets it grow less with every instance made: when many sockets open at once
    (each made, then awaiting its subscription before prepare), the table stops growing before
    those names are in it, and every socket of the process carries a dict of its own, 0.8 KB
    each. Set here, in the order aiohttp would, to the values aiohttp's class gives them."""

    def __init__(self) -> None:
        # Pings are the shared heartbeat's (aiohttp's would be a timer per socket): pongs come
        # to the reading loop, which tells the heartbeat the peer is alive, and answers pings.
        super().__init__(autoping=False, max_msg_size=MAX_FRAME_BYTES)
        self._loop = None
        self._keep_alive = None
        self._must_be_empty_body = None
        self._req = None
        self._payload_writer = None
        self._ws_protocol = None
        self._writer = None
        self._reader = None
        self._parser = None
        self._waiting = False


def _upgradable(request: web.Request) -> web.WebSocketResponse:
    """The response that upgrades this request, refusing one that asks for no websocket."""
    ws = _Socket()
    if not ws.can_prepare(request).ok:
        raise WebsocketRequired()
    return ws


class _Writer:
    """A websocket's one writer: sends what the feed gives, then closes as the feed ended.

    Its task runs only while the feed has something to send: thousands of idle subscribers
    hold no task, coroutine or future of their own (about 1.4 KB each). The feed calls the
    writer itself when there is news (a bound method kept by the feed would weigh more)."""

    __slots__ = ("_feed", "_once", "_task", "_ws")

    def __init__(self, ws: web.WebSocketResponse, feed: Feed, once: bool) -> None:
        self._ws = ws
        self._feed = feed
        self._once = once
        self._task: asyncio.Task[None] | None = None
        feed.on_ready = self
        self()

    def __call__(self) -> None:
        """Start sending, unless already sending."""
        if self._task is None:
            self._task = asyncio.create_task(self._send())

    async def finished(self) -> None:
        if self._task is not None:
            await self._task

    async def _send(self) -> None:
        feed, ws = self._feed, self._ws
        try:
            while (item := await feed.take()) is not NOTHING:
                if item is None:
                    await self._close()
                    return  # the task stays: nothing starts another one
                await ws.send_str(_render_frame(item))
                if self._once and isinstance(item, Notice):
                    feed.end(End.DONE)
        except ConnectionError:
            return  # the peer is gone: nothing to tell it
        except Exception:
            log.exception("websocket writer failed")
            await ws.close(code=WSCloseCode.INTERNAL_ERROR)
            return
        self._task = None  # idle: the feed's next news starts a new one

    async def _close(self) -> None:
        code, reason = _close_code(self._feed)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._ws.close(code=code, message=reason)
        except (ConnectionError, TimeoutError):
            pass  # the peer is gone or would not finish the closing handshake


def _close_code(feed: Feed) -> tuple[int, bytes]:
    if feed.ended is End.GOING_AWAY:
        return WSCloseCode.GOING_AWAY, b"server shutting down: reconnect and resume with after"
    if feed.ended is End.OVERFLOW:
        reason = f"too slow: over {feed.max_backlog} messages unsent; resubscribe with after"
        return WSCloseCode.TRY_AGAIN_LATER, reason.encode()
    return WSCloseCode.OK, b""


def _render_frame(item: Notice | Reply) -> str:
    if isinstance(item, Notice):
        if item.delivery is not None:
            item = {"type": "delivery", "id": item.name, "delivery": item.delivery.to_json()}
        elif item.timer is not None:
            item = {"type": item.timer, "id": item.name, **_timer_json(item)}
        else:
            item = {"type": "status", "id": item.name, "token": item.token, "status": item.status}
    return orjson.dumps(item).decode()


async def _handle_frame(feed: Feed, data: str, owner: str | None) -> None:
    """Act on one client frame; a bad one is answered by an error frame, never a close."""
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        feed.reply(error_frame(None, InvalidJson(f"the frame is not valid JSON: {exc}")))
        return
    if not isinstance(frame, dict):
        feed.reply(error_frame(None, InvalidFrame("a frame must be a JSON object")))
        return
    name = frame.get("id")
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        name = None
    try:
        op = frame.get("op")
        if op == "subscribe":
            refuse_unknown_fields(frame, SUBSCRIBE_FIELDS)
            name = _subscription_name(frame)
            where = _frame_filter(frame, owner)
            after = None if frame.get("after") is None else field_int(frame, "after", 0, 0, MAX_CURSOR)
            await feed.subscribe(name, where, after, confirm={"type": "subscribed", "id": name})
        elif op == "unsubscribe":
            refuse_unknown_fields(frame, OTHER_FIELDS)
            name = _subscription_name(frame)
            if not feed.unsubscribe(name):
                raise SubscriptionNotFound(name)
            feed.reply({"type": "unsubscribed", "id": name})
        elif op == "ping":
            refuse_unknown_fields(frame, OTHER_FIELDS)
            feed.reply({"type": "pong"})
        else:
            raise InvalidField("op", "must be one of subscribe, unsubscribe, ping")
    except ShuttingDown:
        pass  # the writer closes with 1001
    except CbhubError as exc:
        # Every refusal, the store's too (a subscribe reads it), as the frame HTTP would render.
        feed.reply(error_frame(name, exc))
    except Exception:
        log.exception("a websocket frame failed")
        feed.reply(error_frame(name, CbhubError()))


def _subscription_name(frame: dict[str, Any]) -> str | int:
    name = frame.get("id")
    if isinstance(name, int) and not isinstance(name, bool):
        return name
    checked = field_name(frame, "id") if isinstance(name, str) else None
    if checked is not None:
        return checked
    raise InvalidField("id", "required: a non-empty string or a whole number naming the subscription")


def _frame_filter(frame: dict[str, Any], owner: str | None) -> DeliveryFilter:
    """What a subscribe frame asks for, within what its connection's API key may see."""
    group = field_name(frame, "group")
    correlation_id = field_name(frame, "correlation_id")
    outcome = field_name(frame, "outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise InvalidField("outcome", f"must be one of {', '.join(OUTCOMES)}")
    tokens = frame.get("tokens")
    if tokens is None:
        if group is None and correlation_id is None and outcome is None:
            raise InvalidField("tokens", "one of tokens, group, correlation_id or outcome is required")
        return DeliveryFilter(group=group, correlation_id=correlation_id, owner=owner, outcome=outcome)
    if group is not None or correlation_id is not None:
        raise InvalidField("tokens", "give tokens, or group and/or correlation_id, not both")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise InvalidField("tokens", "must be a non-empty list of tokens")
    return DeliveryFilter(tokens=frozenset(tokens), owner=owner, outcome=outcome)


# Server-Sent Events


async def callback_events(request: web.Request) -> web.StreamResponse:
    """GET /v1/callbacks/{token}/events: one callback's deliveries, from the first one, until it
    closes. A closed callback with nothing new to replay answers 204, which tells an
    EventSource to stop reconnecting."""
    token = request.match_info["token"]
    owner = caller(request).owner
    after = _resume_point(request, transient_query(request), AFTER) or 0
    followed = await request.app[HUB].follow(token, after, owner)
    if followed is None:
        return web.Response(status=204)
    # Late deliveries come once the callback is closed, when this stream has ended.
    where = DeliveryFilter(token=token, owner=owner, late=False)
    return await _stream_events(request, where, after, until=_UntilClosed(followed))


async def events(request: web.Request) -> web.StreamResponse:
    """GET /v1/events?group=|token=|correlation_id=: what arrives from now (or from `after`);
    without a filter, everything the caller's key may see. Callbacks minted within the filters
    come as `created`."""
    query = transient_query(request)
    where = query_filter(query, caller(request).owner)
    after = _resume_point(request, query, REPLAY_AFTER)
    del query  # read: not kept by this frame while the stream is open
    return await _stream_events(request, where, after, created=True)


def _resume_point(request: web.Request, query: Query, after: IntParam[Any]) -> int | None:
    """Where a stream starts: Last-Event-ID (an EventSource reconnecting) beats ?after=."""
    header = request.headers.get("Last-Event-ID", "").strip()
    if header:
        # isdigit alone also takes "²", which int() refuses.
        if not (header.isascii() and header.isdigit()) or int(header) > MAX_CURSOR:
            raise InvalidHeader("Last-Event-ID", f"must be a delivery id, got {header[:40]!r}")
        return int(header)
    return after.parse(query)


class _UntilClosed:
    """Ends a one-callback stream once its callback closes, with a last status event: at a
    cancel or expiry event, or when a received callback reaches its expiry (which no event
    tells, as it stays received)."""

    def __init__(self, callback: Callback) -> None:
        self.token = callback.token
        self.status = callback.status
        self.expires_at = callback.expires_at

    def idle(self, keepalive: float) -> float:
        if self.status != RECEIVED:
            return keepalive  # a pending callback's expiry comes as an event
        return max(0.0, min(keepalive, (self.expires_at - now_ms()) / 1000))

    def last_event(self, item: Notice | Idle) -> bytes | None:
        """The closing status event, when `item` (or the time) closes the callback."""
        if isinstance(item, Notice):
            if item.delivery is not None:
                self.status = RECEIVED
                return None
            if item.status in TERMINAL:
                return self._closed(item.status)
            return None
        if self.status == RECEIVED and now_ms() >= self.expires_at:
            return self._closed(RECEIVED)
        return None

    def _closed(self, status: str) -> bytes:
        data = orjson.dumps({"token": self.token, "status": status, "closed": True})
        return b"event: status\ndata: %s\n\n" % data


async def _stream_events(
    request: web.Request,
    where: DeliveryFilter,
    after: int | None,
    created: bool = False,
    until: _UntilClosed | None = None,
) -> web.StreamResponse:
    streams = request.app[STREAMS]
    feed = streams.open("sse")
    base = base_url(request)
    try:
        await _subscribe_or_refuse(request, feed, SSE_SUBSCRIPTION, where, after, created=created)
        response = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        response.content_type = "text/event-stream"
        await response.prepare(request)
        held(request)
        try:
            await response.write(b": subscribed\n\n")  # the client sees the stream open at once
            keepalive = request.app[CONFIG].realtime.heartbeat
            idle = until.idle(keepalive) if until is not None else keepalive
            while (item := await feed.next(idle=idle)) is not None:
                last = until.last_event(item) if until is not None else None
                if last is not None:
                    await response.write(last)
                    break
                if until is not None:
                    idle = until.idle(keepalive)
                    if item is IDLE and idle < keepalive:
                        continue  # woken early to close at the expiry
                if item is IDLE:
                    await response.write(SSE_KEEPALIVE)
                    continue
                assert isinstance(item, Notice)  # an event stream queues no replies of its own
                await response.write(_render_event(item, base))
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        return response
    finally:
        streams.close(feed)


def _render_event(notice: Notice, base: str) -> bytes:
    if notice.delivery is not None:
        data = orjson.dumps(notice.delivery.to_json())
        return b"id: %d\nevent: delivery\ndata: %s\n\n" % (notice.delivery.id, data)
    if notice.created is not None:
        # No `id:`, like status events: the last event id stays the last delivery's.
        return b"event: created\ndata: %s\n\n" % orjson.dumps(notice.created.to_json(base))
    if notice.timer is not None:
        # No `id:` either: a timer's event is not a delivery to resume from.
        return b"event: %s\ndata: %s\n\n" % (notice.timer.encode(), orjson.dumps(_timer_json(notice)))
    return b"event: status\ndata: %s\n\n" % orjson.dumps({"token": notice.token, "status": notice.status})


def _timer_json(notice: Notice) -> dict[str, Any]:
    """What a settled or overdue event says, on a websocket and over SSE alike."""
    callback = notice.callback
    assert callback is not None  # a timer's notice carries its callback
    if notice.timer == SETTLED:
        result = callback.result
        return {
            "token": callback.token,
            "settled_at": rfc3339(callback.settled_at) if callback.settled_at is not None else None,
            "delivery_id": result.id if result is not None else None,
        }
    return {
        "token": callback.token,
        "status": callback.status,
        "overdue": True,
        "expect_within": callback.expect_within,
    }


async def _subscribe_or_refuse(
    request: web.Request,
    feed: Feed,
    name: str,
    where: DeliveryFilter,
    after: int | None,
    confirm: Reply = None,
    created: bool = False,
) -> None:
    """Subscribe before the response starts, so that a refusal is an ordinary HTTP error."""
    try:
        await feed.subscribe(name, where, after, confirm, created)
    except BaseException:
        request.app[STREAMS].close(feed)
        raise


def add_routes(app: web.Application) -> None:
    app[HEARTBEAT] = Heartbeat(app[CONFIG].realtime.heartbeat)
    router = app.router
    router.add_get("/v1/ws", websocket, allow_head=False)
    router.add_get("/v1/callbacks/{token}/ws", websocket, allow_head=False)
    router.add_get("/v1/events", events, allow_head=False)
    router.add_get("/v1/callbacks/{token}/events", callback_events, allow_head=False)
