"""The public side: third parties POST (or PUT, PATCH) to /cb/{token}.

Whatever the body is, it is stored; the 200 goes out only once it is committed.
"""

from __future__ import annotations

import asyncio
import math
import time
from aiohttp import web
from multidict import CIMultiDictProxy

from cbhub.bodies import correlation_of
from cbhub.http.errors import ApiError, json_response
from cbhub.http.forwarded import client_address
from cbhub.http.keys import CONFIG, HUB, LIMITER, METRICS
from cbhub.model import HIDDEN_HEADERS, Incoming, now_ms
from cbhub.registry import ShuttingDown
from cbhub.store import (
    AddressNotAllowed,
    CallbackClosed,
    CallbackNotFound,
    IngestResult,
    SignatureInvalid,
    StoreUnavailable,
)

# Headers by which senders name a message, so that their retries are stored once.
DEDUPE_HEADERS = ("webhook-id", "svix-id", "idempotency-key")
MAX_TOKEN_LENGTH = 128


def _header_text(text: str) -> str:
    """Header bytes that are not UTF-8 reach us as surrogate escapes; read them as the
    ISO-8859-1 that HTTP historically meant, so nothing is lost and all is valid text."""
    if text.isascii():
        return text
    raw = text.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def visible_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The request's headers as an object, without credentials; repeats joined by ", "."""
    visible: dict[str, str] = {}
    for name, value in headers.items():
        name = _header_text(str(name))  # str(): orjson takes no istr as a key
        if name.lower() in HIDDEN_HEADERS:
            continue
        value = _header_text(value)
        visible[name] = f"{visible[name]}, {value}" if name in visible else value
    return visible


def dedupe_key(headers: CIMultiDictProxy[str]) -> str | None:
    for name in DEDUPE_HEADERS:
        value = headers.get(name)
        if value:
            return f"{name}:{_header_text(value)[:200]}"
    return None


def _rate_limit(request: web.Request, remote_addr: str | None) -> None:
    """429 once this address has spent its burst; every request counts, unknown tokens too, so
    that probing for tokens is slowed as much as flooding one."""
    limiter = request.app.get(LIMITER)
    if limiter is None:
        return
    wait = limiter.take(remote_addr or "unknown")
    if wait > 0:
        raise ApiError(
            429,
            "rate_limited",
            "too many requests from this address; retry after the Retry-After delay",
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )


# Why a callback request was refused, for the deliveries metric.
REFUSALS: dict[type[Exception], str] = {
    CallbackNotFound: "not_found",
    CallbackClosed: "closed",
    StoreUnavailable: "store_unavailable",
    ShuttingDown: "shutting_down",
    web.HTTPRequestEntityTooLarge: "too_large",
    AddressNotAllowed: "address_not_allowed",
    SignatureInvalid: "signature_invalid",
}


class InFlight:
    """Counts callback requests being received, so a graceful stop can let them finish:
    aiohttp alone stops reading request bodies once its shutdown begins."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def track(self) -> InFlight:
        """`with in_flight.track():` counts one request while the block runs. A plain context
        manager, not a generator one: this runs for every callback request."""
        return self

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(self, *exc_info: object) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until none is in flight; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


INGESTS = web.AppKey("ingests_in_flight", InFlight)


async def receive(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    started = time.perf_counter()
    try:
        with request.app[INGESTS].track():
            result = await _store(request)
    except Exception as exc:
        reason = exc.code if isinstance(exc, ApiError) else REFUSALS.get(type(exc), "error")
        metrics.deliveries.labels(reason).inc()
        raise
    metrics.count_delivery("duplicate" if result.duplicate else "stored")
    metrics.ingest_seconds.observe(time.perf_counter() - started)
    return json_response({"ok": True, "delivery_id": result.delivery.id, "duplicate": result.duplicate})


async def _store(request: web.Request) -> IngestResult:
    config = request.app[CONFIG]
    remote_addr = client_address(request, config.server.trusted_proxies)
    _rate_limit(request, remote_addr)
    token = request.match_info["token"]
    # Before the body is read: an outsider costs no more than its headers.
    request.app[HUB].admit(token, remote_addr)
    if len(token) > MAX_TOKEN_LENGTH:
        raise CallbackNotFound(token)
    received_at = now_ms()
    raw = await request.read()  # bounded by the app's client_max_size: 413 beyond it
    content_type = request.headers.get("Content-Type")
    if content_type is not None:
        content_type = _header_text(content_type)
    parsed, correlation = correlation_of(raw, content_type, config.callbacks.correlation_fields)
    incoming = Incoming(
        token=token,
        received_at=received_at,
        method=request.method,
        content_type=content_type,
        remote_addr=remote_addr,
        headers=visible_headers(request.headers),
        query_string=request.query_string,
        raw=raw,
        correlation_id=correlation,
        parsed=parsed,
        dedupe_key=dedupe_key(request.headers),
    )
    return await request.app[HUB].ingest(incoming)


def add_routes(app: web.Application) -> None:
    app[INGESTS] = InFlight()
    for method in ("POST", "PUT", "PATCH"):
        app.router.add_route(method, "/cb/{token}", receive)
