"""Which deliveries and callbacks a read, a waiter or a subscription is about: plain values,
turned into SQL by the store and matched against events by the registry."""

from __future__ import annotations

from dataclasses import dataclass

from cbhub.domain.model import CREATED, SETTLED, Delivery, Event


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """Filters combined with AND; all None means every delivery. `tokens` is a set of tokens
    any of which matches (a subscription over many callbacks)."""

    token: str | None = None
    group: str | None = None
    correlation_id: str | None = None
    tokens: frozenset[str] | None = None
    # Only callbacks minted by this API key name; None: whoever minted them.
    owner: str | None = None
    # Only late deliveries (True), only on-time ones (False), or both (None).
    late: bool | None = None
    # Only deliveries with this outcome (cbhub.domain.outcomes); None: any.
    outcome: str | None = None

    def accepts(self, event: Event, created: bool = False) -> bool:
        """Whether a waiter with these filters cares about `event`. A status change (no
        delivery) concerns the filters on the callback: its token and its group. A creation
        concerns only those who ask for creations (`created`), and never a correlation id,
        which belongs to deliveries, nor an outcome, which a new callback has not."""
        if self.owner is not None and event.callback.created_by != self.owner:
            return False
        if event.delivery is not None:
            return self.matches(event.delivery)
        if event.kind == CREATED and (not created or self.correlation_id is not None or self.outcome is not None):
            return False
        return (
            (self.token is None or event.token == self.token)
            and (self.tokens is None or event.token in self.tokens)
            and (self.group is None or event.group == self.group)
            # A settling carries its latest delivery's correlation id (Event.correlation_id).
            and (self.correlation_id is None or event.kind != SETTLED or event.correlation_id == self.correlation_id)
        )

    def matches(self, delivery: Delivery) -> bool:
        return (
            (self.token is None or delivery.token == self.token)
            and (self.tokens is None or delivery.token in self.tokens)
            and (self.group is None or delivery.group == self.group)
            and (self.correlation_id is None or delivery.correlation_id == self.correlation_id)
            and (self.late is None or delivery.late == self.late)
            and (self.outcome is None or delivery.outcome == self.outcome)
        )


@dataclass(frozen=True, slots=True)
class CallbackFilter:
    """Which callbacks a listing shows: filters combined with AND, None matches all. A
    callback matches `correlation_id` when one of its deliveries carries it."""

    group: str | None = None
    label: str | None = None
    status: str | None = None
    correlation_id: str | None = None
    # Only callbacks minted by this API key name; None: whoever minted them.
    owner: str | None = None
    # Only those that turned overdue (True), only those that did not (False), or both (None).
    overdue: bool | None = None
    # Only callbacks whose result has this outcome (none while pending).
    outcome: str | None = None
