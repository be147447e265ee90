"""cbhub's Prometheus metrics, one registry per app (tests run many apps in one process)."""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from cbhub.domain.model import STATUSES
from cbhub.domain.outcomes import OUTCOMES

FAST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
WAITER_KINDS = ("long_poll", "websocket", "sse")


class _WaitersCollector:
    """Reads the registry at scrape time: no bookkeeping on the hot path."""

    def __init__(self, count_by_kind: Callable[[], dict[str, int]]) -> None:
        self._count_by_kind = count_by_kind

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("cbhub_waiters", "Clients waiting for deliveries, by kind.", labels=["kind"])
        counts = self._count_by_kind()
        for kind in sorted(set(WAITER_KINDS) | set(counts)):
            family.add_metric([kind], counts.get(kind, 0))
        yield family


class _OverdueCollector:
    """Reads the hub's count at scrape time, as the waiters collector reads the registry."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "cbhub_overdue", "Callbacks this instance found still pending when expected (expect_within).", value=self._count()
        )


class Metrics:
    def __init__(self, count_waiters: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.deliveries = Counter(
            "cbhub_deliveries",
            "Requests to callback URLs, by outcome (stored, duplicate, or the reason they were refused).",
            ["outcome"],
            registry=self.registry,
        )
        self.callbacks = Gauge("cbhub_callbacks", "Callbacks in the store, by status.", ["status"], registry=self.registry)
        self.commit_batch = Histogram(
            "cbhub_commit_batch_size", "Writes per commit (group commit).", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.commit_seconds = Histogram(
            "cbhub_commit_seconds", "Time to commit one batch, fsync included.", buckets=FAST_BUCKETS, registry=self.registry
        )
        self.ingest_seconds = Histogram(
            "cbhub_ingest_seconds",
            "Time from a callback request's arrival to its answer.",
            buckets=FAST_BUCKETS,
            registry=self.registry,
        )
        self.read_timeouts = Counter(
            "cbhub_read_timeouts",
            "Connections closed because a request had not arrived whole within server.read_timeout.",
            registry=self.registry,
        )
        delivery_outcomes = Counter(
            "cbhub_delivery_outcomes",
            "Deliveries stored, by how they went (ok, error, unknown, invalid).",
            ["outcome"],
            registry=self.registry,
        )
        # Every outcome shows from the start, at 0; each counter is looked up once.
        self._delivery_outcomes = {outcome: delivery_outcomes.labels(outcome) for outcome in OUTCOMES}
        self.registry.register(_WaitersCollector(count_waiters))
        self._outcomes: dict[str, Counter] = {}

    def count_overdue(self, count: Callable[[], int]) -> None:
        """Publish cbhub_overdue_total, read from `count` at each scrape."""
        self.registry.register(_OverdueCollector(count))

    def count_delivery(self, outcome: str) -> None:
        """Count one callback request by its outcome. Each outcome's counter is looked up once,
        not for every request."""
        counter = self._outcomes.get(outcome)
        if counter is None:
            counter = self._outcomes[outcome] = self.deliveries.labels(outcome)
        counter.inc()

    def count_outcome(self, outcome: str) -> None:
        """Count one stored delivery by its outcome."""
        self._delivery_outcomes[outcome].inc()

    def on_commit(self, size: int, seconds: float) -> None:
        self.commit_batch.observe(size)
        self.commit_seconds.observe(seconds)

    def set_callbacks(self, counts: dict[str, int]) -> None:
        for status in STATUSES:
            self.callbacks.labels(status).set(counts.get(status, 0))
