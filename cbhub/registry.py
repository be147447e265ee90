"""The in-memory registry of waiters: who is waiting for what, and waking them.

It knows no SQL and no HTTP. A waiter registers under one key (the most selective of its
filters) *before* its owner reads the store, so a delivery committed between the read and the
wait still reaches it; the owner removes it in `finally`, so nothing outlives a request.
"""

from __future__ import annotations

import asyncio
from typing import Iterator, Protocol

from cbhub.model import Event
from cbhub.store.base import DeliveryFilter

Key = tuple[str, str | None]
ALL: Key = ("all", None)


def key_for(where: DeliveryFilter) -> Key:
    """The registry key a subscription with these filters is filed under."""
    if where.token is not None:
        return ("token", where.token)
    if where.correlation_id is not None:
        return ("correlation", where.correlation_id)
    if where.group is not None:
        return ("group", where.group)
    return ALL


def keys_of(event: Event) -> Iterator[Key]:
    """Every key under which a waiter may be interested in `event`."""
    yield ("token", event.token)
    if event.correlation_id is not None:
        yield ("correlation", event.correlation_id)
    if event.group is not None:
        yield ("group", event.group)
    yield ALL


class ShuttingDown(Exception):
    """The server is stopping: whoever waits is answered "come back later"."""


class Subscriber(Protocol):
    key: Key
    kind: str  # for metrics: "long_poll", "websocket", "sse"

    def push(self, event: Event) -> None: ...

    def shut_down(self) -> None: ...


class Waiter:
    """A one-shot subscriber for a long-poll: collects matching events and wakes its owner."""

    __slots__ = ("key", "where", "events", "_woken", "_shut_down")
    kind = "long_poll"

    def __init__(self, where: DeliveryFilter) -> None:
        self.key = key_for(where)
        self.where = where
        self.events: list[Event] = []
        self._woken = asyncio.get_running_loop().create_future()
        self._shut_down = False

    def push(self, event: Event) -> None:
        if not self.where.accepts(event):
            return
        self.events.append(event)
        if not self._woken.done():
            self._woken.set_result(None)

    def shut_down(self) -> None:
        self._shut_down = True
        if not self._woken.done():
            self._woken.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """True once an event arrived (perhaps before this call), False on timeout; raises
        ShuttingDown when the server stops first."""
        if not self.events and timeout > 0 and not self._shut_down:
            try:
                await asyncio.wait_for(asyncio.shield(self._woken), timeout)
            except asyncio.TimeoutError:
                pass
        if self._shut_down:
            raise ShuttingDown()
        return bool(self.events)

    def rearm(self) -> None:
        """Forget what was seen, to wait again."""
        self.events.clear()
        if self._woken.done():
            self._woken = asyncio.get_running_loop().create_future()


class Registry:
    def __init__(self) -> None:
        self._by_key: dict[Key, set[Subscriber]] = {}
        self._shut_down = False

    def add(self, subscriber: Subscriber) -> None:
        if self._shut_down:
            subscriber.shut_down()
        self._by_key.setdefault(subscriber.key, set()).add(subscriber)

    def shut_down(self) -> None:
        """Tell every subscriber, present and future, that the server is stopping."""
        self._shut_down = True
        for subscribers in list(self._by_key.values()):
            for subscriber in tuple(subscribers):
                subscriber.shut_down()

    def remove(self, subscriber: Subscriber) -> None:
        subscribers = self._by_key.get(subscriber.key)
        if subscribers is None:
            return
        subscribers.discard(subscriber)
        if not subscribers:
            del self._by_key[subscriber.key]

    def publish(self, event: Event) -> None:
        for key in keys_of(event):
            subscribers = self._by_key.get(key)
            if subscribers:
                # A copy: a woken subscriber may remove itself while we iterate.
                for subscriber in tuple(subscribers):
                    subscriber.push(event)

    def __len__(self) -> int:
        """How many subscribers are registered (0 when nobody waits)."""
        return sum(len(subscribers) for subscribers in self._by_key.values())

    def count_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for subscribers in self._by_key.values():
            for subscriber in subscribers:
                counts[subscriber.kind] = counts.get(subscriber.kind, 0) + 1
        return counts
