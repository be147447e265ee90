"""The asynchronous client: `async with CbHub() as hub: cb = await hub.create(); await cb.wait()`."""

from __future__ import annotations

import asyncio
import os
from types import TracebackType
from typing import Any, AsyncGenerator, Literal, Mapping, Sequence
from urllib.parse import quote

import aiohttp
import orjson

from cbhub import __version__
from cbhub.client.errors import (
    Cancelled,
    CbHubError,
    Expired,
    Unavailable,
    Unreachable,
    from_response,
    unreachable,
)
from cbhub.client.models import (
    CANCELLED,
    Callback,
    Delivery,
    DeliveryPage,
    GroupStatus,
    TimerEvent,
)
from cbhub.client.streaming import (
    POLL_SECONDS,
    Auto,
    Backoff,
    LongPoll,
    Transport,
    WebSocket,
    resume,
    resume_events,
)

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "CBHUB_URL"
API_KEY_ENV = "CBHUB_API_KEY"
# Seconds an ordinary request may take; long-polls get their wait on top of it.
REQUEST_TIMEOUT = 30.0
TransportName = Literal["auto", "websocket", "long-poll"]
# What a group's wait waits for: no callback pending, or that or a first error result.
Until = Literal["all", "first_error"]


class HandleBase:
    """What every handle shows: the callback's token, and the URL to hand out."""

    callback: Callback

    @property
    def token(self) -> str:
        return self.callback.token

    @property
    def url(self) -> str:
        return self.callback.url

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} {self.callback.status}>"


class CallbackHandle(HandleBase):
    """A callback as `create` returns it: its URL to hand out, and a way to await its result.

    `callback` is the record as read when the handle was made; `refresh()` reads it again.
    """

    def __init__(self, hub: CbHub, callback: Callback) -> None:
        self.hub = hub
        self.callback = callback

    async def wait(self, timeout: float | None = None, after: int = 0, settle: float | None = None) -> Delivery:
        """The latest delivery; see `CbHub.wait`."""
        return await self.hub.wait(self.token, timeout=timeout, after=after, settle=settle)

    async def refresh(self) -> Callback:
        self.callback = await self.hub.get(self.token)
        return self.callback

    def missing(self, page_size: int = 1000) -> AsyncGenerator[str, None]:
        """Every id of its expected set that has not arrived; see `CbHub.missing`."""
        return self.hub.missing(self.token, page_size)

    async def cancel(self) -> Callback:
        self.callback = await self.hub.cancel(self.token)
        return self.callback


class CbHub:
    """A client of one cbhub server. Use it as an async context manager, or `await close()`.

    `base_url` defaults to $CBHUB_URL, else http://127.0.0.1:8080; `api_key` to $CBHUB_API_KEY.
    Every method raises a `CbHubError` subclass for an error the server answers, and
    `Unreachable` when it cannot be reached.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = 100,
    ) -> None:
        self.base_url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._auto: Auto | None = None

    async def __aenter__(self) -> CbHub:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # Callbacks

    async def create(
        self,
        ttl: int | None = None,
        label: str | None = None,
        group: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        expect: Sequence[str] | int | None = None,
        contract: Mapping[str, Any] | None = None,
        response: Mapping[str, Any] | None = None,
        settle: float | None = None,
        expect_within: int | None = None,
        outcome: Mapping[str, Any] | None = None,
    ) -> CallbackHandle:
        """Mint a callback; `ttl` in seconds (the server's default when None).

        With `idempotency_key`, a retry of the same request (e.g. after a lost answer) returns
        the callback minted the first time instead of a second one. `expect` makes the one URL
        await many deliveries: a list of correlation ids (each must arrive) or a number of
        distinct ones; it stays pending, and `wait` waits, until all came. `contract` says what
        a delivery must look like ({"json_schema": ..., "form_fields": [...], "content_types":
        [...], "reject": bool}); one that does not fit is stored as invalid, never the result.
        `response` is what its URL answers a sender: {"status", "content_type", "body",
        "headers"} or {"echo": "query:NAME" | "form:NAME" | "json:NAME"} (docs/api.md).
        `settle` (seconds): its waits answer once the latest delivery stayed the latest that
        long, and a "settled" event follows (`events`). `expect_within` (seconds, below ttl):
        still pending then, it turns overdue (an "overdue" event; its waits answer once).
        `outcome` is the callback's own rule for reading each delivery's outcome, e.g.
        `{"field": "/status", "ok": ["done"], "error": ["failed"], "error_message": "/reason"}`
        (docs/api.md).
        """
        body = {
            **_mint_body(ttl, label, group, metadata, response, settle, expect_within, outcome),
            **_expectations(expect, contract),
        }
        data = await self._request("POST", "/v1/callbacks", body=body, headers=_idempotency(idempotency_key))
        return CallbackHandle(self, Callback.from_json(data))

    async def create_batch(
        self,
        count: int,
        *,
        ttl: int | None = None,
        label: str | None = None,
        group: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        contract: Mapping[str, Any] | None = None,
        response: Mapping[str, Any] | None = None,
        settle: float | None = None,
        expect_within: int | None = None,
        outcome: Mapping[str, Any] | None = None,
    ) -> list[CallbackHandle]:
        """Mint `count` callbacks (1 to 1000) in one transaction, all alike."""
        body = {
            "count": count,
            **_mint_body(ttl, label, group, metadata, response, settle, expect_within, outcome),
            **_expectations(None, contract),
        }
        data = await self._request("POST", "/v1/callbacks/batch", body=body, headers=_idempotency(idempotency_key))
        return [CallbackHandle(self, Callback.from_json(item)) for item in data["callbacks"]]

    async def get(self, token: str) -> Callback:
        return Callback.from_json(await self._request("GET", f"/v1/callbacks/{_segment(token)}"))

    async def missing(self, token: str, page_size: int = 1000) -> AsyncGenerator[str, None]:
        """Every id of the callback's expected set that has not arrived, in the order given at
        mint, read a page (`page_size`, 1 to 1000) at a time. None for a callback without named ids."""
        path = f"/v1/callbacks/{_segment(token)}/missing"
        after = ""
        while True:
            page = await self._request("GET", path, params={"after": after, "limit": page_size})
            for correlation_id in page["missing"]:
                yield correlation_id
            if page["next_after"] is None:
                return
            after = page["next_after"]

    async def cancel(self, token: str) -> Callback:
        """Cancel a pending or received callback: it accepts no more deliveries and its waiters
        wake. Cancelling one that already expired or was cancelled changes nothing; the callback
        returned says which status it has."""
        return Callback.from_json(await self._request("DELETE", f"/v1/callbacks/{_segment(token)}"))

    async def wait(
        self, token: str, timeout: float | None = None, after: int = 0, settle: float | None = None
    ) -> Delivery:
        """The callback's latest delivery with id > after, as soon as there is one; with
        `settle` (seconds, up to 300; else the callback's own), once the latest delivery stayed
        the latest that long, or the callback can receive no more (the final result of a
        provider that calls back more than once).

        If deliveries already arrived, the latest returns at once. If several arrive before this
        returns, only the latest is returned (the latest wins, as for an enrichment provider
        that calls back twice); pass `after=delivery.id` to wait for a newer one, or iterate
        `deliveries(token=...)` to see every one. Raises `Expired` or `Cancelled` when the
        callback can receive nothing more and has nothing to return, `TimeoutError` when
        `timeout` seconds pass first (None: until the callback expires; 0: answer at once). Once
        the server answered, a restart or a lost connection is retried until the deadline, not
        raised; a server never reached raises `Unreachable`.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        backoff = Backoff()
        path = f"/v1/callbacks/{_segment(token)}/wait"
        reached = False  # timeout=0 still asks once: "is there a result yet?"
        trouble: Unavailable | None = None
        while True:
            remaining = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - loop.time())
            if remaining <= 0 and reached:
                why = f" (the last attempt failed: {trouble})" if trouble is not None else ""
                raise TimeoutError(f"no delivery on callback {token} within {timeout:g} s{why}")
            remaining = max(0.0, remaining)
            params: dict[str, Any] = {"timeout": f"{remaining:.3f}", "after": after}
            if settle is not None:
                params["settle"] = f"{settle:g}"
            try:
                data = await self._request("GET", path, params=params, wait=remaining)
            except Unavailable as exc:
                if not reached and isinstance(exc, Unreachable):
                    raise  # never reached at all: most likely a wrong URL, not a restart
                reached, trouble = True, exc
                delay = backoff.delay(exc.retry_after)
                if deadline is not None:
                    delay = min(delay, max(0.0, deadline - loop.time()))
                await asyncio.sleep(delay)
                continue
            reached, trouble = True, None
            backoff.reset()
            if data is None:
                continue  # this poll timed out: poll again until the deadline
            if data.get("settled") is False:
                continue  # not settled yet (this poll timed out, or it turned overdue): again
            callback = Callback.from_json(data["callback"])
            if callback.expected is not None and not callback.expected.complete:
                # An expected set answers at completion or closing: closed incomplete, it failed.
                missing = f"{callback.expected.total - callback.expected.arrived} of its expected ids"
                if callback.status == CANCELLED:
                    raise Cancelled(f"callback {token} was cancelled without {missing}", callback)
                raise Expired(f"callback {token} expired without {missing}", callback)
            if callback.result is not None and callback.result.id > after:
                return callback.result
            if data["deliveries"]:
                return Delivery.from_json(data["deliveries"][-1])
            what = "a delivery" if after == 0 else f"a delivery after {after}"
            if callback.status == CANCELLED:
                raise Cancelled(f"callback {token} was cancelled without {what}", callback)
            raise Expired(f"callback {token} expired without {what}", callback)

    async def wait_any(self, callbacks: Sequence[HandleBase | Callback | str], timeout: float | None = None) -> list[Callback]:
        """The callbacks (handles, records or tokens) that have a result or are closed, as soon
        as one of them does; see `wait_all`."""
        return await self._wait_many(callbacks, "any", timeout)

    async def wait_all(self, callbacks: Sequence[HandleBase | Callback | str], timeout: float | None = None) -> list[Callback]:
        """Every one of these callbacks (handles, records or tokens, at most 1,000) once none is
        pending: each has a result (`result`) or is closed (expired, cancelled), in the order
        given. Raises `TimeoutError` when `timeout` seconds pass first (None: no limit; 0: ask
        once), `NotFound` naming an unknown token. Restarts and lost connections are retried
        until the deadline, as for `wait`."""
        return await self._wait_many(callbacks, "all", timeout)

    async def _wait_many(self, callbacks: Sequence[HandleBase | Callback | str], mode: str, timeout: float | None) -> list[Callback]:
        tokens = [_token_of(item) for item in callbacks]
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        backoff = Backoff()
        reached = False
        while True:
            remaining = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - loop.time())
            if remaining <= 0 and reached:
                raise TimeoutError(f"{mode} of {len(tokens)} callbacks not ready within {timeout:g} s")
            remaining = max(0.0, remaining)
            params = [("token", token) for token in tokens] + [("mode", mode), ("timeout", f"{remaining:.3f}")]
            try:
                data = await self._request("GET", "/v1/wait", params=params, wait=remaining)
            except Unavailable as exc:
                if not reached and isinstance(exc, Unreachable):
                    raise
                reached = True
                delay = backoff.delay(exc.retry_after)
                if deadline is not None:
                    delay = min(delay, max(0.0, deadline - loop.time()))
                await asyncio.sleep(delay)
                continue
            reached = True
            backoff.reset()
            if data is not None:
                return [Callback.from_json(item) for item in data["callbacks"]]

    # Deliveries

    async def list_deliveries(
        self,
        *,
        token: str | None = None,
        group: str | None = None,
        correlation_id: str | None = None,
        after: int = 0,
        limit: int = 100,
        wait: float = 0,
        outcome: str | None = None,
    ) -> DeliveryPage:
        """One page of deliveries with id > after, oldest first; with `wait`, holds up to that
        many seconds for the first one. `outcome` ("ok", "error", ...): only those."""
        params: dict[str, Any] = {"after": after, "limit": limit, "wait": f"{wait:.3f}"}
        params.update(_filters(token, group, correlation_id, outcome))
        data = await self._request("GET", "/v1/deliveries", params=params, wait=wait)
        return DeliveryPage([Delivery.from_json(item) for item in data["deliveries"]], data["next_after"])

    def deliveries(
        self,
        *,
        group: str | None = None,
        token: str | None = None,
        correlation_id: str | None = None,
        after: int = 0,
        transport: TransportName | Transport = "auto",
        outcome: str | None = None,
    ) -> AsyncGenerator[Delivery, None]:
        """Every matching delivery with id > after, oldest first, then live ones as they arrive;
        it never ends by itself (break out of the loop). Network errors, 503 answers and
        websocket closes are retried with backoff, resuming after the last delivery yielded:
        nothing is lost or repeated across a server restart.

        `transport`: "auto" (the websocket when the server offers it and it can express the
        filters, long-poll otherwise), "websocket", "long-poll", or a `Transport` of your own.
        `outcome="error"`: only the deliveries that went wrong.
        """
        return resume(self._transport(transport), _filters(token, group, correlation_id, outcome), after)

    def events(
        self,
        *,
        group: str | None = None,
        token: str | None = None,
        correlation_id: str | None = None,
        after: int = 0,
    ) -> AsyncGenerator[Delivery | TimerEvent, None]:
        """As `deliveries`, over the websocket, with the callbacks' timer events among them:
        a `TimerEvent` "settled" once a callback's latest delivery stayed the latest for its
        settle window, "overdue" when one is still pending at its `expect_within`. Filters as
        the websocket takes them: a token alone, or a group and/or a correlation id."""
        filters = _filters(token, group, correlation_id)
        if not WebSocket.expresses(filters):
            raise ValueError("events() takes a token alone, or a group and/or a correlation_id")
        return resume_events(WebSocket(self), filters, after)

    def _transport(self, choice: TransportName | Transport | None) -> Transport:
        if choice is None or choice == "auto":
            # One for the hub's lifetime: it remembers a server found without a websocket.
            if self._auto is None:
                self._auto = Auto(self)
            return self._auto
        if choice == "websocket":
            return WebSocket(self)
        if choice == "long-poll":
            return LongPoll(self)
        if isinstance(choice, str):
            raise ValueError(f"transport must be 'auto', 'websocket', 'long-poll' or a Transport, not {choice!r}")
        return choice

    async def body(self, delivery_id: int) -> bytes:
        """The exact bytes a delivery carried."""
        content: bytes = await self._request("GET", f"/v1/deliveries/{delivery_id}/body", raw=True)
        return content

    # Groups

    async def group(self, group: str) -> GroupStatus:
        """The group's summary: counts by status and outcome, its first errors and pending tokens."""
        return GroupStatus.from_json(await self._request("GET", f"/v1/groups/{_segment(group)}"))

    async def wait_group(self, group: str, timeout: float, until: Until = "all") -> GroupStatus | None:
        """The group's summary once none of its callbacks is pending or, with
        `until="first_error"`, as soon as one has an error result; None if `timeout` passes
        first (with first_error: no error so far)."""
        params = {"timeout": f"{timeout:.3f}", "until": until}
        data = await self._request("GET", f"/v1/groups/{_segment(group)}/wait", params=params, wait=timeout)
        return GroupStatus.from_json(data) if data is not None else None

    # HTTP

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"User-Agent": f"cbhub-client/{__version__}"}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            self._session = aiohttp.ClientSession(
                headers=headers, connector=aiohttp.TCPConnector(limit=self.max_connections)
            )
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, str]] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        wait: float = 0,
        raw: bool = False,
    ) -> Any:
        """The decoded JSON answer (None for 204 No Content), or with `raw` the bytes."""
        url = self.base_url + path
        data = orjson.dumps(body) if body is not None else None
        request_headers = dict(headers or {})
        if data is not None:
            request_headers["Content-Type"] = "application/json"
        # A long-poll legitimately stays silent for `wait` seconds.
        timeout = aiohttp.ClientTimeout(total=self.request_timeout + wait)
        try:
            async with self._client().request(
                method, url, params=params, data=data, headers=request_headers, timeout=timeout
            ) as response:
                content = await response.read()
                if response.status >= 400:
                    raise from_response(response.status, _decode(content), response.headers.get("Retry-After"))
                if raw:
                    return content
                if response.status == 204:
                    return None
                try:
                    return orjson.loads(content)
                except orjson.JSONDecodeError:
                    raise CbHubError(
                        f"{method} {url}: the answer is not JSON (is this a cbhub server?)", response.status
                    ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise unreachable(self.base_url, exc) from exc


def _decode(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return content.decode("utf-8", "replace")


def _mint_body(
    ttl: int | None,
    label: str | None,
    group: str | None,
    metadata: Mapping[str, Any] | None,
    response: Mapping[str, Any] | None = None,
    settle: float | None = None,
    expect_within: int | None = None,
    outcome: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"ttl": ttl, "label": label, "group": group, "metadata": metadata}
    body.update(response=response, settle=settle, expect_within=expect_within, outcome=outcome)
    return {name: value for name, value in body.items() if value is not None}


def _expectations(expect: Sequence[str] | int | None, contract: Mapping[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if isinstance(expect, int):
        body["expect"] = {"count": expect}
    elif expect is not None:
        if isinstance(expect, str):
            raise TypeError("expect is a list of correlation ids or a count, not one string")
        body["expect"] = {"correlation_ids": list(expect)}
    if contract is not None:
        body["contract"] = dict(contract)
    return body


def _token_of(item: Any) -> str:
    """A callback's token from a handle, a Callback record, or the token itself."""
    if isinstance(item, str):
        return item
    token = getattr(item, "token", None)
    if not isinstance(token, str):
        raise TypeError(f"expected a callback handle, a Callback or a token, not {type(item).__name__}")
    return token


def _filters(
    token: str | None, group: str | None, correlation_id: str | None, outcome: str | None = None
) -> dict[str, str]:
    filters = {"token": token, "group": group, "correlation_id": correlation_id, "outcome": outcome}
    # An empty filter is no filter, as the server reads an empty query parameter.
    return {name: value for name, value in filters.items() if value}


def _idempotency(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key else {}


def _segment(text: str) -> str:
    """`text` safe as one path segment (a group name may hold anything)."""
    return quote(text, safe="")
