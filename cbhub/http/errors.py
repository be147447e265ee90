"""One error shape, rendered in one place: {"error": {"code": ..., "message": ...}}."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Mapping

import orjson
from aiohttp import web

from cbhub.http.keys import CALLER
from cbhub.hub import GroupNotFound
from cbhub.logs import loggable_path
from cbhub.registry import ShuttingDown
from cbhub.store import (
    AddressNotAllowed,
    CallbackClosed,
    CallbackNotFound,
    IdempotencyConflict,
    SignatureInvalid,
    StoreUnavailable,
)

log = logging.getLogger("cbhub.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's own HTTP errors (no route, wrong method, body too large) under stable codes.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def _from_domain(exc: Exception) -> ApiError | None:
    """The HTTP answer to an error the hub or the store raised on purpose."""
    if isinstance(exc, CallbackNotFound):
        return ApiError(404, "callback_not_found", "no callback has this token")
    if isinstance(exc, CallbackClosed):
        return ApiError(410, f"callback_{exc.status}", f"this callback is {exc.status} and accepts no more deliveries")
    if isinstance(exc, GroupNotFound):
        return ApiError(404, "group_not_found", "no callback belongs to this group")
    if isinstance(exc, AddressNotAllowed):
        return ApiError(403, "address_not_allowed", "this address may not deliver to this callback")
    if isinstance(exc, SignatureInvalid):
        return ApiError(401, "signature_invalid", f"signature verification failed: {exc.reason}")
    if isinstance(exc, IdempotencyConflict):
        return ApiError(
            422, "idempotency_key_reused", "this Idempotency-Key was already used with a different request"
        )
    if isinstance(exc, StoreUnavailable):
        return ApiError(503, "store_unavailable", "the store cannot commit right now; retry", {"Retry-After": "1"})
    if isinstance(exc, ShuttingDown):
        return ApiError(503, "shutting_down", "the server is restarting; retry", {"Retry-After": "1"})
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        err = exc
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        code = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
        return error_response(exc.status, code, exc.reason, headers)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        mapped = _from_domain(exc)
        if mapped is None:
            log.exception("unhandled error on %s %s", request.method, loggable_path(request))
            return error_response(500, "internal_error", "internal server error")
        err = mapped
    level = logging.WARNING if err.status >= 500 else logging.DEBUG
    who = request.get(CALLER)
    by = f" to key {who.name}" if who is not None and who.name is not None else ""
    log.log(level, "%s %s answered %d %s%s", request.method, loggable_path(request), err.status, err.code, by)
    return error_response(err.status, err.code, err.message, err.headers)
