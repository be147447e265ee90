"""An endless, resumable stream of deliveries, over a pluggable transport.

A transport turns (filters, cursor) into the deliveries with id > cursor, oldest first, for as
long as its connection lasts; it raises `Unavailable` when the connection fails or the server
asks to come back later. `resume` wraps any transport into a stream that never ends: it
reconnects with backoff and resumes from the last id it yielded, so a server restart loses and
repeats nothing. Long-poll is the transport shipped; a websocket one implements the same
protocol.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from contextlib import aclosing
from typing import TYPE_CHECKING, AsyncGenerator, Mapping, Protocol

from cbhub.client.errors import Unavailable
from cbhub.client.models import Delivery

if TYPE_CHECKING:
    from cbhub.client.hub import CbHub

log = logging.getLogger(__name__)

# Each long-poll asks the server to hold this long (the server may cap it lower). Below the 60 s
# idle limit many proxies and load balancers apply.
POLL_SECONDS = 50.0
PAGE_SIZE = 500


class Transport(Protocol):
    def stream(self, filters: Mapping[str, str], after: int) -> AsyncGenerator[Delivery, None]:
        """Deliveries matching `filters` (token, group, correlation_id) with id > after, oldest
        first, live; raises Unavailable when the connection is lost."""
        ...


class LongPoll:
    """`GET /v1/deliveries?...&after=&wait=` in a loop: one request per batch."""

    def __init__(self, hub: CbHub, wait: float = POLL_SECONDS, limit: int = PAGE_SIZE) -> None:
        self.hub = hub
        self.wait = wait
        self.limit = limit

    async def stream(self, filters: Mapping[str, str], after: int) -> AsyncGenerator[Delivery, None]:
        while True:
            page = await self.hub.list_deliveries(after=after, limit=self.limit, wait=self.wait, **filters)
            for delivery in page.deliveries:
                yield delivery
            after = page.next_after


class Backoff:
    """Exponential delays with jitter between reconnection attempts; a server's Retry-After is
    honoured when it asks for longer."""

    def __init__(self, first: float = 0.1, maximum: float = 5.0) -> None:
        self.first = first
        self.maximum = maximum
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def delay(self, retry_after: float | None = None) -> float:
        current = self._next
        self._next = min(self.maximum, current * 2)
        # Jitter spreads the reconnections of many clients after one restart.
        delay = current / 2 + random.uniform(0, current / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, 60.0))
        return delay


# An attempt that lasted this long counts as a working connection: the next failure starts
# the backoff over.
HEALTHY_SECONDS = 10.0


async def resume(
    transport: Transport, filters: Mapping[str, str], after: int, backoff: Backoff | None = None
) -> AsyncGenerator[Delivery, None]:
    """Every delivery matching `filters` with id > after, forever, across reconnections."""
    backoff = backoff or Backoff()
    last = after
    while True:
        started = time.monotonic()
        try:
            async with aclosing(transport.stream(filters, last)) as stream:
                async for delivery in stream:
                    if delivery.id <= last:
                        continue  # a transport's replay overlapping what was yielded: never repeat
                    last = delivery.id
                    backoff.reset()
                    yield delivery
        except Unavailable as exc:
            if time.monotonic() - started >= HEALTHY_SECONDS:
                backoff.reset()
            delay = backoff.delay(exc.retry_after)
            log.info("server unavailable (%s); reconnecting in %.1f s, resuming after delivery %d", exc, delay, last)
            await asyncio.sleep(delay)
