"""The store interface: what any backend promises. It knows nothing of HTTP or waiters."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, Sequence

from cbhub.domain.expectations import ContractCheck
from cbhub.domain.filters import CallbackFilter, DeliveryFilter
from cbhub.domain.guards import Guard
from cbhub.domain.model import Callback, Delivery, Event, Incoming, MintSpec
from cbhub.domain.responses import Answer, ResponseSpec

IDEMPOTENCY_WINDOW_MS = 24 * 3600 * 1000
# The most errors and pending tokens a group summary lists.
GROUP_LIST_LIMIT = 100


@dataclass(frozen=True, slots=True)
class GroupError:
    """A callback of a group whose result is an error."""

    token: str
    label: str | None
    correlation_id: str | None
    error: dict[str, str | None] | None
    delivery_id: int

    def to_json(self) -> dict[str, object]:
        return {
            "token": self.token,
            "label": self.label,
            "correlation_id": self.correlation_id,
            "error": self.error,
            "delivery_id": self.delivery_id,
        }


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """A group's callbacks by status, those with a result by its outcome, and (when asked
    for) the first errors and pending tokens, oldest first."""

    counts: dict[str, int]
    outcomes: dict[str, int]
    errors: list[GroupError]
    pending_tokens: list[str]
    # How many turned overdue (expect_within), whatever their status now.
    overdue: int = 0


@dataclass(slots=True)
class IngestResult:
    delivery: Delivery
    callback: Callback  # after this delivery, with `result` set
    duplicate: bool  # a sender's retry of a message already stored
    # What the sender is answered (None: cbhub's JSON receipt); for a duplicate, this request's.
    answered: Answer | None = None


@dataclass(frozen=True, slots=True)
class CallbackPage:
    """Callbacks newest first; `next_before` is the cursor to the next (older) page, None
    when there is none."""

    callbacks: list[Callback]
    next_before: int | None


def _ignore(event: Event) -> None:
    pass


def _always() -> bool:
    return True


class Store(abc.ABC):
    """Every write is durable (committed) when its coroutine returns."""

    # Told every committed event; see announce_to.
    _publish: Callable[[Event], None] = staticmethod(_ignore)
    # Whether anyone may want events now; see announce_to.
    _listening: Callable[[], bool] = staticmethod(_always)

    def announce_to(self, publish: Callable[[Event], None], listening: Callable[[], bool] | None = None) -> None:
        """Have `publish` told every delivery and every closing (cancel, expiry) committed from
        now on, each once, in commit order (delivery ids ascending), before the write that made
        it returns. Where several processes share one database, the events committed by the
        others are told too: this is how a waiter on one instance hears of a callback posted to
        another. `listening()`, when given, says whether anyone subscribes at the moment a
        commit is announced: a store may then skip making events nobody would be told of (a
        waiter registered later reads the commit). Call it before open()."""
        self._publish = publish
        if listening is not None:
            self._listening = listening

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, and migrate the schema forward; raises SchemaTooNew."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish the writes already submitted, then disconnect."""

    @property
    @abc.abstractmethod
    def writable(self) -> bool:
        """False from a failed commit until a write probe (probe_write) commits: a commit that
        wrote nothing (only refusals or duplicates) proves nothing."""

    # Writes

    @abc.abstractmethod
    async def mint(
        self,
        specs: list[MintSpec],
        now: int,
        idempotency: tuple[str, str, str] | None = None,
    ) -> tuple[list[Callback], bool]:
        """Create callbacks in one transaction; returns them and whether they are new.

        `idempotency` is (scope, key, fingerprint of the request): a repeat within 24 h returns
        the callbacks minted the first time, a different request under the same key raises
        IdempotencyConflict.
        """

    @abc.abstractmethod
    async def ingest(
        self,
        incoming: Incoming,
        guard: Guard | None = None,
        keep_late: bool = True,
        check: ContractCheck | None = None,
        default_response: ResponseSpec | None = None,
        builtin_outcomes: bool = True,
    ) -> IngestResult:
        """Store a delivery; raises CallbackNotFound or DeliveryRefused (from `guard`, run on the
        callback before the closed and duplicate checks). To a callback that takes no more
        deliveries, it is stored as late (`keep_late`), or refused with CallbackClosed. `check`
        gives its problems under the callback's contract (asked only of a callback that has
        one): a delivery with problems is stored as invalid. One into an expected set is
        counted against it (store/decisions.py). What the sender is answered comes from the
        callback's response spec, else `default_response`; it is stored with the delivery and
        returned as `answered`. Its outcome is decided by the callback's own rule, then
        (`builtin_outcomes`) the built-in ones, and stored with it."""

    @abc.abstractmethod
    async def cancel(self, token: str, now: int) -> tuple[Callback, bool]:
        """Cancel a pending or received callback; returns it and whether it changed. Raises
        CallbackNotFound."""

    @abc.abstractmethod
    async def expire_due(self, now: int, limit: int = 500) -> list[Callback]:
        """Turn pending callbacks past their expiry into expired ones; returns those."""

    @abc.abstractmethod
    async def mark_settled(self, now: int, limit: int = 500) -> list[Callback]:
        """Mark settled (settled_at) every callback whose latest delivery's settle time has
        passed, each once per latest delivery; returns those, with their result (a SETTLED
        event each is announced)."""

    @abc.abstractmethod
    async def mark_overdue(self, now: int, limit: int = 500) -> list[Callback]:
        """Look at callbacks past their overdue time, each once: those still pending turn
        overdue (an OVERDUE event each is announced), the others stay as they are. Returns
        every callback looked at (call again until []); `overdue` tells which turned."""

    @abc.abstractmethod
    async def has_timers_due(self, now: int) -> bool:
        """Whether some callback is due to settle or to be looked at for overdue (cheap, index only)."""

    @abc.abstractmethod
    async def overdue_count(self, group: str, owner: str | None = None) -> int:
        """How many callbacks of a group (minted by `owner`, if given) turned overdue."""

    @abc.abstractmethod
    async def probe_write(self, now: int) -> None:
        """A small real write, to learn whether a store that failed to commit can again: only
        a commit of one turns `writable` True again."""

    @abc.abstractmethod
    async def purge(self, expired_before: int, now: int, batch: int = 500) -> int:
        """Delete one small batch of what retention lets go: deliveries, then callbacks whose
        expiry is older than `expired_before`, and idempotency keys past their window. Returns
        how many rows went; call again until 0. Each call is one short transaction."""

    # Reads

    @abc.abstractmethod
    async def has_due(self, now: int) -> bool:
        """Whether some pending callback is past its expiry (cheap, index only)."""

    @abc.abstractmethod
    async def get_callback(self, token: str) -> Callback | None:
        """The callback with its latest delivery as `result`."""

    @abc.abstractmethod
    async def list_callbacks(self, where: CallbackFilter, before: int | None, limit: int) -> CallbackPage:
        """Callbacks matching `where`, newest first, at most `limit`, created before the
        cursor `before` (a `next_before` of an earlier page); without `result`."""

    @abc.abstractmethod
    async def find_deliveries(self, where: DeliveryFilter, after: int, limit: int) -> list[Delivery]:
        """Deliveries with id > after matching `where`, oldest first."""

    @abc.abstractmethod
    async def callback_statuses(self, tokens: Sequence[str], owner: str | None = None) -> dict[str, str]:
        """The status of each of these callbacks that exists (and, with an `owner`, was minted
        by that API key), by token; the others are left out."""

    @abc.abstractmethod
    async def get_delivery(self, delivery_id: int) -> Delivery | None: ...

    @abc.abstractmethod
    async def missing(self, token: str, after: str | None, limit: int) -> list[str] | None:
        """Up to `limit` ids of the callback's named expected set that have not arrived, in mint
        order, after the id `after` (None: from the first); None when `after` is not in the set.
        A callback without one (or none at all) has none."""

    @abc.abstractmethod
    async def group_counts(self, group: str, owner: str | None = None) -> dict[str, int]:
        """Callbacks of a group (minted by `owner`, if given) by status (every status present,
        zero included)."""

    @abc.abstractmethod
    async def group_summary(
        self, group: str, owner: str | None = None, details: bool = True, limit: int = GROUP_LIST_LIMIT
    ) -> GroupSummary:
        """A group's callbacks (minted by `owner`, if given) by status and, those with a result,
        by its outcome (every status and result outcome present, zero included); with
        `details`, its first `limit` errors (by delivery id) and pending tokens (by creation)."""

    @abc.abstractmethod
    async def status_counts(self) -> dict[str, int]:
        """All callbacks by status (every status present, zero included)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise unless the store answers a query."""
