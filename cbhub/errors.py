"""Every error cbhub raises on purpose, in one tree.

Each class carries its HTTP status, its stable `code` and a default message, so the web layer
renders any of them in one place (an HTTP answer or a websocket error frame alike) and the
metrics count each under one `label`. The store, the hub and the feeds raise them knowing
nothing of HTTP beyond the number. An exception outside this tree is a bug: a 500 and a
logged traceback.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

from cbhub.domain.model import short_token


class CbhubError(Exception):
    status: int = 500
    code: str = "internal_error"
    message: str = "internal server error"
    # What the deliveries metric counts a refused callback request under.
    label: ClassVar[str] = "error"

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        if message is not None:
            self.message = message
        if code is not None:
            self.code = code
        super().__init__(self.message)

    @property
    def headers(self) -> Mapping[str, str]:
        """Headers the HTTP answer carries (Retry-After, WWW-Authenticate, ...)."""
        return {}

    def to_json(self) -> dict[str, Any]:
        """The body of every error answer: {"error": {"code": ..., "message": ...}}."""
        return {"error": {"code": self.code, "message": self.message}}


# 400: the request is malformed. Each names what is wrong and never echoes a secret.


class BadRequest(CbhubError):
    status = 400
    code = "bad_request"
    message = "bad request"


class InvalidField(BadRequest):
    """A field of a JSON body (or of a websocket frame) has a value that cannot be used."""

    code = "invalid_field"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")


class InvalidParameter(BadRequest):
    code = "invalid_parameter"

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")


class InvalidHeader(BadRequest):
    code = "invalid_header"

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")


class UnknownField(BadRequest):
    code = "unknown_field"

    def __init__(self, name: str, allowed: frozenset[str]) -> None:
        super().__init__(f"{name[:40]}: unknown field (allowed: {', '.join(sorted(allowed))})")


class InvalidJson(BadRequest):
    code = "invalid_json"


class InvalidBody(BadRequest):
    code = "invalid_body"
    message = "the body must be a JSON object"


class InvalidFrame(BadRequest):
    code = "invalid_frame"


class SubscribeRefused(BadRequest):
    """A websocket subscribe the connection cannot take (too many, a name in use, ...)."""


# 401, 403: who may do it.


class Unauthorized(CbhubError):
    status = 401
    code = "unauthorized"
    realm = "cbhub"

    @property
    def headers(self) -> Mapping[str, str]:
        invalid = ', error="invalid_token"' if self.code.startswith("invalid") else ""
        return {"WWW-Authenticate": f'Bearer realm="{self.realm}"{invalid}'}


class MissingApiKey(Unauthorized):
    code = "missing_api_key"
    message = "this route needs an API key: 'Authorization: Bearer <API key>'"


class InvalidApiKey(Unauthorized):
    code = "invalid_api_key"
    message = "this API key is not valid"


class MissingMetricsToken(Unauthorized):
    code = "missing_metrics_token"
    message = "GET /metrics needs the metrics token: 'Authorization: Bearer <token>'"
    realm = "cbhub metrics"


class InvalidMetricsToken(MissingMetricsToken):
    code = "invalid_metrics_token"
    message = "this metrics token is not valid"


class DeliveryRefused(CbhubError):
    """A guard on a callback URL refused the request: nothing was stored, nobody is woken."""

    status = 403
    code = "delivery_refused"
    message = "a guard of this callback refused the request"

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason
        self.args = (reason,)


class AddressNotAllowed(DeliveryRefused):
    """The sender's address is outside an allowlist. The answer does not say which address."""

    code = "address_not_allowed"
    message = "this address may not deliver to this callback"
    label = "address_not_allowed"


class SignatureInvalid(DeliveryRefused):
    """The request does not carry a valid signature made with the callback's secret."""

    status = 401
    code = "signature_invalid"
    label = "signature_invalid"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.message = f"signature verification failed: {reason}"


# 404, 410: what is not there (another key's callback is answered as a missing one).


class NotFound(CbhubError):
    status = 404
    code = "not_found"
    message = "not found"
    label = "not_found"


class CallbackNotFound(NotFound):
    code = "callback_not_found"
    message = "no callback has this token"

    def __init__(self, token: str = "", message: str | None = None) -> None:
        super().__init__(message)
        # Shortened: an exception's text can end up in a log line.
        self.args = (short_token(token),)


class GroupNotFound(NotFound):
    code = "group_not_found"
    message = "no callback belongs to this group"


class DeliveryNotFound(NotFound):
    code = "delivery_not_found"
    message = "no delivery has this id"


class ExpectedIdNotFound(NotFound):
    """The `after` cursor of a page of missing ids is not an id of the callback's expected set."""

    code = "expected_id_not_found"
    message = "after: not a correlation id of this callback's expected set"


class SubscriptionNotFound(NotFound):
    code = "subscription_not_found"

    def __init__(self, name: object) -> None:
        super().__init__(f"no subscription is named {name!r}")


class CallbackClosed(CbhubError):
    """The callback no longer accepts deliveries: it expired or was cancelled."""

    status = 410
    label = "closed"

    def __init__(self, status: str) -> None:
        super().__init__(f"this callback is {status} and accepts no more deliveries", code=f"callback_{status}")
        self.callback_status = status


class HandshakeNotAllowed(CbhubError):
    """A GET to a callback URL whose mint set no echo: only echo answers a verification GET."""

    status = 405
    code = "method_not_allowed"
    message = 'this callback URL takes POST, PUT and PATCH; GET only with a "response": {"echo": ...}'
    label = "method_not_allowed"

    @property
    def headers(self) -> Mapping[str, str]:
        return {"Allow": "POST, PUT, PATCH"}


# 413, 422, 426, 429: refused as asked.


class PayloadTooLarge(CbhubError):
    status = 413
    code = "payload_too_large"
    message = "the body is larger than limits.max_body_bytes"
    label = "too_large"


class IdempotencyConflict(CbhubError):
    """An Idempotency-Key was reused with a different request."""

    status = 422
    code = "idempotency_key_reused"
    message = "this Idempotency-Key was already used with a different request"


class ContractViolation(CbhubError):
    """A delivery that does not fit its callback's contract, which says `reject`: it WAS stored
    (as invalid, with its problems); the sender is told, so that a sender that retries can. The
    message names the stored delivery and its problems, in the one error shape."""

    status = 422
    code = "contract_violation"
    message = "the request does not fit this callback's contract; it was stored as invalid"
    label = "contract_violation"

    def __init__(self, problems: tuple[str, ...] = (), delivery_id: int | None = None) -> None:
        stored = f"stored as invalid delivery {delivery_id}" if delivery_id is not None else "stored as invalid"
        super().__init__(f"the request does not fit this callback's contract ({stored}): {'; '.join(problems)}")
        self.problems = problems
        self.delivery_id = delivery_id


class WebsocketRequired(CbhubError):
    status = 426
    code = "websocket_required"
    message = "this route speaks WebSocket: send an Upgrade: websocket request"

    @property
    def headers(self) -> Mapping[str, str]:
        return {"Upgrade": "websocket", "Connection": "Upgrade"}


class RateLimited(CbhubError):
    status = 429
    code = "rate_limited"
    label = "rate_limited"

    def __init__(self, why: str, wait: float) -> None:
        super().__init__(f"{why}; retry after the Retry-After delay")
        self.wait = wait

    @property
    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.wait)))}


# 503: cbhub cannot do it now; nothing was done, and a retry may succeed.


class Unavailable(CbhubError):
    status = 503
    code = "unavailable"
    message = "cbhub cannot do this right now; retry"

    @property
    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": "1"}


class StoreUnavailable(Unavailable):
    """The store could not commit (disk full, read-only, locked): nothing was written; retry
    later. `reason` says why, for the log (it is the exception's text); clients are told less."""

    code = "store_unavailable"
    message = "the store cannot commit right now; retry"
    label = "store_unavailable"

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.args = (reason,)


class ShuttingDown(Unavailable):
    """The server is stopping: whoever waits is answered "come back later"."""

    code = "shutting_down"
    message = "the server is restarting; retry"
    label = "shutting_down"


# Not an answer to a request: the store cannot be used as configured (at start, or by a
# command such as backup); the command line says why and exits.


class StoreError(CbhubError):
    code = "store_error"


class SchemaTooNew(StoreError):
    """The database was written by a newer cbhub; it is left untouched."""

    code = "schema_too_new"
