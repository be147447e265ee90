"""The parts of a run, each starting the servers it needs and returning its figures.

Within a part, the runs of cbhub and of its reference alternate, so that noise from the rest of
the machine falls on both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import aiohttp

from bench import load, nchan
from bench.floor import sqlite_cpu_per_delivery
from bench.growth import build_database, sample_tokens
from bench.held import bytes_per_waiter, storm_bytes_per_waiter
from bench.payload import marketing_cloud_body
from bench.plan import Plan
from bench.procs import Cores, Server, start_baseline, start_cbhub
from bench.report import Figure, percentile
from bench.targets import PubSub, mint
from bench.wake import KINDS, wake_latencies

KIB = 1024
LABELS = {"long_poll": "long-poll", "websocket": "websocket"}


@dataclass
class Context:
    plan: Plan
    cores: Cores
    workdir: Path
    tool: str  # "wrk" or "python"
    nchan: bool  # whether nchan takes part
    event_loop: str  # server.event_loop for cbhub and the baseline
    body: bytes = field(default_factory=marketing_cloud_body)
    notes: list[str] = field(default_factory=list)

    def path(self, name: str) -> Path:
        return self.workdir / name

    def start_cbhub(self, db: Path, log_name: str, env: dict[str, str] | None = None) -> Server:
        env = {"CBHUB_SERVER_EVENT_LOOP": self.event_loop, **(env or {})}
        return start_cbhub(db, self.path(log_name), self.cores, env)

    def start_baseline(self) -> Server:
        return start_baseline(self.path("baseline.log"), self.cores, self.event_loop)

    def drive_posts(self, server: Server, tokens: list[str], seconds: float) -> load.LoadResult:
        posts = load.Load(server.url, "POST", "/cb/", tokens, self.body, self.plan.connections, seconds)
        return load.drive(posts, self.tool, self.cores, self.workdir)

    def drive_lookups(self, server: Server, tokens: list[str]) -> load.LoadResult:
        plan = self.plan
        lookups = load.Load(server.url, "GET", "/v1/callbacks/", tokens, None, plan.lookup_connections, plan.lookup_seconds)
        return load.drive(lookups, self.tool, self.cores, self.workdir)


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


def _mint(server: Server, count: int) -> list[str]:
    async def go() -> list[str]:
        async with aiohttp.ClientSession() as session:
            return await mint(session, server.url, count)

    return asyncio.run(go())


def ingest(ctx: Context) -> list[Figure]:
    """Durable ingest beside the baseline."""
    plan = ctx.plan
    rps = Figure("ingest throughput", "req/s", reference_name="baseline", target="≥ 0.6 × baseline",
                 check_ratio=lambda r: r >= 0.6)
    non_2xx = Figure("ingest answers not 2xx (+ socket errors)", "count", reference_name="baseline", target="0",
                     check_value=lambda v: v == 0)
    p99 = Figure("ingest latency p99 under load", "ms", reference_name="baseline")
    # Steadier than requests per second on a shared machine: what one request costs the server.
    cpu = Figure("ingest server CPU per request", "µs", reference_name="baseline")
    # What storing alone costs, and so the best ratio any durable service could reach here.
    sqlite_cpu = Figure("SQLite alone: CPU per delivery stored", "µs")
    ceiling = Figure("ingest ceiling: baseline ÷ (baseline + SQLite alone)", "×")
    with (
        running(ctx.start_baseline()) as baseline,
        running(ctx.start_cbhub(ctx.path("ingest.db"), "cbhub-ingest.log")) as cbhub,
    ):
        tokens = _mint(cbhub, plan.tokens)
        ctx.drive_posts(baseline, tokens, plan.warm_up_seconds)
        ctx.drive_posts(cbhub, tokens, plan.warm_up_seconds)
        for _ in range(plan.runs):
            for side, server in (("reference", baseline), ("cbhub", cbhub)):
                cpu_before = server.cpu_seconds()
                result = ctx.drive_posts(server, tokens, plan.ingest_seconds)
                cpu_used = server.cpu_seconds() - cpu_before
                getattr(cpu, side).runs.append(cpu_used / max(result.requests, 1) * 1e6)
                getattr(rps, side).runs.append(result.rps)
                getattr(non_2xx, side).runs.append(result.non_2xx + result.errors)
                getattr(p99, side).runs.append(result.p99_ms)
            storing = sqlite_cpu_per_delivery(
                ctx.path(f"floor-{len(sqlite_cpu.cbhub.runs)}.db"), ctx.body, plan.tokens, plan.floor_deliveries
            )
            sqlite_cpu.cbhub.runs.append(storing)
            baseline_cpu = cpu.reference.runs[-1]
            ceiling.cbhub.runs.append(baseline_cpu / (baseline_cpu + storing))
    return [rps, non_2xx, p99, cpu, sqlite_cpu, ceiling]


def growth(ctx: Context) -> list[Figure]:
    """Ingest, lookups and start time with `plan.stored` deliveries, beside a server on an
    empty database, their runs alternating."""
    plan = ctx.plan
    stored = f"{plan.stored:,}"
    big = ctx.path("grown.db")
    built_in = build_database(big, plan.stored, ctx.body)
    ctx.notes.append(f"built the database of {stored} deliveries in {built_in:.1f} s")
    old_tokens = sample_tokens(big, plan.tokens)
    reference = "empty database"
    start = Figure(f"start time, {stored} stored", "s", reference_name=reference,
                   target="≤ 1.1 × empty", check_ratio=lambda r: r <= 1.1)
    rps = Figure(f"ingest throughput, {stored} stored", "req/s", reference_name=reference,
                 target="≥ 0.9 × empty", check_ratio=lambda r: r >= 0.9)
    p50 = Figure(f"GET /v1/callbacks/{{token}} p50, {stored} stored", "ms", reference_name=reference,
                 target="≤ 1.1 × empty", check_ratio=lambda r: r <= 1.1)
    p99 = Figure(f"GET /v1/callbacks/{{token}} p99, {stored} stored", "ms", reference_name=reference,
                 target="≤ 1.1 × empty", check_ratio=lambda r: r <= 1.1)
    for run in range(plan.runs):
        for side, db in (("reference", ctx.path(f"start-{run}.db")), ("cbhub", big)):
            server = ctx.start_cbhub(db, f"cbhub-start-{run}.log")
            server.stop()
            getattr(start, side).runs.append(server.started_in)
    with (
        running(ctx.start_cbhub(ctx.path("empty.db"), "cbhub-empty.log")) as empty,
        running(ctx.start_cbhub(big, "cbhub-grown.log")) as grown,
    ):
        servers = {"reference": empty, "cbhub": grown}
        fresh = {side: _mint(server, plan.tokens) for side, server in servers.items()}
        for side, server in servers.items():
            ctx.drive_posts(server, fresh[side], plan.warm_up_seconds)
        # The empty database's lookups find what its warm-up stored; the grown one's, old
        # callbacks spread over the whole database.
        looked_up = {"reference": fresh["reference"], "cbhub": old_tokens}
        for _ in range(plan.runs):
            for side, server in servers.items():
                result = ctx.drive_lookups(server, looked_up[side])
                getattr(p50, side).runs.append(result.p50_ms)
                getattr(p99, side).runs.append(result.p99_ms)
        for _ in range(plan.runs):
            for side, server in servers.items():
                getattr(rps, side).runs.append(ctx.drive_posts(server, fresh[side], plan.ingest_seconds).rps)
    return [rps, p50, p99, start]


def _pubsubs(ctx: Context, tag: str) -> Iterator[tuple[str, contextlib.AbstractContextManager[Server]]]:
    """("cbhub", server) and, when it takes part, ("reference", nchan), each freshly started."""
    yield "cbhub", running(ctx.start_cbhub(ctx.path(f"{tag}.db"), f"cbhub-{tag}.log"))
    if ctx.nchan:
        yield "reference", running(nchan.start_nchan(ctx.path(f"nchan-{tag}"), ctx.cores))


def wake(ctx: Context) -> list[Figure]:
    """Wake latency of long-poll and websocket waiters, cbhub beside nchan."""
    plan = ctx.plan
    reference = "nchan" if ctx.nchan else ""
    figures: dict[tuple[str, int], Figure] = {}
    for kind in KINDS:
        for pct in (50, 99):
            target, check = ("", None)
            if pct == 99:
                target, check = ("≤ 3 × nchan", lambda r: r <= 3.0)
            figures[kind, pct] = Figure(f"wake latency {LABELS[kind]} p{pct}", "ms", reference_name=reference,
                                        target=target if reference else "", check_ratio=check)
    # The same server without a flush at commit (not what cbhub promises): the part of the
    # wake that is software, not the disk.
    unflushed = {
        kind: Figure(f"wake latency {LABELS[kind]} p99, synchronous = OFF", "ms", reference_name=reference)
        for kind in KINDS
    }
    for run in range(plan.runs):
        for side, server_cm in _pubsubs(ctx, f"wake-{run}"):
            with server_cm as server:
                target = PubSub("cbhub" if side == "cbhub" else "nchan", server)
                for kind in KINDS:
                    latencies = asyncio.run(wake_latencies(target, kind, plan.wake_waiters, ctx.body))
                    for pct in (50, 99):
                        getattr(figures[kind, pct], side).runs.append(percentile(latencies, pct) * 1000)
                    if side == "reference":
                        unflushed[kind].reference.runs.append(figures[kind, 99].reference.runs[-1])
        off = ctx.start_cbhub(ctx.path(f"wake-off-{run}.db"), f"cbhub-wake-off-{run}.log", {"CBHUB_STORAGE_SYNCHRONOUS": "OFF"})
        with running(off) as server:
            for kind in KINDS:
                latencies = asyncio.run(wake_latencies(PubSub("cbhub", server), kind, plan.wake_waiters, ctx.body))
                unflushed[kind].cbhub.runs.append(percentile(latencies, 99) * 1000)
    return [*figures.values(), *unflushed.values()]


def held(ctx: Context) -> list[Figure]:
    """Server memory per idle waiter, cbhub beside nchan, and beside the bare aiohttp baseline
    holding the same kind of connection with nothing of its own (the floor for aiohttp)."""
    plan = ctx.plan
    reference = "nchan" if ctx.nchan else ""
    figures = {
        kind: Figure(f"memory per idle {LABELS[kind]} waiter ({plan.held_waiters:,} held)", "KiB",
                     reference_name=reference, target="≤ 16 KiB", check_value=lambda v: v <= 16)
        for kind in KINDS
    }
    over_bare = {
        kind: Figure(f"memory per idle {LABELS[kind]} waiter, beside bare aiohttp", "KiB", reference_name="bare aiohttp")
        for kind in KINDS
    }
    for run in range(plan.runs):
        for kind in KINDS:
            for side, server_cm in _pubsubs(ctx, f"held-{run}-{kind}"):
                with server_cm as server:
                    target = PubSub("cbhub" if side == "cbhub" else "nchan", server)
                    per_waiter = asyncio.run(bytes_per_waiter(target, kind, plan.held_waiters))
                    getattr(figures[kind], side).runs.append(per_waiter / KIB)
            over_bare[kind].cbhub.runs.append(figures[kind].cbhub.runs[-1])
            with running(ctx.start_baseline()) as bare:
                per_waiter = asyncio.run(bytes_per_waiter(PubSub("aiohttp", bare), kind, plan.held_waiters))
                over_bare[kind].reference.runs.append(per_waiter / KIB)
    return [*figures.values(), *over_bare.values(), _storm(ctx)]


def _storm(ctx: Context) -> Figure:
    """Memory per long-poll when aiohttp clients open them all at once, beside bare aiohttp."""
    plan = ctx.plan
    figure = Figure(f"memory per long-poll, {plan.storm_waiters:,} opened at once by aiohttp clients", "KiB",
                    reference_name="bare aiohttp")
    for run in range(plan.runs):
        with running(ctx.start_cbhub(ctx.path(f"storm-{run}.db"), f"cbhub-storm-{run}.log")) as server:
            per_waiter = asyncio.run(storm_bytes_per_waiter(PubSub("cbhub", server), plan.storm_waiters))
            figure.cbhub.runs.append(per_waiter / KIB)
        with running(ctx.start_baseline()) as bare:
            per_waiter = asyncio.run(storm_bytes_per_waiter(PubSub("aiohttp", bare), plan.storm_waiters))
            figure.reference.runs.append(per_waiter / KIB)
    return figure


PARTS = {"ingest": ingest, "growth": growth, "wake": wake, "held": held}
