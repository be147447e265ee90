"""Every part of the suite, by name, in the order a run takes them."""

from __future__ import annotations

from collections.abc import Callable

from bench.classify import classify
from bench.postgres import postgres
from bench.report import Figure
from bench.suite import Context, growth, held, ingest, wake

PARTS: dict[str, Callable[[Context], list[Figure]]] = {
    "ingest": ingest,
    "classify": classify,
    "growth": growth,
    "wake": wake,
    "held": held,
    "postgres": postgres,
}
