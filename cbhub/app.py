"""The application factory: one place that wires config, store, registry, hub and routes."""

from __future__ import annotations

from aiohttp import web

from cbhub.config import Config
from cbhub.http import api, ingest, inspector, openapi, ops, realtime
from cbhub.http.auth import Authenticator, auth_middleware
from cbhub.http.errors import error_middleware
from cbhub.http.keys import CONFIG, HUB, LIMITER, METRICS, REFUSAL_LIMITER, STREAMS
from cbhub.hub import Hub
from cbhub.metrics import Metrics
from cbhub.ratelimit import RateLimiter
from cbhub.registry import Registry
from cbhub.store import Store, create_store
from cbhub.subscriptions import Streams


def create_app(config: Config, store: Store | None = None) -> web.Application:
    # The error middleware is outermost: it renders the refusals of the ones inside it.
    authenticator = Authenticator(config.auth.api_keys, config.auth.admin)
    app = web.Application(
        middlewares=[error_middleware, auth_middleware(authenticator)],
        client_max_size=config.limits.max_body_bytes,
    )
    registry = Registry()
    metrics = Metrics(registry.count_by_kind)
    hub = Hub(config, store or create_store(config, on_commit=metrics.on_commit), registry)
    app[CONFIG] = config
    app[HUB] = hub
    app[METRICS] = metrics
    app[STREAMS] = Streams(hub.registry, hub.store, config.realtime)
    if config.ingest.rate_per_ip > 0:
        app[LIMITER] = RateLimiter(config.ingest.rate_per_ip, config.ingest.burst)
    if config.ingest.refusal_rate_per_ip > 0:
        app[REFUSAL_LIMITER] = RateLimiter(config.ingest.refusal_rate_per_ip, config.ingest.refusal_burst)
    ingest.add_routes(app)
    api.add_routes(app)
    ops.add_routes(app)
    openapi.add_routes(app)
    realtime.add_routes(app)
    inspector.add_routes(app)
    app.on_startup.append(_start)
    app.on_shutdown.append(_answer_waiters)
    app.on_cleanup.append(_stop)
    return app


async def _start(app: web.Application) -> None:
    hub = app[HUB]
    await hub.store.open()
    await hub.start()


async def _answer_waiters(app: web.Application) -> None:
    # Before in-flight requests are awaited: long-polls answer 503 at once, websockets close
    # with 1001 and event streams end, while ingests already submitted go on to commit and
    # answer 200.
    await app[HUB].stop()
    app[STREAMS].shut_down()


async def _stop(app: web.Application) -> None:
    await app[HUB].store.close()
