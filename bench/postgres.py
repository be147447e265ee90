"""cbhub over PostgreSQL, one instance and two, beside SQLite on one node, in the same run.

`python -m bench --parts postgres`. A throwaway PostgreSQL server (Debian's binaries, as the
tests start it: initdb and pg_ctl in a temporary directory, here with fsync on: durable, as in
production) runs on the servers' core(s), like every cbhub; a fresh database per setup and run.
Each run, in turn:

- **SQLite, 1 instance**, **PostgreSQL, 1 instance**, **PostgreSQL, 2 instances** (both on
  one database; the load split evenly between them, one wrk each): the ingest load of the
  ingest part, requests per second, CPU per request of every cbhub instance together and of
  PostgreSQL (all its processes), deliveries per commit (cbhub's own histogram), and how often
  the ordering lock (the advisory lock every batch that hands out ids takes, held to its
  commit) is held, and waited for, sampled from `pg_locks` every few milliseconds;
- wake latency: a long-poll on the first instance, and once it is held, a POST to the last
  (the other instance, with two), from the moment the POST is sent to the moment the waiter
  has its answer, one callback at a time.

Without PostgreSQL's binaries (`apt-get install postgresql`) the part says so and is skipped.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

import aiohttp
import psutil

from bench import load
from bench.procs import Cores, Server
from bench.report import Figure, percentile
from bench.suite import Context
from bench.targets import PubSub, mint

ROOT = Path(__file__).resolve().parent.parent
SQLITE, PG1, PG2 = "SQLite, 1 instance", "PostgreSQL, 1 instance", "PostgreSQL, 2 instances"
SETUPS = ((SQLITE, 1), (PG1, 1), (PG2, 2))
SAMPLE_EVERY = 0.005  # seconds between two looks at pg_locks
LOCKS = (
    "SELECT count(*) FILTER (WHERE granted), count(*) FILTER (WHERE NOT granted)"
    " FROM pg_locks WHERE locktype = 'advisory'"
)


def _pg_server_module() -> Any:
    """The tests' throwaway server (tests/pg_server.py), reused as it is."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.append(tests)
    import pg_server

    return pg_server


def missing_reason() -> str | None:
    """Why the part cannot run here, or None."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed (pip install 'cbhub[postgres]')"
    if _pg_server_module().find_bindir() is None:
        return "PostgreSQL's binaries were not found (apt-get install postgresql)"
    return None


class Postgres:
    """The throwaway server, pinned to the servers' cores, and what it has cost so far."""

    def __init__(self, cores: Cores) -> None:
        module = _pg_server_module()
        self.server = module.PostgresServer(module.find_bindir(), durable=True)
        self.cores = cores
        self.excluded: set[int] = set()  # our own sampling backend: not the load's cost

    def start(self) -> None:
        self.server.start()
        if self.cores.server is not None:
            self._postmaster().cpu_affinity(sorted(self.cores.server))
        self.pin_children()

    def stop(self) -> None:
        self.server.stop()

    def _postmaster(self) -> psutil.Process:
        return psutil.Process(int((self.server.data / "postmaster.pid").read_text().split()[0]))

    def pin_children(self) -> None:
        # Backends forked later inherit the postmaster's affinity; those already running do not.
        if self.cores.server is None:
            return
        for child in self._postmaster().children(recursive=True):
            try:
                child.cpu_affinity(sorted(self.cores.server))
            except psutil.NoSuchProcess:
                pass

    def cpu_seconds(self) -> float:
        """CPU time of the postmaster and every process it runs now (the backends are cbhub's
        pooled connections, which live through a measurement), user and system."""
        total = 0.0
        root = self._postmaster()
        for process in (root, *root.children(recursive=True)):
            if process.pid in self.excluded:
                continue
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def create_database(self, name: str) -> str:
        psql = str(self.server.bindir / "psql")
        subprocess.run([psql, "-q", self.server.dsn(), "-c", f"CREATE DATABASE {name}"], check=True,
                       capture_output=True, timeout=60)
        return str(self.server.dsn(name))


class LockSampler:
    """Looks at the ordering lock every few milliseconds from a thread of its own: the share of
    samples in which some transaction holds it, and in which another waits for it."""

    def __init__(self, postgres: Postgres, dsn: str) -> None:
        self.postgres = postgres
        self.dsn = dsn
        self.samples = self.held = self.waited = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lock-sampler", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._failure is not None:
            raise RuntimeError(f"sampling pg_locks failed: {self._failure}") from self._failure

    def share(self, count: int) -> float:
        return 100.0 * count / self.samples if self.samples else 0.0

    def _run(self) -> None:
        try:
            asyncio.run(self._sample())
        except Exception as exc:  # noqa: BLE001  (reported by __exit__, in the suite's thread)
            self._failure = exc
            self._ready.set()

    async def _sample(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            self.postgres.excluded.add(await conn.fetchval("SELECT pg_backend_pid()"))
            self._ready.set()
            while not self._stop.is_set():
                held, waiting = await conn.fetchrow(LOCKS)
                self.samples += 1
                self.held += held > 0
                self.waited += waiting > 0
                await asyncio.sleep(SAMPLE_EVERY)
        finally:
            await conn.close()


def _scrape(server: Server) -> tuple[float, float]:
    """(writes, commits) so far: the sum and count of cbhub_commit_batch_size."""

    async def go() -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{server.url}/metrics") as response:
            return await response.text()

    text = asyncio.run(go())
    values = []
    for suffix in ("sum", "count"):
        match = re.search(rf"^cbhub_commit_batch_size_{suffix} (\S+)$", text, re.MULTILINE)
        values.append(float(match.group(1)) if match else 0.0)
    return values[0], values[1]


async def _wake(waiter: Server, poster: Server, samples: int, body: bytes) -> list[float]:
    """Seconds from a POST to `poster` to the answer of a long-poll held by `waiter`, sorted."""
    held_on = PubSub("cbhub", waiter)
    latencies = []
    async with asyncio.timeout(30 + samples), aiohttp.ClientSession() as waiters, aiohttp.ClientSession() as posters:
        tokens = await mint(posters, poster.url, samples)
        for token in tokens:
            waiting = asyncio.create_task(waiters.get(f"{waiter.url}/v1/callbacks/{token}/wait?timeout=30"))
            await held_on.until_held(posters, "long_poll", 1, timeout=10)
            sent = time.perf_counter()
            async with posters.post(f"{poster.url}/cb/{token}", data=body,
                                    headers={"Content-Type": "application/x-www-form-urlencoded"}) as response:
                if response.status != 200:
                    raise RuntimeError(f"postgres: POST answered {response.status}")
            answer = await waiting
            await answer.read()
            latencies.append(time.perf_counter() - sent)
            if answer.status != 200:
                raise RuntimeError(f"postgres: the wait answered {answer.status}")
    return sorted(latencies)


class Figures:
    """The part's rows: each setup beside the one it is compared with."""

    def __init__(self) -> None:
        self.rows: dict[str, Figure] = {}

    def row(self, name: str, unit: str, reference: str, **target: Any) -> Figure:
        if name not in self.rows:
            self.rows[name] = Figure(name, unit, reference_name=reference, **target)
        return self.rows[name]

    def add(self, what: str, unit: str, setup: str, value: float, compared: tuple[tuple[str, str], ...]) -> None:
        """`value` of `what` for `setup`: as cbhub's figure of each row comparing `setup` with
        another, and as the reference of each row comparing another with it."""
        for mine, theirs in compared:
            figure = self.row(f"{what}, {mine}", unit, theirs)
            if setup == mine:
                figure.cbhub.runs.append(value)
            if setup == theirs:
                figure.reference.runs.append(value)


# Which setup is compared with which, for each figure.
AGAINST_SQLITE_AND_ONE = ((PG1, SQLITE), (PG2, PG1))
AGAINST_ONE = ((PG2, PG1),)


def _instances(ctx: Context, setup: str, count: int, dsn: str | None, run: int) -> Iterator[Server]:
    env = {"CBHUB_STORAGE_BACKEND": "postgres", "CBHUB_STORAGE_DSN": dsn} if dsn else {}
    for n in range(count):
        tag = f"pg-{run}-{SETUPS.index((setup, count))}-{n}"
        yield ctx.start_cbhub(ctx.path(f"{tag}.db"), f"cbhub-{tag}.log", env)


def postgres(ctx: Context) -> list[Figure]:
    """Ingest and wake on PostgreSQL with one instance and with two, beside SQLite."""
    reason = missing_reason()
    if reason is not None:
        ctx.notes.append(f"postgres skipped: {reason}")
        return []
    plan = ctx.plan
    figures = Figures()
    figures.row(f"ingest answers not 2xx (+ socket errors), {PG2}", "count", PG1, target="0",
                check_value=lambda v: v == 0)
    pg = Postgres(ctx.cores)
    pg.start()
    try:
        for run in range(plan.runs):
            for setup, count in SETUPS:
                dsn = pg.create_database(f"bench_{run}_{count}_{SETUPS.index((setup, count))}") if setup != SQLITE else None
                servers: list[Server] = []
                try:
                    # One at a time, so that those started are stopped if another fails to start.
                    servers.extend(_instances(ctx, setup, count, dsn, run))
                    pg.pin_children()
                    _measure(ctx, figures, pg, setup, servers, dsn)
                finally:
                    for server in servers:
                        server.stop()
    finally:
        pg.stop()
    result = list(figures.rows.values())
    ctx.notes.append(_why(figures))
    return result


def _measure(ctx: Context, figures: Figures, pg: Postgres, setup: str, servers: list[Server], dsn: str | None) -> None:
    plan = ctx.plan
    tokens = asyncio.run(_mint_on(servers[0], plan.tokens))
    share = max(1, plan.connections // len(servers))
    loads = [load.Load(s.url, "POST", "/cb/", tokens, ctx.body, share, plan.ingest_seconds) for s in servers]
    warm_ups = [replace(each, seconds=plan.warm_up_seconds) for each in loads]
    load.drive_together(warm_ups, ctx.tool, ctx.cores, ctx.workdir)
    pg.pin_children()  # the pools' connections opened during the warm-up
    cbhub_before = sum(s.cpu_seconds() for s in servers)
    pg_before = pg.cpu_seconds() if dsn else 0.0
    batches_before = [_scrape(s) for s in servers]
    sampler = LockSampler(pg, dsn) if dsn else None
    if sampler is not None:
        with sampler:
            result = load.drive_together(loads, ctx.tool, ctx.cores, ctx.workdir)
    else:
        result = load.drive_together(loads, ctx.tool, ctx.cores, ctx.workdir)
    requests = max(result.requests, 1)
    cbhub_cpu = (sum(s.cpu_seconds() for s in servers) - cbhub_before) / requests * 1e6
    batches_after = [_scrape(s) for s in servers]
    writes = sum(after[0] - before[0] for before, after in zip(batches_before, batches_after))
    commits = sum(after[1] - before[1] for before, after in zip(batches_before, batches_after))
    figures.add("ingest throughput", "req/s", setup, result.rps, AGAINST_SQLITE_AND_ONE)
    figures.add("ingest cbhub CPU per request, all instances", "µs", setup, cbhub_cpu, AGAINST_SQLITE_AND_ONE)
    figures.add("deliveries per commit (group commit)", "count", setup, writes / max(commits, 1), AGAINST_SQLITE_AND_ONE)
    wake = asyncio.run(_wake(servers[0], servers[-1], plan.pg_wake_samples, ctx.body))
    for pct in (50, 99):
        figures.add(f"wake latency long-poll p{pct}, waiter on the first instance, POST to the last", "ms",
                    setup, percentile(wake, pct) * 1000, AGAINST_SQLITE_AND_ONE)
    if sampler is not None:
        figures.add("ingest PostgreSQL CPU per request", "µs", setup, (pg.cpu_seconds() - pg_before) / requests * 1e6,
                    AGAINST_ONE)
        figures.add("ordering lock held (share of samples)", "%", setup, sampler.share(sampler.held), AGAINST_ONE)
        figures.add("a writer waiting for the ordering lock (share of samples)", "%", setup,
                    sampler.share(sampler.waited), AGAINST_ONE)
    figures.add("ingest answers not 2xx (+ socket errors)", "count", setup, result.non_2xx + result.errors,
                AGAINST_ONE)


async def _mint_on(server: Server, count: int) -> list[str]:
    async with aiohttp.ClientSession() as session:
        return await mint(session, server.url, count)


def _median(figures: Figures, name: str, side: str) -> float:
    figure = figures.rows.get(name)
    value = getattr(figure, side).median if figure is not None else None
    return value if value is not None else float("nan")


def _why(figures: Figures) -> str:
    """The table's plain statement of what two instances ingest beside one, and why, in the
    figures of this run."""
    def pair(what: str) -> tuple[float, float]:
        return _median(figures, f"{what}, {PG2}", "reference"), _median(figures, f"{what}, {PG2}", "cbhub")

    one, two = pair("ingest throughput")
    cbhub_one, cbhub_two = pair("ingest cbhub CPU per request, all instances")
    pg_one, pg_two = pair("ingest PostgreSQL CPU per request")
    batch_one, batch_two = pair("deliveries per commit (group commit)")
    _, held = pair("ordering lock held (share of samples)")
    _, waited = pair("a writer waiting for the ordering lock (share of samples)")
    verdict = "less than" if two < one else "more than"
    ratio = two / one if one else float("nan")
    return (
        f"PostgreSQL: two instances ingest {verdict} one, {ratio:.2f} × ({two:,.0f} against {one:,.0f} req/s). "
        f"In this run: every batch that hands out ids takes one advisory lock (the ordering lock, so that ids are "
        f"handed out in commit order) and holds it to its commit, so the two instances' writers take turns (held "
        f"in {held:.0f}% of the samples, a writer waiting for it in {waited:.0f}%); one database does every commit "
        f"({batch_one:.1f} → {batch_two:.1f} deliveries per commit, PostgreSQL CPU per request {pg_one:.0f} → "
        f"{pg_two:.0f} µs); and each instance, woken by the other's NOTIFY, reads the other's commits back to "
        f"announce them (cbhub CPU per request, both instances together, {cbhub_one:.0f} → {cbhub_two:.0f} µs)."
    )

