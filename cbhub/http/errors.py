"""One error shape, rendered in one place: {"error": {"code": ..., "message": ...}}."""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Mapping

import orjson
from aiohttp import web

from cbhub.errors import CbhubError, PayloadTooLarge
from cbhub.http.keys import CALLER
from cbhub.observe.logs import loggable_path

log = logging.getLogger("cbhub.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's own HTTP errors (no route, wrong method) under stable codes.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
}


class HttpRefusal(CbhubError):
    """One of aiohttp's own refusals (no such route, a method the route does not take)."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status
        self._headers = headers or {}

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers


def from_http(exc: web.HTTPException) -> CbhubError:
    if exc.status == 413:
        return PayloadTooLarge()
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return HttpRefusal(exc.status, _HTTP_CODES.get(exc.status, f"http_{exc.status}"), exc.reason, headers)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def error_response(error: CbhubError) -> web.Response:
    """The one HTTP answer to any error cbhub raises on purpose."""
    return json_response(error.to_json(), status=error.status, headers=error.headers)


def error_frame(name: Any, error: CbhubError) -> dict[str, Any]:
    """The same error as a websocket message, naming the subscription it concerns."""
    return {"type": "error", "id": name, **error.to_json()}


def error_answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to `exc`, raised while handling `request`: the app middleware's, and the
    callback route's own (which runs without middlewares)."""
    if isinstance(exc, CbhubError):
        error = exc
    elif isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return error_response(from_http(exc))
    else:
        log.error("unhandled error on %s %s", request.method, loggable_path(request), exc_info=exc)
        return error_response(CbhubError())
    # The server's own faults are worth an operator's eye; a client's mistakes are not.
    level = logging.WARNING if error.status >= 500 else logging.DEBUG
    who = request.get(CALLER)
    by = f" to key {who.name}" if who is not None and who.name is not None else ""
    log.log(level, "%s %s answered %d %s%s", request.method, loggable_path(request), error.status, error.code, by)
    return error_response(error)
