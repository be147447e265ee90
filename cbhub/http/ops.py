"""Operations routes: is the process alive, can the store be used."""

from __future__ import annotations

import hmac

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cbhub.errors import InvalidMetricsToken, MissingMetricsToken, StoreUnavailable
from cbhub.http.errors import error_response, json_response
from cbhub.http.keys import CONFIG, HUB, METRICS


async def healthz(request: web.Request) -> web.Response:
    try:
        await request.app[HUB].ping()
    except Exception as exc:  # any failure to answer is "unhealthy", never a 500 page
        return error_response(StoreUnavailable(str(exc), f"the store does not answer: {exc}"))
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready means writable: after a failed commit, not ready until a write commits again (the
    hub probes with one four times a second meanwhile)."""
    if not request.app[HUB].writable:
        # Answered, not raised: a probe asking every few seconds is not worth a log line each.
        return error_response(StoreUnavailable("not ready", "the last commit failed; waiting for one to succeed"))
    return json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    token = request.app[CONFIG].metrics.token
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not given:
            raise MissingMetricsToken()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise InvalidMetricsToken()
    registry = request.app[METRICS]
    registry.set_callbacks(await request.app[HUB].status_counts())
    response = web.Response(body=generate_latest(registry.registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", readyz, allow_head=True)
