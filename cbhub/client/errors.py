"""The client's exceptions, one per kind of answer a caller handles differently.

The server names every error with a stable code ({"error": {"code", "message"}}); `from_response`
turns that code (or, failing one, the HTTP status) into the class a caller can catch.
Waiting past a deadline raises the built-in `TimeoutError`, as asyncio does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cbhub.client.models import Callback


class CbHubError(Exception):
    """Any error the cbhub server answered, or failure to reach it."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class InvalidRequest(CbHubError):
    """The server refused the request as written (400, 422): retrying it unchanged will not help."""


class Unauthorized(CbHubError):
    """The API key is missing, wrong, or lacks the right (401, 403)."""


class NotFound(CbHubError, LookupError):
    """No callback (or delivery, or group) has this name."""


class Unavailable(CbHubError):
    """The server cannot answer right now (503: restarting, store busy; or a proxy's 502, 504);
    retrying after a pause is expected to work."""

    def __init__(
        self, message: str, status: int | None = None, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status, code)
        self.retry_after = retry_after


class Unreachable(Unavailable):
    """No answer at all: connection refused or reset, DNS failure, a read that timed out."""


class NoWebSocket(CbHubError):
    """The server does not offer the websocket API (`GET /v1/ws`): a version from before it, or a
    proxy in front that does not pass websocket upgrades on. Long-poll still works."""


class CallbackClosed(CbHubError):
    """The callback can receive no more deliveries, and none is left to return."""

    def __init__(
        self, message: str, callback: Callback | None = None, code: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message, status, code)
        self.callback = callback


class Expired(CallbackClosed):
    """The callback reached its expiry without (further) delivery."""


class Cancelled(CallbackClosed):
    """The callback was cancelled."""


# 503 is cbhub's own "come back later"; 502 and 504 are what a proxy in front says meanwhile.
RETRYABLE_STATUSES = (502, 503, 504)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare for us; the caller's backoff applies


def from_response(status: int, payload: Any, retry_after: str | None = None) -> CbHubError:
    """The exception for an error answer; `payload` is its decoded JSON, or its text."""
    code: str | None = None
    message = f"HTTP {status}"
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        code = payload["error"].get("code")
        message = payload["error"].get("message") or message
    elif isinstance(payload, str) and payload.strip():
        message = f"HTTP {status}: {payload.strip()[:200]}"
    if code == "callback_expired":
        return Expired(message, code=code, status=status)
    if code == "callback_cancelled":
        return Cancelled(message, code=code, status=status)
    if status == 404:
        return NotFound(message, status, code)
    if status in (401, 403):
        return Unauthorized(message, status, code)
    if status in RETRYABLE_STATUSES:
        return Unavailable(message, status, code, _retry_after(retry_after))
    if 400 <= status < 500:
        return InvalidRequest(message, status, code)
    return CbHubError(message, status, code)


def unreachable(base_url: str, exc: BaseException) -> Unreachable:
    """The error for a server that did not answer at all (`exc`: what the connection raised)."""
    reason = str(exc) or type(exc).__name__
    return Unreachable(f"cannot reach cbhub at {base_url}: {reason}")
