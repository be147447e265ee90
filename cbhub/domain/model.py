"""The records cbhub keeps and their JSON shape, shared by the store, the registry and HTTP.

Times are integer milliseconds since the epoch inside cbhub and RFC 3339 UTC strings outside.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from cbhub.domain.bodies import FormScan, ParsedBody, parse_body
from cbhub.domain.expectations import Contract, Expect, Expected
from cbhub.domain.outcomes import UNKNOWN, OutcomeRule

if TYPE_CHECKING:
    from cbhub.domain.responses import Answer, ResponseSpec
    from cbhub.domain.signatures import VerifySpec

PENDING = "pending"
RECEIVED = "received"
EXPIRED = "expired"
CANCELLED = "cancelled"
STATUSES = (PENDING, RECEIVED, EXPIRED, CANCELLED)
TERMINAL = (EXPIRED, CANCELLED)

# The kind of Event telling that a callback was minted (the others: "delivery", "status").
CREATED = "created"
# The kinds of Event a callback's timers raise (see domain/timing.py): its latest delivery
# stayed the latest for its settle window; it was still pending when expected to be done.
SETTLED = "settled"
OVERDUE = "overdue"

# Headers a client API reader never sees: they carry the sender's credentials.
HIDDEN_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
# How much of a token a log line may show: enough to tell callbacks apart, too little to use.
LOGGED_TOKEN_CHARS = 6


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def short_token(token: str) -> str:
    """A token as log lines show it."""
    return token[:LOGGED_TOKEN_CHARS] + "…" if len(token) > LOGGED_TOKEN_CHARS else token


def rfc3339(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@dataclass(slots=True)
class Delivery:
    """One request received on a callback URL, exactly as it came."""

    id: int
    token: str
    received_at: int
    method: str
    content_type: str | None
    remote_addr: str | None
    headers: dict[str, str]
    query: dict[str, Any]
    raw: bytes
    correlation_id: str | None
    group: str | None = None
    # Arrived after its callback stopped accepting deliveries (expired, cancelled, or received
    # and past its expiry): kept, since most senders never retry, but never the result.
    late: bool = False
    # What keeps it from fitting its callback's contract (empty: it fits, or there is none).
    # Such a delivery is "invalid": stored, but never the result and never counted as arrived.
    problems: tuple[str, ...] = ()
    # What the sender was answered when it was not cbhub's JSON receipt (a response spec).
    answered: Answer | None = None
    # How it went (cbhub.domain.outcomes), decided once when it was stored.
    outcome: str = UNKNOWN
    error: dict[str, str | None] | None = None
    _parsed: ParsedBody | None = field(default=None, repr=False)
    _json: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def parsed(self) -> ParsedBody:
        if self._parsed is None:
            self._parsed = parse_body(self.raw, self.content_type)
        return self._parsed

    def to_json(self) -> dict[str, Any]:
        # Cached: one delivery is often rendered for many waiters.
        if self._json is None:
            parsed = self.parsed
            self._json = {
                "id": self.id,
                "token": self.token,
                "received_at": rfc3339(self.received_at),
                "method": self.method,
                "content_type": self.content_type,
                "remote_addr": self.remote_addr,
                "headers": self.headers,
                "size": len(self.raw),
                "body": parsed.body,
                "body_base64": parsed.body_base64,
                "parse_error": parsed.parse_error,
                "query": self.query,
                "correlation_id": self.correlation_id,
                "late": self.late,
                "problems": list(self.problems),
                "answered": self.answered.to_json() if self.answered is not None else None,
                "outcome": self.outcome,
                "error": self.error,
            }
        return self._json


@dataclass(slots=True)
class Callback:
    """A minted callback URL and its state; `result` is its latest delivery, when loaded."""

    token: str
    status: str
    created_at: int
    expires_at: int
    label: str | None
    group: str | None
    metadata: dict[str, Any]
    deliveries: int = 0
    result: Delivery | None = None
    # Deliveries kept after it closed (see Delivery.late); not counted in `deliveries`.
    late_deliveries: int = 0
    # Deliveries that did not fit its contract (see Delivery.problems); counted in `deliveries`.
    invalid_deliveries: int = 0
    # The name of the API key that minted it; None when minted without keys.
    created_by: str | None = None
    # Guards on its public URL, set at mint: source networks (CIDRs) and a signature scheme.
    allow_ips: tuple[str, ...] = ()
    verify: VerifySpec | None = None
    # Set at mint: the set of correlation ids it waits for, and what a delivery must look like.
    expected: Expected | None = None
    contract: Contract | None = None
    # What its URL answers a sender (None: cbhub's JSON receipt, or the server's default).
    response: ResponseSpec | None = None
    # Timing, set at mint (domain/timing.py): the settle window in ms and when the latest
    # delivery settled (None until it has; a newer delivery makes it None again: latest wins);
    # the seconds within which it is expected, and whether it was still pending then.
    settle_ms: int | None = None
    settled_at: int | None = None
    expect_within: int | None = None
    overdue: bool = False
    # Its result's outcome and error (None while it has no result), and its own outcome rule,
    # given at mint.
    outcome: str | None = None
    error: dict[str, str | None] | None = None
    outcome_rule: OutcomeRule | None = None

    def to_json(self, base_url: str) -> dict[str, Any]:
        return {
            "token": self.token,
            "status": self.status,
            "callback_url": f"{base_url}/cb/{self.token}",
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
            "label": self.label,
            "group": self.group,
            "metadata": self.metadata,
            "deliveries": self.deliveries,
            "late_deliveries": self.late_deliveries,
            "invalid_deliveries": self.invalid_deliveries,
            "result": self.result.to_json() if self.result is not None else None,
            "created_by": self.created_by,
            "allow_ips": list(self.allow_ips),
            "verify": self.verify.describe() if self.verify is not None else None,
            "expected": self.expected.to_json() if self.expected is not None else None,
            "contract": self.contract.to_json() if self.contract is not None else None,
            "response": self.response.to_json() if self.response is not None else None,
            "settle": self.settle_ms / 1000 if self.settle_ms is not None else None,
            "settled_at": rfc3339(self.settled_at) if self.settled_at is not None else None,
            "expect_within": self.expect_within,
            "overdue": self.overdue,
            "outcome": self.outcome,
            "error": self.error,
            "outcome_rule": self.outcome_rule.to_json() if self.outcome_rule is not None else None,
        }

    def closed(self, at_ms: int) -> bool:
        """True once no delivery can arrive any more."""
        return self.status in TERMINAL or self.expires_at <= at_ms


@dataclass(slots=True)
class Incoming:
    """A request to a callback URL, read and ready to be stored. Not frozen, like the other
    records made for every request (Event, IngestResult): a frozen dataclass sets each field
    through object.__setattr__, several times the cost of a plain slot; none is changed after
    it is made."""

    token: str
    received_at: int
    method: str
    content_type: str | None
    remote_addr: str | None
    headers: dict[str, str]
    query_string: str
    raw: bytes
    correlation_id: str | None
    parsed: ParsedBody | None  # None: parsed when first read
    # The sender's message id (webhook-id, svix-id or Idempotency-Key): a retry is stored once.
    dedupe_key: str | None
    # A form body's fields that the correlation id and the outcome rules read, found on arrival.
    scanned: FormScan | None = None


@dataclass(frozen=True, slots=True)
class MintSpec:
    ttl: int
    label: str | None
    group: str | None
    metadata: dict[str, Any]
    created_by: str | None = None
    allow_ips: tuple[str, ...] = ()
    verify: VerifySpec | None = None
    expect: Expect | None = None
    contract: Contract | None = None
    response: ResponseSpec | None = None
    # The settle window in ms and the seconds within which it is expected (None: neither).
    settle_ms: int | None = None
    expect_within: int | None = None
    outcome_rule: OutcomeRule | None = None


@dataclass(slots=True)
class Event:
    """What the registry carries to waiters: a new callback, a new delivery, or a status change."""

    kind: str  # "delivery" | "status" | CREATED | SETTLED | OVERDUE
    callback: Callback
    delivery: Delivery | None = None

    @property
    def token(self) -> str:
        return self.callback.token

    @property
    def group(self) -> str | None:
        return self.callback.group

    @property
    def correlation_id(self) -> str | None:
        if self.delivery is not None:
            return self.delivery.correlation_id
        # A settling is about the latest delivery: it reaches who follows that one's correlation id.
        if self.kind == SETTLED and self.callback.result is not None:
            return self.callback.result.correlation_id
        return None
