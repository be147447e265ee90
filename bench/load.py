"""The load generator: wrk with bench/wrk.lua when installed, else the same load from Python.

Both post (or get) round-robin over many tokens on a fixed number of keep-alive connections,
for a fixed time and at most a fixed number of requests, and report requests per second, the
latency distribution and every answer that was not 2xx.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from bench.payload import CONTENT_TYPE
from bench.procs import Cores
from bench.report import percentile

LUA = Path(__file__).with_name("wrk.lua")
# Stop after this many requests per second of the run, whatever the speed: bounded in count too.
MAX_RATE = 200_000


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    non_2xx: int
    errors: int  # connection errors and timeouts
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, float]:
        return {**asdict(self), "rps": round(self.rps, 1)}


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


@dataclass(frozen=True)
class Load:
    """`connections` clients sending `method base_url + prefix + token` (with `body`), one
    token after another, for `seconds`."""

    base_url: str
    method: str
    prefix: str
    tokens: list[str]
    body: bytes | None
    connections: int
    seconds: float
    content_type: str = CONTENT_TYPE  # the body's


def drive(load: Load, tool: str, cores: Cores, workdir: Path) -> LoadResult:
    """Apply `load` with `tool` ("wrk" or "python") and report what came back."""
    if tool == "wrk":
        return _drive_wrk(load, cores, workdir)
    return asyncio.run(_drive_python(load))


def drive_together(loads: Sequence[Load], tool: str, cores: Cores, workdir: Path) -> LoadResult:
    """Apply several loads at once (on servers of their own, say), as one: their requests,
    answers not 2xx and errors summed, the longest duration, and the worst of their p50s and
    p99s (each generator sees only its own requests)."""
    if tool == "wrk":
        procs = [_start_wrk(load, cores, workdir, f"-{n}") for n, load in enumerate(loads)]
        results = [_wrk_result(proc, load) for proc, load in zip(procs, loads)]
    else:

        async def all_of() -> list[LoadResult]:
            return list(await asyncio.gather(*(_drive_python(load) for load in loads)))

        results = asyncio.run(all_of())
    return LoadResult(
        requests=sum(r.requests for r in results),
        seconds=max(r.seconds for r in results),
        non_2xx=sum(r.non_2xx for r in results),
        errors=sum(r.errors for r in results),
        p50_ms=max(r.p50_ms for r in results),
        p99_ms=max(r.p99_ms for r in results),
    )


def _drive_wrk(load: Load, cores: Cores, workdir: Path) -> LoadResult:
    return _wrk_result(_start_wrk(load, cores, workdir), load)


def _start_wrk(load: Load, cores: Cores, workdir: Path, tag: str = "") -> subprocess.Popen[str]:
    tokens_file = workdir / f"tokens{tag}.txt"
    tokens_file.write_text("\n".join(load.tokens) + "\n")
    args = [load.method, load.prefix, str(tokens_file)]
    if load.body is not None:
        body_file = workdir / f"body{tag}.bin"
        body_file.write_bytes(load.body)
        args += [str(body_file), load.content_type]
    threads = len(cores.load) if cores.load else 1
    command = [
        *cores.load_prefix(),
        "wrk",
        f"-t{threads}",
        f"-c{load.connections}",
        f"-d{max(1, round(load.seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        load.base_url,
        "--",
        *args,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wrk_result(proc: subprocess.Popen[str], load: Load) -> LoadResult:
    try:
        stdout, stderr = proc.communicate(timeout=load.seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, stdout, stderr)
    line = next(line for line in reversed(stdout.splitlines()) if line.startswith("{"))
    report = json.loads(line)
    return LoadResult(
        requests=report["requests"],
        seconds=report["duration_us"] / 1e6,
        non_2xx=report["non_2xx"],
        errors=report["socket_errors"] + report["timeouts"],
        p50_ms=report["latency_us"]["p50"] / 1000,
        p99_ms=report["latency_us"]["p99"] / 1000,
    )


async def _drive_python(load: Load) -> LoadResult:
    latencies: list[float] = []
    counts = {"non_2xx": 0, "errors": 0}
    headers = {"Content-Type": load.content_type} if load.body is not None else {}
    budget = int(load.seconds * MAX_RATE)
    tokens = load.tokens
    connector = aiohttp.TCPConnector(limit=load.connections)
    async with aiohttp.ClientSession(load.base_url, connector=connector) as session:
        started = time.perf_counter()
        deadline = started + load.seconds

        async def client(offset: int) -> None:
            nonlocal budget
            i = offset
            while budget > 0 and time.perf_counter() < deadline:
                budget -= 1
                i = (i + 1) % len(tokens)
                sent = time.perf_counter()
                try:
                    url = load.prefix + tokens[i]
                    async with session.request(load.method, url, data=load.body, headers=headers) as response:
                        await response.read()
                        if not 200 <= response.status < 300:
                            counts["non_2xx"] += 1
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    counts["errors"] += 1
                    continue
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(client(n * 7919) for n in range(load.connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return LoadResult(
        requests=len(latencies),
        seconds=elapsed,
        non_2xx=counts["non_2xx"],
        errors=counts["errors"],
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
    )
