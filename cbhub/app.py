"""The application factory: one place that wires config, store, registry, hub and routes, and
that starts and stops them. A runner (the command line, a test) only runs the app."""

from __future__ import annotations

import logging
from typing import AsyncIterator

from aiohttp import web

from cbhub.config import Config
from cbhub.http import api, ingest, inspector, openapi, ops, realtime
from cbhub.http.auth import Authenticator, app_middleware
from cbhub.http.errors import Handler
from cbhub.http.ingest import INGESTS
from cbhub.http.keys import CONFIG, HUB, LIMITER, METRICS, REFUSAL_LIMITER, STREAMS
from cbhub.http.ratelimit import RateLimiter
from cbhub.observe.metrics import Metrics
from cbhub.store import Store, create_store
from cbhub.waiting.hub import Hub
from cbhub.waiting.registry import Registry
from cbhub.waiting.subscriptions import Streams

log = logging.getLogger("cbhub")


MAX_REQUEST_LINE = 96 * 1024


def create_app(config: Config, store: Store | None = None) -> web.Application:
    # One middleware identifies the caller of /v1 routes and renders every refusal. It does
    # nothing for the callback route (filled in by ingest.add_routes): that takes no API key and
    # renders its own errors through the same function.
    authenticator = Authenticator(config.auth.api_keys, config.auth.admin)
    public: set[Handler] = set()
    app = web.Application(
        middlewares=[app_middleware(authenticator, public)],
        client_max_size=config.limits.max_body_bytes,
        # GET /v1/wait names up to 1,000 tokens of at most 64 characters in its query: at most
        # 71 KB of request line (aiohttp's default stops at 8 KB).
        handler_args={"max_line_size": MAX_REQUEST_LINE},
    )
    registry = Registry()
    metrics = Metrics(registry.count_by_kind)
    hub = Hub(config, store or create_store(config, on_commit=metrics.on_commit), registry)
    metrics.count_overdue(lambda: hub.overdue_total)
    app[CONFIG] = config
    app[HUB] = hub
    app[METRICS] = metrics
    app[STREAMS] = Streams(hub.registry, hub.store, config.realtime)
    if config.ingest.rate_per_ip > 0:
        app[LIMITER] = RateLimiter(config.ingest.rate_per_ip, config.ingest.burst)
    if config.ingest.refusal_rate_per_ip > 0:
        app[REFUSAL_LIMITER] = RateLimiter(config.ingest.refusal_rate_per_ip, config.ingest.refusal_burst)
    public.update(ingest.add_routes(app))
    api.add_routes(app)
    ops.add_routes(app)
    openapi.add_routes(app)
    realtime.add_routes(app)
    inspector.add_routes(app)
    app.cleanup_ctx.append(_running)
    app.on_shutdown.append(_answer_waiters)
    return app


async def _running(app: web.Application) -> AsyncIterator[None]:
    """The store open and the hub's sweeps running while the app serves; closed after."""
    hub = app[HUB]
    await hub.store.open()
    await hub.start()
    yield
    await hub.stop()
    await hub.store.close()


async def _answer_waiters(app: web.Application) -> None:
    # Before in-flight requests are awaited: long-polls answer 503 at once, websockets close
    # with 1001 and event streams end, while ingests already submitted go on to commit and
    # answer 200.
    app[HUB].registry.shut_down()
    app[STREAMS].shut_down()


async def stop_gracefully(app: web.Application, timeout: float) -> None:
    """Answer every waiter "come back later", and let the callback requests already arriving
    finish (body, commit, 200) within `timeout`. A runner calls it once it stopped accepting
    connections and before its own cleanup: aiohttp stops reading request bodies once that
    begins."""
    in_flight = app[INGESTS]
    log.info("stopping: %d callback requests in flight", in_flight.count)
    await _answer_waiters(app)
    if not await in_flight.drained(timeout):
        log.warning("stopping with %d callback requests unfinished after %.0f s", in_flight.count, timeout)
