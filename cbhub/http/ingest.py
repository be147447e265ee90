"""The public side: third parties POST (or PUT, PATCH) to /cb/{token}.

Whatever the body is, it is stored; the 200 goes out only once it is committed.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from multidict import CIMultiDictProxy

from cbhub.domain.bodies import FormScan, ParsedBody, scan
from cbhub.domain.model import HIDDEN_HEADERS, Incoming, now_ms
from cbhub.domain.outcomes import BUILTIN_FORM_FIELDS
from cbhub.domain.responses import ANSWER_POLICY, Answer
from cbhub.errors import (
    CallbackClosed,
    CallbackNotFound,
    CbhubError,
    ContractViolation,
    DeliveryRefused,
    HandshakeNotAllowed,
    PayloadTooLarge,
    RateLimited,
)
from cbhub.http.errors import Handler, error_answer, json_response
from cbhub.http.forwarded import client_address
from cbhub.http.keys import (
    CLIENT_ADDRESS,
    CONFIG,
    HUB,
    LIMITER,
    METRICS,
    REFUSAL_LIMITER,
)
from cbhub.http.ratelimit import RateLimiter
from cbhub.store import IngestResult

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


REQUESTS_SPENT = "too many requests from this address"
REFUSALS_SPENT = "too many refused requests from this address"


def _rate_limit(request: web.Request, remote_addr: str | None) -> None:
    """429 once this address has spent its burst (ingest.rate_per_ip, off by default): every
    request counts, real callbacks too."""
    limiter = request.app.get(LIMITER)
    if limiter is not None:
        _refuse_if_spent(limiter, remote_addr, REQUESTS_SPENT)


def _slow_down_refusals(request: web.Request, remote_addr: str | None) -> None:
    """Charge a refused request to its address (ingest.refusal_rate_per_ip); past the burst, 429
    instead of the refusal, so probing for tokens is slowed and learns nothing more. Only
    refusals are charged: a request to an open callback is never refused for a rate."""
    limiter = request.app.get(REFUSAL_LIMITER)
    if limiter is not None:
        _refuse_if_spent(limiter, remote_addr, REFUSALS_SPENT)


def _refuse_if_spent(limiter: RateLimiter, remote_addr: str | None, why: str) -> None:
    wait = limiter.take(remote_addr or "unknown")
    if wait > 0:
        raise RateLimited(why, wait)


# Refusals that say the request itself is wrong: what probing for tokens is made of.
REFUSED = (CallbackNotFound, CallbackClosed, DeliveryRefused, HandshakeNotAllowed)


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


class Receiver:
    """The callback route's handler, with what it uses of the app looked up once, when the
    routes are added, rather than on every request (a missing key, such as an unset rate
    limiter, costs a raised and caught KeyError each time it is looked up)."""

    def __init__(self, app: web.Application) -> None:
        config = app[CONFIG]
        self.hub = app[HUB]
        self.metrics = app[METRICS]
        self.in_flight = app[INGESTS]
        self.trusted_proxies = config.server.trusted_proxies
        self.limiter = app.get(LIMITER)
        self.refusal_limiter = app.get(REFUSAL_LIMITER)
        self.correlation_fields = config.callbacks.correlation_fields
        # One scan of a form for what the correlation id and the built-in outcome rules read.
        self.also_scanned = BUILTIN_FORM_FIELDS if config.outcomes.builtin else frozenset()

    async def receive(self, request: web.Request) -> web.StreamResponse:
        """Runs without the app's middlewares (see app.create_app): errors are answered here,
        as the error middleware answers them."""
        metrics = self.metrics
        started = time.perf_counter()
        remote_addr = request[CLIENT_ADDRESS] = client_address(request, self.trusted_proxies)
        try:
            try:
                with self.in_flight.track():
                    try:
                        result = await self._store(request, remote_addr)
                    except REFUSED:
                        if self.refusal_limiter is not None:
                            _refuse_if_spent(self.refusal_limiter, remote_addr, REFUSALS_SPENT)
                        raise
            except Exception as exc:
                metrics.count_delivery(exc.label if isinstance(exc, CbhubError) else "error")
                raise
            return self._answer(result, started)
        except Exception as exc:  # asyncio.CancelledError is not an Exception: it goes on up
            return error_answer(request, exc)

    def _answer(self, result: IngestResult, started: float) -> web.Response:
        metrics = self.metrics
        delivery = result.delivery
        metrics.count_delivery("duplicate" if result.duplicate else "late" if delivery.late else "stored")
        if not result.duplicate:
            metrics.count_outcome(delivery.outcome)
        metrics.ingest_seconds.observe(time.perf_counter() - started)
        contract = result.callback.contract
        if delivery.problems and contract is not None and contract.reject:
            # Stored all the same (and counted so above): a sender that retries on a 4xx is told.
            raise ContractViolation(delivery.problems, delivery.id)
        if result.answered is not None:
            return answer_response(result.answered)
        return json_response(
            {"ok": True, "delivery_id": delivery.id, "duplicate": result.duplicate, "late": delivery.late}
        )

    async def _store(self, request: web.Request, remote_addr: str | None) -> IngestResult:
        if self.limiter is not None:
            _refuse_if_spent(self.limiter, remote_addr, REQUESTS_SPENT)
        token = request.match_info["token"]
        # Before the body is read: an outsider costs no more than its headers.
        self.hub.admit(token, remote_addr)
        if len(token) > MAX_TOKEN_LENGTH:
            raise CallbackNotFound(token)
        received_at = now_ms()
        try:
            raw = await request.read()  # bounded by the app's client_max_size
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge() from None
        content_type = request.headers.get("Content-Type")
        if content_type is not None:
            content_type = _header_text(content_type)
        parsed, correlation, scanned = scan(raw, content_type, self.correlation_fields, self.also_scanned)
        incoming = _incoming(request, remote_addr, raw, parsed, correlation, content_type, received_at, scanned)
        return await self.hub.ingest(incoming)


def answer_response(answer: Answer) -> web.Response:
    """What a response spec says to answer, under cbhub's policy for bodies it did not write."""
    response = web.Response(status=answer.status, text=answer.body, headers=answer.headers)
    for name, value in ANSWER_POLICY:
        response.headers[name] = value
    # Set last, as given: aiohttp would otherwise split or re-add the charset.
    response.headers["Content-Type"] = answer.content_type
    return response


async def handshake(request: web.Request) -> web.Response:
    """GET /cb/{token}: a verification handshake (WebSub, Meta), answered by the callback's echo
    spec and never stored. The address guards apply as to a delivery; a signature does not
    (these GETs carry none)."""
    remote_addr = client_address(request, request.app[CONFIG].server.trusted_proxies)
    try:
        _rate_limit(request, remote_addr)
        incoming = _incoming(request, remote_addr, b"", None, None)
        answer = await request.app[HUB].handshake(incoming)
    except REFUSED:
        _slow_down_refusals(request, remote_addr)
        raise
    return answer_response(answer)


def _incoming(
    request: web.Request,
    remote_addr: str | None,
    raw: bytes,
    parsed: ParsedBody | None,
    correlation: str | None,
    content_type: str | None = None,
    received_at: int | None = None,
    scanned: FormScan | None = None,
) -> Incoming:
    return Incoming(
        token=request.match_info["token"],
        received_at=now_ms() if received_at is None else received_at,
        method=request.method,
        content_type=content_type,
        remote_addr=remote_addr,
        headers=visible_headers(request.headers),
        query_string=request.query_string,
        raw=raw,
        correlation_id=correlation,
        parsed=parsed,
        dedupe_key=dedupe_key(request.headers),
        scanned=scanned,
    )


def add_routes(app: web.Application) -> list[Handler]:
    """The callback routes; returns the handlers that answer their own errors and run without
    the app's middlewares."""
    app[INGESTS] = InFlight()
    receiver = Receiver(app)
    for method in ("POST", "PUT", "PATCH"):
        app.router.add_route(method, "/cb/{token}", receiver.receive)
    app.router.add_get("/cb/{token}", handshake, allow_head=False)
    return [receiver.receive]
