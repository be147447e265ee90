"""server.read_timeout: a request must arrive whole, headers and body, within read_timeout of its
first byte, or its connection is closed.

aiohttp's server has no such deadline: a connection that sends half a request's headers, or a
body a byte at a time, holds a file descriptor for as long as it likes, and enough of them
exhaust the process's limit (Slowloris). The deadline is absolute, like Go's ReadHeaderTimeout
and nginx's client_header_timeout, not an idle timer: a sender trickling a byte now and then
does not reset it.

It is kept per connection, in the protocol, because that is where the first byte and the end
of a request are seen, before any handler runs and for every route alike. It ends once the
request is complete, so what is served afterwards (long-polls, websockets, event streams) runs
as long as it needs. Its cost on the hot path is a clock read and two attribute writes per
request: one timer per connection is reused, and only moved (like aiohttp's own keep-alive
timer) when it fires before the current request's deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from aiohttp import web
from aiohttp.streams import StreamReader


class DeadlineRequestHandler(web.RequestHandler):
    """aiohttp's HTTP/1 protocol, closing a connection whose request is not received whole in
    time. A new connection's first request is due read_timeout after the accept: a connection
    that never sends a byte holds a descriptor just as one that stops half-way does."""

    __slots__ = ("_read_timeout", "_read_due", "_read_timer", "_on_read_timeout")

    def __init__(
        self,
        manager: web.Server,
        *,
        read_timeout: float,
        on_read_timeout: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._read_timeout = read_timeout
        self._on_read_timeout = on_read_timeout
        # When the request being received must be complete; None while none is.
        self._read_due: float | None = None
        self._read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._request_started()

    def connection_lost(self, exc: BaseException | None) -> None:
        # Cancelling drops the timer's reference to this protocol at once, not when it fires.
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self._read_due = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Bytes while no request is being received start one; once a connection is upgraded
        # (websocket) its bytes are frames, not requests.
        if (
            self._read_due is None
            and data
            and self._payload_parser is None
            and not self._upgraded
            and not (self._close or self._force_close)
        ):
            self._request_started()
        queued = len(self._messages)
        super().data_received(data)
        # Requests are parsed in order, so the last new one is the only one whose body may
        # still be arriving.
        if len(self._messages) > queued:
            self._headers_received(self._messages[-1][1])

    def release_read_timer(self) -> None:
        """Drop the connection's read timer now if no request is being received: a request
        that will be held (a long-poll, a websocket, an event stream) would otherwise keep
        it, with its callback, until it fires read_timeout after the request began. The next
        request on the connection makes a new one."""
        if self._read_due is None and self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _request_started(self) -> None:
        due = self._loop.time() + self._read_timeout
        self._read_due = due
        if self._read_timer is None:
            self._read_timer = self._loop.call_at(due, self._check_deadline)

    def _headers_received(self, payload: StreamReader) -> None:
        if payload.is_eof():  # no body, or all of it came with the headers
            self._read_due = None
            return
        if self._read_due is None:
            # The previous request's end and this one's headers came in one read.
            self._request_started()
        payload.on_eof(self._request_received)

    def _request_received(self) -> None:
        self._read_due = None

    def _check_deadline(self) -> None:
        self._read_timer = None
        due = self._read_due
        if due is None:
            return  # the request was complete in time; the next one starts a timer again
        if self._loop.time() < due:
            # Set for an earlier request on this connection: wait on for this one's deadline.
            self._read_timer = self._loop.call_at(due, self._check_deadline)
            return
        self._read_due = None
        if self._on_read_timeout is not None:
            self._on_read_timeout()
        # No answer, as nginx and Go give none: the sender is not sending, and a handler
        # already reading the body is cancelled (handler_cancellation) with the connection.
        self.force_close()


def held(request: web.BaseRequest) -> None:
    """Say that `request`, received whole, will be held open: its connection's read timer goes
    (under a server without the read deadline, such as a test's, nothing happens)."""
    protocol = request.protocol
    if isinstance(protocol, DeadlineRequestHandler):
        protocol.release_read_timer()


class DeadlineServer(web.Server):
    """aiohttp's low-level server, whose connections keep the read deadline."""

    def __init__(
        self, stock: web.Server, read_timeout: float, on_read_timeout: Callable[[], None] | None = None
    ) -> None:
        # Built as aiohttp built `stock` for the app (its handler, request factory and protocol
        # settings), which only a Server made by aiohttp itself knows.
        super().__init__(
            stock.request_handler,
            request_factory=stock.request_factory,
            handler_cancellation=stock.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **stock._kwargs,
        )
        self.read_timeout = read_timeout
        self.on_read_timeout = on_read_timeout

    def __call__(self) -> DeadlineRequestHandler:
        return DeadlineRequestHandler(
            self,
            loop=self._loop,
            read_timeout=self.read_timeout,
            on_read_timeout=self.on_read_timeout,
            **self._kwargs,
        )


class DeadlineAppRunner(web.AppRunner):
    """web.AppRunner serving the app with DeadlineServer."""

    __slots__ = ("_read_timeout", "_on_read_timeout")

    def __init__(
        self,
        app: web.Application,
        *,
        read_timeout: float,
        on_read_timeout: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._read_timeout = read_timeout
        self._on_read_timeout = on_read_timeout

    async def _make_server(self) -> web.Server:
        # aiohttp's own: runs the app's startup and configures the server from the runner's
        # arguments (access log, handler_cancellation, ...).
        stock = await super()._make_server()
        return DeadlineServer(stock, self._read_timeout, self._on_read_timeout)
