"""The parts of a run, each starting the servers it needs and returning its figures.

Within a part, the runs of cbhub and of its reference alternate, so that noise from the rest of
the machine falls on both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import aiohttp

from bench import load, nchan
from bench.floor import sqlite_commit_latencies, sqlite_cpu_per_delivery
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

    def start_cbhub(self, db: Path, log_name: str, env: dict[str, str] | None = None, cores: Cores | None = None) -> Server:
        env = {"CBHUB_SERVER_EVENT_LOOP": self.event_loop, **(env or {})}
        return start_cbhub(db, self.path(log_name), cores or self.cores, env)

    def start_baseline(self, cores: Cores | None = None) -> Server:
        return start_baseline(self.path("baseline.log"), cores or self.cores, self.event_loop)

    def unpinned(self) -> Cores | None:
        """Servers free to run on every core (the load generator's too), as on a VM with no
        core to spare; None when the servers are not pinned in the first place."""
        if self.cores.server is None or self.cores.load is None:
            return None
        return Cores(self.cores.server | self.cores.load, self.cores.load)

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
    """Durable ingest beside the baseline, servers pinned to their core; then both free to use
    every core (the load generator's too)."""
    plan = ctx.plan
    rps = Figure("ingest throughput", "req/s", reference_name="baseline", target="≥ 0.4 × baseline",
                 check_ratio=lambda r: r >= 0.4)
    non_2xx = Figure("ingest answers not 2xx (+ socket errors)", "count", reference_name="baseline", target="0",
                     check_value=lambda v: v == 0)
    p99 = Figure("ingest latency p99 under load", "ms", reference_name="baseline")
    # Steadier than requests per second on a shared machine: what one request costs the server.
    cpu = Figure("ingest server CPU per request", "µs", reference_name="baseline")
    # Where it goes: the event loop's thread (HTTP, cbhub's handler, waking waiters) and the
    # others (the SQLite writer above all; the baseline has none of its own).
    loop_cpu = Figure("ingest CPU per request, event-loop thread", "µs", reference_name="baseline")
    other_cpu = Figure("ingest CPU per request, other threads (writer, checkpoints, logs)", "µs",
                       reference_name="baseline")
    # What storing alone costs, and so the best ratio any durable service could reach here.
    sqlite_cpu = Figure("SQLite alone: CPU per delivery stored", "µs")
    ceiling = Figure("ingest ceiling: baseline ÷ (baseline + SQLite alone)", "×")

    def floor() -> None:
        storing = sqlite_cpu_per_delivery(
            ctx.path(f"floor-{len(sqlite_cpu.cbhub.runs)}.db"), ctx.body, plan.tokens, plan.floor_deliveries
        )
        sqlite_cpu.cbhub.runs.append(storing)
        baseline_cpu = cpu.reference.runs[-1]
        ceiling.cbhub.runs.append(baseline_cpu / (baseline_cpu + storing))

    measured = {"rps": rps, "non_2xx": non_2xx, "p99": p99, "cpu": cpu, "loop_cpu": loop_cpu, "other_cpu": other_cpu}
    _ingest_pairs(ctx, None, "ingest", measured, after_each=floor)
    figures = [rps, non_2xx, p99, cpu, loop_cpu, other_cpu, sqlite_cpu, ceiling]
    # The access line's share, in the same run: cbhub with log.access = false (an operator's
    # choice, not the default the target is judged by).
    quiet = {
        "rps": Figure("ingest throughput, access log off (log.access = false)", "req/s", reference_name="baseline"),
        "cpu": Figure("ingest server CPU per request, access log off", "µs", reference_name="baseline"),
    }
    _ingest_pairs(ctx, None, "ingest-no-access-log", quiet, env={"CBHUB_LOG_ACCESS": "false"})
    figures.extend(quiet.values())
    unpinned = ctx.unpinned()
    if unpinned is not None:
        free = {
            "rps": Figure("ingest throughput, server unpinned", "req/s", reference_name="baseline"),
            "non_2xx": Figure("ingest answers not 2xx, server unpinned", "count", reference_name="baseline", target="0",
                              check_value=lambda v: v == 0),
            "cpu": Figure("ingest server CPU per request, server unpinned", "µs", reference_name="baseline"),
        }
        _ingest_pairs(ctx, unpinned, "ingest-unpinned", free)
        figures.extend(free.values())
    return figures


def _ingest_pairs(
    ctx: Context,
    cores: Cores | None,
    tag: str,
    figures: dict[str, Figure],
    after_each: Callable[[], None] | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """cbhub (with `env`) and the baseline, each on `cores` (None: the servers' own), their runs alternating;
    fills whichever of the figures rps, non_2xx, p99, cpu, loop_cpu and other_cpu are given."""
    plan = ctx.plan
    with (
        running(ctx.start_baseline(cores)) as baseline,
        running(ctx.start_cbhub(ctx.path(f"{tag}.db"), f"cbhub-{tag}.log", env=env, cores=cores)) as cbhub,
    ):
        tokens = _mint(cbhub, plan.tokens)
        ctx.drive_posts(baseline, tokens, plan.warm_up_seconds)
        ctx.drive_posts(cbhub, tokens, plan.warm_up_seconds)
        for _ in range(plan.runs):
            for side, server in (("reference", baseline), ("cbhub", cbhub)):
                cpu_before, loop_before = server.cpu_seconds(), server.loop_thread_cpu_seconds()
                result = ctx.drive_posts(server, tokens, plan.ingest_seconds)
                cpu_used = server.cpu_seconds() - cpu_before
                loop_used = server.loop_thread_cpu_seconds() - loop_before
                per_request = 1e6 / max(result.requests, 1)
                values = {
                    "cpu": cpu_used * per_request,
                    "loop_cpu": loop_used * per_request,
                    # Read a moment apart, the two may differ by a tick where there is no other thread.
                    "other_cpu": max(cpu_used - loop_used, 0.0) * per_request,
                    "rps": result.rps,
                    "non_2xx": result.non_2xx + result.errors,
                    "p99": result.p99_ms,
                }
                for name, figure in figures.items():
                    getattr(figure, side).runs.append(values[name])
            if after_each is not None:
                after_each()


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
    """Wake latency of long-poll and websocket waiters, cbhub beside nchan, in two parts: the
    software (the same server with no flush at commit) against nchan's, and the durable wake
    against that software plus one SQLite commit, all measured in the same run."""
    plan = ctx.plan
    reference = "nchan" if ctx.nchan else ""
    figures: dict[tuple[str, int], Figure] = {
        (kind, pct): Figure(f"wake latency {LABELS[kind]} p{pct}", "ms", reference_name=reference)
        for kind in KINDS
        for pct in (50, 99)
    }
    # The same server without a flush at commit (not what cbhub promises): the part of the
    # wake that is software, not the disk.
    software = {
        kind: Figure(f"wake latency {LABELS[kind]} p99, synchronous = OFF (software)", "ms", reference_name=reference,
                     target="≤ 2 × nchan" if reference else "", check_ratio=lambda r: r <= 2.0)
        for kind in KINDS
    }
    software_p50 = {
        kind: Figure(f"wake latency {LABELS[kind]} p50, synchronous = OFF (software)", "ms", reference_name=reference)
        for kind in KINDS
    }
    # What one commit alone takes on this disk: a wake cannot beat its own fsync.
    commit_p50 = Figure("SQLite alone: one commit of one delivery p50", "ms")
    commit_p99 = Figure("SQLite alone: one commit of one delivery p99", "ms")
    # The same commit inside the durable server, as it times it (cbhub_commit_seconds, the
    # mints' few large commits included): where the durable wake's time beyond the software goes.
    server_commit = Figure("commit in the durable server, mean (cbhub_commit_seconds)", "ms",
                           reference_name="SQLite alone, mean")
    durable = {
        kind: Figure(f"wake latency {LABELS[kind]} p99, durable", "ms", reference_name="software p99 + commit p99",
                     target="≤ 1 × (software + commit)", check_ratio=lambda r: r <= 1.0)
        for kind in KINDS
    }
    for run in range(plan.runs):
        for side, server_cm in _pubsubs(ctx, f"wake-{run}"):
            with server_cm as server:
                target = PubSub("cbhub" if side == "cbhub" else "nchan", server)
                if side == "cbhub":
                    commits_before = _commit_seconds(server)
                for kind in KINDS:
                    latencies = asyncio.run(wake_latencies(target, kind, plan.wake_waiters, ctx.body))
                    for pct in (50, 99):
                        getattr(figures[kind, pct], side).runs.append(percentile(latencies, pct) * 1000)
                    if side == "reference":
                        software[kind].reference.runs.append(figures[kind, 99].reference.runs[-1])
                        software_p50[kind].reference.runs.append(figures[kind, 50].reference.runs[-1])
                if side == "cbhub":
                    total, count = (after - before for after, before in zip(_commit_seconds(server), commits_before))
                    server_commit.cbhub.runs.append(total / max(count, 1) * 1000)
        off = ctx.start_cbhub(ctx.path(f"wake-off-{run}.db"), f"cbhub-wake-off-{run}.log", {"CBHUB_STORAGE_SYNCHRONOUS": "OFF"})
        with running(off) as server:
            for kind in KINDS:
                latencies = asyncio.run(wake_latencies(PubSub("cbhub", server), kind, plan.wake_waiters, ctx.body))
                software[kind].cbhub.runs.append(percentile(latencies, 99) * 1000)
                software_p50[kind].cbhub.runs.append(percentile(latencies, 50) * 1000)
        # In the directory of the servers' databases, so on the same disk.
        commits = sqlite_commit_latencies(ctx.path(f"commit-{run}.db"), ctx.body, plan.wake_waiters)
        commit_p50.cbhub.runs.append(percentile(commits, 50) * 1000)
        commit_p99.cbhub.runs.append(percentile(commits, 99) * 1000)
        server_commit.reference.runs.append(statistics.fmean(commits) * 1000)
        for kind in KINDS:
            durable[kind].cbhub.runs.append(figures[kind, 99].cbhub.runs[-1])
            durable[kind].reference.runs.append(software[kind].cbhub.runs[-1] + commit_p99.cbhub.runs[-1])
    return [*figures.values(), *software_p50.values(), *software.values(), commit_p50, commit_p99, server_commit,
            *durable.values()]


def _commit_seconds(server: Server) -> tuple[float, float]:
    """(seconds, commits) so far: the sum and count of the server's cbhub_commit_seconds."""

    async def go() -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{server.url}/metrics") as response:
            return await response.text()

    text = asyncio.run(go())
    found = [re.search(rf"^cbhub_commit_seconds_{suffix} (\S+)$", text, re.MULTILINE) for suffix in ("sum", "count")]
    total, count = (float(match.group(1)) if match else 0.0 for match in found)
    return total, count


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
        kind: Figure(f"memory per idle {LABELS[kind]} waiter, beside bare aiohttp", "KiB", reference_name="bare aiohttp",
                     target="≤ bare aiohttp + 2 KiB", most_above=2.0)
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

