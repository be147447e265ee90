"""The public side: third parties POST (or PUT, PATCH) to /cb/{token}.

Whatever the body is, it is stored; the 200 goes out only once it is committed.
"""

from __future__ import annotations

import math

from aiohttp import web
from multidict import CIMultiDictProxy

from cbhub.bodies import correlation_id, parse_body
from cbhub.http.errors import ApiError, json_response
from cbhub.http.forwarded import client_address
from cbhub.http.keys import CONFIG, HUB, LIMITER
from cbhub.model import HIDDEN_HEADERS, Incoming, now_ms

# Headers by which senders name a message, so that their retries are stored once.
DEDUPE_HEADERS = ("webhook-id", "svix-id", "idempotency-key")
MAX_TOKEN_LENGTH = 128


def visible_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The request's headers as an object, without credentials; repeats joined by ", "."""
    visible: dict[str, str] = {}
    for name, value in headers.items():
        name = str(name)  # aiohttp's istr is a str subclass orjson will not take as a key
        if name.lower() in HIDDEN_HEADERS:
            continue
        visible[name] = f"{visible[name]}, {value}" if name in visible else value
    return visible


def dedupe_key(headers: CIMultiDictProxy[str]) -> str | None:
    for name in DEDUPE_HEADERS:
        value = headers.get(name)
        if value:
            return f"{name}:{value[:200]}"
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


async def receive(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    remote_addr = client_address(request, config.server.trusted_proxies)
    _rate_limit(request, remote_addr)
    token = request.match_info["token"]
    # Before the body is read: an outsider costs no more than its headers.
    request.app[HUB].admit(token, remote_addr)
    if len(token) > MAX_TOKEN_LENGTH:
        raise ApiError(404, "callback_not_found", "no callback has this token")
    received_at = now_ms()
    raw = await request.read()  # bounded by the app's client_max_size: 413 beyond it
    content_type = request.headers.get("Content-Type")
    parsed = parse_body(raw, content_type)
    incoming = Incoming(
        token=token,
        received_at=received_at,
        method=request.method,
        content_type=content_type,
        remote_addr=remote_addr,
        headers=visible_headers(request.headers),
        query_string=request.query_string,
        raw=raw,
        correlation_id=correlation_id(parsed, config.callbacks.correlation_fields),
        parsed=parsed,
        dedupe_key=dedupe_key(request.headers),
    )
    result = await request.app[HUB].ingest(incoming)
    return json_response({"ok": True, "delivery_id": result.delivery.id, "duplicate": result.duplicate})


def add_routes(app: web.Application) -> None:
    for method in ("POST", "PUT", "PATCH"):
        app.router.add_route(method, "/cb/{token}", receive)
