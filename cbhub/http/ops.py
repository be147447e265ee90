"""Operations routes: is the process alive, can the store be used."""

from __future__ import annotations

from aiohttp import web

from cbhub.http.errors import error_response, json_response
from cbhub.http.keys import HUB


async def healthz(request: web.Request) -> web.Response:
    try:
        await request.app[HUB].store.ping()
    except Exception as exc:  # any failure to answer is "unhealthy", never a 500 page
        return error_response(503, "store_unavailable", f"the store does not answer: {exc}")
    return json_response({"status": "ok"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz, allow_head=True)
