"""cbhub's Prometheus metrics, one registry per app (tests run many apps in one process)."""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

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


class PlainCounter:
    """A counter by one label, kept in a plain dict and read at scrape time: counting is a
    dict update on the event loop's thread (prometheus-client takes a lock and builds a child
    per call). Exposed exactly as prometheus-client exposes a labelled Counter: `_total`, and
    `_created` per label value, each label value from its first count (or from the start, for
    those given)."""

    def __init__(self, name: str, documentation: str, label: str, registry: CollectorRegistry, shown: tuple[str, ...] = ()) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.counts: dict[str, float] = {}
        self._created: dict[str, float] = {}
        for value in shown:
            self.inc(value, 0)
        registry.register(self)

    def inc(self, value: str, amount: float = 1) -> None:
        if value in self.counts:
            self.counts[value] += amount
        else:
            self.counts[value] = amount
            self._created[value] = time.time()

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, count in list(self.counts.items()):
            family.add_metric([value], count, created=self._created[value])
        yield family


class PlainHistogram:
    """A histogram without labels, kept as plain counts per bucket and read at scrape time;
    exposed exactly as prometheus-client's Histogram (`_bucket`, `_count`, `_sum`, `_created`).
    Observed from the event loop's thread only."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = tuple(float(bound) for bound in buckets)
        # The `le` labels as prometheus-client writes them ("0.0005", "1.0", "+Inf").
        self._les = [floatToGoString(bound) for bound in (*self._bounds, float("inf"))]  # type: ignore[no-untyped-call]
        # One count per bucket (not cumulative), the last for +Inf.
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        self._created = time.time()
        registry.register(self)

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound falls in that bound's bucket (le is "<=").
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, "histogram")
        total = 0
        for le, count in zip(self._les, self._counts):
            total += count
            metric.add_sample(f"{self.name}_bucket", {"le": le}, total)
        metric.add_sample(f"{self.name}_count", {}, total)
        metric.add_sample(f"{self.name}_sum", {}, self._sum)
        metric.add_sample(f"{self.name}_created", {}, self._created)
        yield metric


class Metrics:
    def __init__(self, count_waiters: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        # Counted for every callback request: plain counters, read at scrape time.
        self.deliveries = PlainCounter(
            "cbhub_deliveries",
            "Requests to callback URLs, by outcome (stored, duplicate, or the reason they were refused).",
            "outcome",
            self.registry,
        )
        self.callbacks = Gauge("cbhub_callbacks", "Callbacks in the store, by status.", ["status"], registry=self.registry)
        self.commit_batch = PlainHistogram(
            "cbhub_commit_batch_size", "Writes per commit (group commit).", BATCH_BUCKETS, self.registry
        )
        self.commit_seconds = PlainHistogram(
            "cbhub_commit_seconds", "Time to commit one batch, fsync included.", FAST_BUCKETS, self.registry
        )
        self.ingest_seconds = PlainHistogram(
            "cbhub_ingest_seconds", "Time from a callback request's arrival to its answer.", FAST_BUCKETS, self.registry
        )
        self.read_timeouts = Counter(
            "cbhub_read_timeouts",
            "Connections closed because a request had not arrived whole within server.read_timeout.",
            registry=self.registry,
        )
        # Every outcome shows from the start, at 0.
        self.delivery_outcomes = PlainCounter(
            "cbhub_delivery_outcomes",
            "Deliveries stored, by how they went (ok, error, unknown, invalid).",
            "outcome",
            self.registry,
            shown=OUTCOMES,
        )
        self.registry.register(_WaitersCollector(count_waiters))

    def count_overdue(self, count: Callable[[], int]) -> None:
        """Publish cbhub_overdue_total, read from `count` at each scrape."""
        self.registry.register(_OverdueCollector(count))

    def count_delivery(self, outcome: str) -> None:
        """Count one callback request by its outcome."""
        self.deliveries.inc(outcome)

    def count_outcome(self, outcome: str) -> None:
        """Count one stored delivery by its outcome."""
        self.delivery_outcomes.inc(outcome)

    def on_commit(self, size: int, seconds: float) -> None:
        self.commit_batch.observe(size)
        self.commit_seconds.observe(seconds)

    def set_callbacks(self, counts: dict[str, int]) -> None:
        for status in STATUSES:
            self.callbacks.labels(status).set(counts.get(status, 0))
