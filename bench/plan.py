"""How much of everything one run of the suite does: the full run and the CI smoke run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    runs: int = 3  # each figure is the median of this many runs
    tokens: int = 2_000  # callbacks the ingest load posts to, round-robin
    connections: int = 64
    ingest_seconds: float = 8.0
    warm_up_seconds: float = 2.0
    lookup_connections: int = 4  # light load: lookup latency, not a saturation test
    lookup_seconds: float = 4.0
    wake_waiters: int = 500
    held_waiters: int = 10_000
    storm_waiters: int = 5_000  # long-polls opened all at once by aiohttp clients
    stored: int = 1_000_000  # deliveries in the "grown" database
    floor_deliveries: int = 20_000  # stored by SQLite alone, for the ingest ceiling
    classify_seconds: float = 5.0  # per kind of delivery and run, in the classify part
    pg_wake_samples: int = 200  # one waiter at a time, in the postgres part


FULL = Plan()

# Seconds, not minutes: proves every part still runs; its figures mean little.
SMOKE = Plan(
    runs=1,
    tokens=50,
    connections=8,
    ingest_seconds=1.0,
    warm_up_seconds=1.0,
    lookup_connections=2,
    lookup_seconds=1.0,
    wake_waiters=20,
    held_waiters=200,
    storm_waiters=100,
    stored=5_000,
    floor_deliveries=500,
    classify_seconds=1.0,
    pg_wake_samples=10,
)
