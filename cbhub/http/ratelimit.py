"""Token buckets per key (a source address), in memory: `rate` requests a second, bursts of
up to `burst`. The table is bounded: buckets idle long enough to be full again are dropped,
and past `max_keys` the least recently used goes (for it, that only means a fresh burst).
"""

from __future__ import annotations

import time
from typing import Callable

MAX_KEYS = 100_000


class RateLimiter:
    def __init__(
        self, rate: float, burst: float, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        # key -> [tokens, last update]; dict order is least recently used first.
        self._buckets: dict[str, list[float]] = {}
        self._refill_time = burst / rate

    def take(self, key: str) -> float:
        """Spend one token: 0.0 when the request may go on, else the seconds until it may."""
        now = self._clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = [self.burst, now]
            self._forget_idle(now)
        else:
            tokens, last = bucket
            bucket[0] = min(self.burst, tokens + (now - last) * self.rate)
            bucket[1] = now
        self._buckets[key] = bucket
        if bucket[0] >= 1:
            bucket[0] -= 1
            return 0.0
        return (1 - bucket[0]) / self.rate

    def _forget_idle(self, now: float) -> None:
        # Amortised: each new key looks at the oldest few, which are the idlest.
        for _ in range(2):
            if not self._buckets:
                return
            oldest = next(iter(self._buckets))
            if now - self._buckets[oldest][1] >= self._refill_time:
                del self._buckets[oldest]
            else:
                break
        while len(self._buckets) >= self.max_keys:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)
