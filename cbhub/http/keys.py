"""Typed keys for what the app and each request carry, shared by every route module."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from cbhub.config import Config
from cbhub.http.ratelimit import RateLimiter
from cbhub.observe.metrics import Metrics
from cbhub.waiting.hub import Hub
from cbhub.waiting.subscriptions import Streams

# The idempotency scope of requests made without keys.
ANONYMOUS_SCOPE = ""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a client API request, as the auth middleware identified them."""

    name: str | None  # the API key's name; None when no keys are configured
    admin: bool

    @property
    def owner(self) -> str | None:
        """The owner filter for this caller's reads: None (everything) for admins."""
        return None if self.admin else self.name

    @property
    def scope(self) -> str:
        """Where this caller's idempotency keys are unique."""
        return self.name if self.name is not None else ANONYMOUS_SCOPE


ANONYMOUS = Caller(None, admin=True)

CONFIG = web.AppKey("config", Config)
HUB = web.AppKey("hub", Hub)
METRICS = web.AppKey("metrics", Metrics)
STREAMS = web.AppKey("streams", Streams)
# The per-address limit on /cb; absent when ingest.rate_per_ip is 0.
LIMITER = web.AppKey("limiter", RateLimiter)
# The per-address limit on refused /cb requests; absent when ingest.refusal_rate_per_ip is 0.
REFUSAL_LIMITER = web.AppKey("refusal_limiter", RateLimiter)
# Set by the auth middleware on every /v1 request.
CALLER = web.RequestKey("caller", Caller)
# Set by the callback route: the sender's address as client_address found it (None: unknown
# behind a trusted proxy), so the access log does not look it up again.
CLIENT_ADDRESS: web.RequestKey[str | None] = web.RequestKey("client_address")


def caller(request: web.Request) -> Caller:
    return request[CALLER]


def base_url(request: web.Request) -> str:
    """Where callback URLs point: server.public_url, else the address this request came to."""
    configured = request.app[CONFIG].server.public_url
    return configured or f"{request.scheme}://{request.host}"
