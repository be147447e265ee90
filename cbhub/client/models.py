"""What the client hands back: typed records built from the server's JSON.

Each record keeps the exact JSON it was built from in `raw`, so a caller (or `cbhub show`) can
print the object as the API returned it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The wire's words. The client reads them from the JSON and imports none of the server's
# modules: it needs only aiohttp and orjson.
PENDING, RECEIVED, EXPIRED, CANCELLED = "pending", "received", "expired", "cancelled"
FORM_TYPE = "application/x-www-form-urlencoded"
# How a delivery went, as the server decided when it stored it.
OK, ERROR, UNKNOWN, INVALID = "ok", "error", "unknown", "invalid"


def media_type(content_type: str | None) -> str:
    """The lower-case media type of a Content-Type header ("" when there is none)."""
    return (content_type or "").partition(";")[0].strip().lower()


def parse_time(text: str) -> datetime:
    """An RFC 3339 UTC time as the server writes it ("...T12:00:00.000Z"), timezone-aware."""
    return datetime.fromisoformat(text)


@dataclass(frozen=True, slots=True)
class DeliveryError:
    """What a sender said went wrong: its error code and message, either possibly None."""

    code: str | None
    message: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> DeliveryError | None:
        return None if data is None else cls(code=data.get("code"), message=data.get("message"))

    def __str__(self) -> str:
        return ": ".join(part for part in (self.code, self.message) if part) or "error"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One request a third party made to a callback URL."""

    id: int
    token: str
    received_at: datetime
    method: str
    content_type: str | None
    remote_addr: str | None
    headers: dict[str, str]
    size: int
    body: Any  # a JSON value, form fields as a dict, text, or None (empty or binary)
    body_base64: str | None  # set when the body is binary, or text that could not be decoded
    parse_error: str | None
    query: dict[str, Any]
    correlation_id: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    # Came after its callback closed: kept, but never its result.
    late: bool = False
    # "ok", "error", "unknown" or "invalid"; `error` is set only for "error".
    outcome: str = UNKNOWN
    error: DeliveryError | None = None
    # Why it does not fit its callback's contract; empty: it fits (or there is none).
    problems: tuple[str, ...] = ()
    # What the sender was answered ({"status", "content_type", "body", "headers"}) when a
    # response spec set it; None: cbhub's JSON receipt.
    answered: dict[str, Any] | None = None

    @property
    def invalid(self) -> bool:
        """Stored, but it does not fit the callback's contract: never the result."""
        return bool(self.problems)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Delivery:
        return cls(
            id=data["id"],
            token=data["token"],
            received_at=parse_time(data["received_at"]),
            method=data["method"],
            content_type=data["content_type"],
            remote_addr=data["remote_addr"],
            headers=data["headers"],
            size=data["size"],
            body=data["body"],
            body_base64=data["body_base64"],
            parse_error=data["parse_error"],
            query=data["query"],
            correlation_id=data["correlation_id"],
            raw=data,
            late=data.get("late", False),
            problems=tuple(data.get("problems") or ()),
            answered=data.get("answered"),
            outcome=data.get("outcome", UNKNOWN),
            error=DeliveryError.from_json(data.get("error")),
        )

    @property
    def kind(self) -> str:
        """How the body reads: "empty", "binary", "json", "form" or "text"."""
        if self.size == 0:
            return "empty"
        if self.body_base64 is not None:
            return "binary"
        media = media_type(self.content_type)
        if media == FORM_TYPE and isinstance(self.body, dict):
            return "form"
        # The server parsed JSON when the type says so, or when an untyped body looked like it.
        if self.parse_error is None and (
            media == "application/json" or media.endswith("+json") or (not media and not isinstance(self.body, str))
        ):
            return "json"
        return "text"


@dataclass(frozen=True, slots=True)
class Expected:
    """A callback's progress through its expected set of correlation ids."""

    total: int
    arrived: int
    unexpected: int
    # The first 100 ids that have not arrived, in mint order (None: a count, or a listing);
    # `CbHub.missing` pages through all of them.
    missing: list[str] | None

    @property
    def complete(self) -> bool:
        return self.arrived >= self.total

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Expected:
        return cls(data["total"], data["arrived"], data["unexpected"], data.get("missing"))


@dataclass(frozen=True, slots=True)
class Callback:
    """A minted callback URL and its state when it was read; `result` is its latest delivery."""

    token: str
    url: str
    status: str
    created_at: datetime
    expires_at: datetime
    label: str | None
    group: str | None
    metadata: dict[str, Any]
    deliveries: int
    result: Delivery | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    # Deliveries kept after it closed (each `Delivery.late`).
    late_deliveries: int = 0
    # How many of its deliveries did not fit its contract (kept, never its result).
    invalid_deliveries: int = 0
    # Its result's outcome and error; None while it has no result.
    outcome: str | None = None
    error: DeliveryError | None = None
    # Its expected set, when minted with `expect` (None: the first delivery completes it).
    expected: Expected | None = None
    # What its deliveries must look like, as given at mint (None: anything).
    contract: dict[str, Any] | None = None
    # What its URL answers a sender, as minted (`response=`); None: the server's default.
    response: dict[str, Any] | None = None
    # Its settle window in seconds, and when its latest delivery settled (None until then, and
    # again after a newer delivery: the latest wins).
    settle: float | None = None
    settled_at: datetime | None = None
    # The seconds it was expected within, and whether it was still pending then (stays True).
    expect_within: int | None = None
    overdue: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Callback:
        result = data.get("result")
        expected = data.get("expected")
        return cls(
            token=data["token"],
            url=data["callback_url"],
            status=data["status"],
            created_at=parse_time(data["created_at"]),
            expires_at=parse_time(data["expires_at"]),
            label=data["label"],
            group=data["group"],
            metadata=data["metadata"],
            deliveries=data["deliveries"],
            result=Delivery.from_json(result) if result is not None else None,
            raw=data,
            late_deliveries=data.get("late_deliveries", 0),
            invalid_deliveries=data.get("invalid_deliveries", 0),
            outcome=data.get("outcome"),
            error=DeliveryError.from_json(data.get("error")),
            expected=Expected.from_json(expected) if expected is not None else None,
            contract=data.get("contract"),
            response=data.get("response"),
            settle=data.get("settle"),
            settled_at=parse_time(data["settled_at"]) if data.get("settled_at") else None,
            expect_within=data.get("expect_within"),
            overdue=data.get("overdue", False),
        )


# The kinds of TimerEvent.
SETTLED, OVERDUE = "settled", "overdue"


@dataclass(frozen=True, slots=True)
class TimerEvent:
    """A callback's timer, as `CbHub.events` streams it: "settled" (its latest delivery stayed
    the latest for its settle window: that one is final) or "overdue" (still pending when it
    was expected, see `expect_within`; it still takes deliveries)."""

    kind: str
    token: str
    # For "settled": when, and the id of the delivery that settled.
    settled_at: datetime | None
    delivery_id: int | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> TimerEvent:
        settled_at = frame.get("settled_at")
        return cls(
            kind=frame["type"],
            token=frame["token"],
            settled_at=parse_time(settled_at) if settled_at else None,
            delivery_id=frame.get("delivery_id"),
            raw=frame,
        )


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    """One page of `GET /v1/deliveries`: pass `next_after` as `after` for the next one."""

    deliveries: list[Delivery]
    next_after: int


@dataclass(frozen=True, slots=True)
class GroupError:
    """A callback of a group whose result is an error."""

    token: str
    label: str | None
    correlation_id: str | None
    error: DeliveryError | None
    delivery_id: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GroupError:
        return cls(
            token=data["token"],
            label=data["label"],
            correlation_id=data["correlation_id"],
            error=DeliveryError.from_json(data["error"]),
            delivery_id=data["delivery_id"],
        )


@dataclass(frozen=True, slots=True)
class GroupStatus:
    """A group's summary: its callbacks by status; those with a result by outcome (`ok`,
    `error`, `unknown`); the first 100 errors and pending tokens."""

    group: str
    total: int
    pending: int
    received: int
    expired: int
    cancelled: int
    ok: int = 0
    error: int = 0
    unknown: int = 0
    errors: list[GroupError] = field(default_factory=list)
    pending_tokens: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GroupStatus:
        outcomes = data.get("outcomes", {})
        return cls(
            group=data["group"],
            total=data["total"],
            pending=data[PENDING],
            received=data[RECEIVED],
            expired=data[EXPIRED],
            cancelled=data[CANCELLED],
            ok=outcomes.get(OK, 0),
            error=outcomes.get(ERROR, 0),
            unknown=outcomes.get(UNKNOWN, 0),
            errors=[GroupError.from_json(item) for item in data.get("errors", [])],
            pending_tokens=list(data.get("pending_tokens", [])),
            raw=data,
        )

    @property
    def all_ok(self) -> bool:
        """Every callback of the group has a result, and every result is ok."""
        return self.ok == self.total
