"""An endless, resumable stream of deliveries, over a pluggable transport.

A transport turns (filters, cursor) into the deliveries with id > cursor, oldest first, for as
long as its connection lasts; it raises `Unavailable` when the connection fails or the server
asks to come back later. `resume` wraps any transport into a stream that never ends: it
reconnects with backoff and resumes from the last id it yielded, so a server restart loses and
repeats nothing. Two transports are shipped: `WebSocket` (`GET /v1/ws`, one subscription per
connection) and `LongPoll` (`GET /v1/deliveries?wait=`); `Auto` picks the websocket when the
server offers it and the filters fit a subscribe frame, long-poll otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, AsyncGenerator, Callable, Mapping, Protocol, TypeVar

import aiohttp
import orjson

from cbhub.client.errors import (
    CbHubError,
    NoWebSocket,
    Unavailable,
    from_response,
    unreachable,
)
from cbhub.client.models import OVERDUE, SETTLED, Delivery, TimerEvent

if TYPE_CHECKING:
    from cbhub.client.hub import CbHub

log = logging.getLogger(__name__)

# Each long-poll asks the server to hold this long (the server may cap it lower). Below the 60 s
# idle limit many proxies and load balancers apply.
POLL_SECONDS = 50.0
PAGE_SIZE = 500


class Transport(Protocol):
    def stream(self, filters: Mapping[str, str], after: int) -> AsyncGenerator[Delivery, None]:
        """Deliveries matching `filters` (token, group, correlation_id) with id > after, oldest
        first, live; raises Unavailable when the connection is lost."""
        ...


class LongPoll:
    """`GET /v1/deliveries?...&after=&wait=` in a loop: one request per batch."""

    def __init__(self, hub: CbHub, wait: float = POLL_SECONDS, limit: int = PAGE_SIZE) -> None:
        self.hub = hub
        self.wait = wait
        self.limit = limit

    async def stream(self, filters: Mapping[str, str], after: int) -> AsyncGenerator[Delivery, None]:
        while True:
            page = await self.hub.list_deliveries(after=after, limit=self.limit, wait=self.wait, **filters)
            for delivery in page.deliveries:
                yield delivery
            after = page.next_after


# The websocket route, and the name of the one subscription each connection holds (it comes back
# on every frame of that subscription).
WEBSOCKET_PATH = "/v1/ws"
SUBSCRIPTION = "stream"
# Answers to the upgrade that mean "no websocket here": a server from before /v1/ws (404, 405),
# or a proxy that drops the Upgrade header on the way, so that cbhub sees a plain GET (426).
NO_WEBSOCKET_STATUSES = frozenset({404, 405, 426})
# Close codes after which the server expects the client back with `after` (see docs/realtime.md):
# 1001 going away (a restart), 1011 internal error, 1012 service restart, 1013 too slow, 1014 bad
# gateway; and 1006, the connection dropped without a close frame. The server never closes with
# 1000 mid-stream, but a proxy timing out an idle connection may: reconnecting is right then too.
# Any other code (1002 protocol error, 1008 policy, 1009 frame too big...) would repeat itself
# on every attempt, so it is raised instead.
RECONNECT_CODES = frozenset({1000, 1001, 1006, 1011, 1012, 1013, 1014})
# The client pings a server that has been silent this long, and drops the connection when no
# pong comes within half of it: a server that vanished without closing (a host gone, a network
# split) is noticed as a long-poll's read timeout would notice it. The server pings every
# `realtime.heartbeat` (15 s by default), so a live server is never silent this long.
HEARTBEAT = 30.0
# How far the websocket reads ahead of the consumer, in bytes of frames. aiohttp answers the
# server's pings only as it reads, and the server drops a peer that leaves a ping unanswered
# for half its heartbeat (7.5 s by default): reading on while the loop body runs keeps a slow
# loop body from being taken for a dead peer. Past this much unread, reading stops, the socket
# fills, and the server's backlog rule (close with 1013, resume with after) takes over.
READ_AHEAD_BYTES = 8 * 1024 * 1024


class WebSocket:
    """`GET /v1/ws`: one subscription per connection, replayed from `after`, then live.

    Filters it can express (`expresses`): a token alone, or a group and/or a correlation id.
    """

    def __init__(self, hub: CbHub, heartbeat: float = HEARTBEAT) -> None:
        self.hub = hub
        self.heartbeat = heartbeat

    @staticmethod
    def expresses(filters: Mapping[str, str]) -> bool:
        """Whether one subscribe frame asks for exactly these filters. It takes `tokens`, or
        `group` and/or `correlation_id`, never both kinds, and at least one, each with an optional
        `outcome`: so a token combined with another filter, or no filter at all (every delivery
        of the hub), is long-poll's."""
        if "token" in filters:
            return len(filters) == (2 if "outcome" in filters else 1)
        return bool(filters)

    async def stream(self, filters: Mapping[str, str], after: int) -> AsyncGenerator[Delivery, None]:
        async with aclosing(self.events(filters, after, timers=False)) as items:
            async for item in items:
                if isinstance(item, Delivery):
                    yield item

    async def events(
        self, filters: Mapping[str, str], after: int, timers: bool = True
    ) -> AsyncGenerator[Delivery | TimerEvent, None]:
        """As `stream`, with the callbacks' timer events (settled, overdue) among the deliveries."""
        ws = await self._connect()
        frames = _ReadAhead(ws, READ_AHEAD_BYTES)
        try:
            try:
                await ws.send_str(orjson.dumps(_subscribe_frame(filters, after)).decode())
            except (aiohttp.ClientError, ConnectionError) as exc:
                raise unreachable(self.hub.base_url, exc) from exc
            while True:
                message = await frames.next()
                if message.type is aiohttp.WSMsgType.TEXT:
                    frame = _decode_frame(message.data)
                    if frame.get("type") == "delivery":
                        yield Delivery.from_json(frame["delivery"])
                    elif timers and frame.get("type") in (SETTLED, OVERDUE):
                        yield TimerEvent.from_frame(frame)
                    elif frame.get("type") == "error":
                        raise _frame_error(frame.get("error"))
                    # Else "subscribed", "status" (a callback of a token or group subscription
                    # expired or was cancelled), or a timer's event when not asked for: the
                    # stream goes on, as long-poll's does.
                elif message.type is aiohttp.WSMsgType.ERROR:
                    raise unreachable(self.hub.base_url, message.data)
                elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    raise _closed(ws.close_code, message.extra)
        finally:
            try:
                await frames.stop()
            finally:
                await ws.close()

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        url = self.hub.base_url + WEBSOCKET_PATH
        try:
            # The handshake is an ordinary request and gets an ordinary request's time limit.
            async with asyncio.timeout(self.hub.request_timeout):
                # max_msg_size=0: a delivery frame is as large as its body makes it (a 1 MiB text
                # body of escaped characters is several MiB of JSON); long-poll takes any size too.
                return await self.hub._client().ws_connect(url, heartbeat=self.heartbeat, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in NO_WEBSOCKET_STATUSES:
                message = f"GET {url} answered HTTP {exc.status}: this server does not offer the websocket API"
                raise NoWebSocket(message, exc.status) from None
            # The body of a refused upgrade is not read; the status says enough to pick the error
            # (401 Unauthorized, 503 Unavailable with its Retry-After, ...).
            retry_after = exc.headers.get("Retry-After") if exc.headers is not None else None
            raise from_response(exc.status, f"the websocket upgrade (GET {url}) was refused", retry_after) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise unreachable(self.hub.base_url, exc) from exc


class _ReadAhead:
    """Receives a websocket's messages in a task of its own, up to `limit` bytes ahead of the
    consumer; `next()` hands them over in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, limit: int) -> None:
        self._ws = ws
        self._limit = limit
        self._queue: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
        self._unread = 0
        self._room = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                message = await self._ws.receive()
                self._queue.put_nowait(message)
                if message.type is not aiohttp.WSMsgType.TEXT:
                    if message.type is aiohttp.WSMsgType.BINARY:
                        continue
                    return  # closed, or failed: the last message there is
                self._unread += len(message.data)
                while self._unread > self._limit:
                    self._room.clear()
                    await self._room.wait()
        except Exception as exc:  # never leave next() waiting for a message that cannot come
            self._queue.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.ERROR, exc, None))

    async def next(self) -> aiohttp.WSMessage:
        message = await self._queue.get()
        if message.type is aiohttp.WSMsgType.TEXT:
            self._unread -= len(message.data)
            self._room.set()
        return message

    async def stop(self) -> None:
        self._task.cancel()
        # wait(), not await: a cancellation of the caller itself must not be swallowed here.
        await asyncio.wait([self._task])


def _subscribe_frame(filters: Mapping[str, str], after: int) -> dict[str, Any]:
    frame: dict[str, Any] = {"op": "subscribe", "id": SUBSCRIPTION, "after": after}
    for name, value in filters.items():
        if name == "token":
            frame["tokens"] = [value]
        else:
            frame[name] = value
    return frame


def _decode_frame(text: str) -> dict[str, Any]:
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        frame = None
    if not isinstance(frame, dict):
        sample = text[:80]
        raise CbHubError(f"the websocket sent a frame that is not a JSON object (is this a cbhub server?): {sample!r}")
    return frame


def _frame_error(error: Any) -> CbHubError:
    """The exception for an error frame: the one its code would raise as an HTTP answer (frames
    carry the API's error codes, not a status)."""
    code = error.get("code") if isinstance(error, dict) else None
    status = 404 if isinstance(code, str) and code.endswith("_not_found") else 400
    return from_response(status, {"error": error})


def _closed(code: int | None, reason: Any) -> CbHubError:
    described = f"the server closed the websocket ({code}{f': {reason}' if reason else ''})"
    if code is None or code in RECONNECT_CODES:
        return Unavailable(described)
    return CbHubError(described)


class Auto:
    """The websocket when the server offers it and the filters fit one subscribe frame,
    long-poll otherwise. A server that answers the upgrade with 404, 405 or 426 is remembered
    as having no websocket: later streams go straight to long-poll."""

    def __init__(self, hub: CbHub) -> None:
        self.websocket = WebSocket(hub)
        self.long_poll = LongPoll(hub)
        self.websocket_offered = True

    async def stream(self, filters: Mapping[str, str], after: int) -> AsyncGenerator[Delivery, None]:
        if self.websocket_offered and WebSocket.expresses(filters):
            try:
                async with aclosing(self.websocket.stream(filters, after)) as deliveries:
                    async for delivery in deliveries:
                        yield delivery
                return
            except NoWebSocket as exc:
                # Raised by the upgrade, before anything was yielded: `after` still holds.
                log.info("%s; using long-poll", exc)
                self.websocket_offered = False
        async with aclosing(self.long_poll.stream(filters, after)) as deliveries:
            async for delivery in deliveries:
                yield delivery


class Backoff:
    """Exponential delays with jitter between reconnection attempts; a server's Retry-After is
    honoured when it asks for longer."""

    def __init__(self, first: float = 0.1, maximum: float = 5.0) -> None:
        self.first = first
        self.maximum = maximum
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def delay(self, retry_after: float | None = None) -> float:
        current = self._next
        self._next = min(self.maximum, current * 2)
        # Jitter spreads the reconnections of many clients after one restart.
        delay = current / 2 + random.uniform(0, current / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, 60.0))
        return delay


# An attempt that lasted this long counts as a working connection: the next failure starts
# the backoff over.
HEALTHY_SECONDS = 10.0
# What a resumed stream yields: deliveries, and (over a websocket) timer events too.
Item = TypeVar("Item", Delivery, Delivery | TimerEvent)


def resume_events(
    socket: WebSocket, filters: Mapping[str, str], after: int, backoff: Backoff | None = None
) -> AsyncGenerator[Delivery | TimerEvent, None]:
    """`resume` over a websocket, with the timer events: a timer's event has no id to resume
    from, so one that fires while the connection is down is not told again (the callback's
    `settled_at` and `overdue` say it)."""
    return _resuming(lambda last: socket.events(filters, last), after, backoff)


def resume(
    transport: Transport, filters: Mapping[str, str], after: int, backoff: Backoff | None = None
) -> AsyncGenerator[Delivery, None]:
    """Every delivery matching `filters` with id > after, forever, across reconnections."""
    return _resuming(lambda last: transport.stream(filters, last), after, backoff)


async def _resuming(
    open_stream: Callable[[int], AsyncGenerator[Item, None]], after: int, backoff: Backoff | None
) -> AsyncGenerator[Item, None]:
    """What `open_stream(last)` yields, reopened after each outage from the last delivery
    yielded, waiting out the backoff between tries."""
    backoff = backoff or Backoff()
    last = after
    while True:
        started = time.monotonic()
        try:
            async with aclosing(open_stream(last)) as stream:
                async for item in stream:
                    if isinstance(item, Delivery):
                        if item.id <= last:
                            continue  # a transport's replay overlapping what was yielded: never repeat
                        last = item.id
                    backoff.reset()
                    yield item
        except Unavailable as exc:
            if time.monotonic() - started >= HEALTHY_SECONDS:
                backoff.reset()
            delay = backoff.delay(exc.retry_after)
            log.info("server unavailable (%s); reconnecting in %.1f s, resuming after delivery %d", exc, delay, last)
            await asyncio.sleep(delay)
