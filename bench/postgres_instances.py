"""Cross-instance figures: cbhub over PostgreSQL with one and two instances, beside SQLite on
one node, in the same run on the same machine.

    python -m bench.postgres_instances [--seconds 10] [--connections 64] [--samples 200]

It starts a throwaway PostgreSQL server (initdb + pg_ctl in a temporary directory, fsync on:
durable, as in production) unless --dsn names one, and `cbhub serve` processes on loopback
ports. Measured:

- ingest req/s: POSTs to /cb/{token} (the suite's 1 KB Marketing Cloud form), each
  answered 200 only after its commit, from loader processes holding --connections open, for
  --seconds; with two instances the load is spread evenly over both.
- wake latency: a long-poll waiting on instance A, then a POST to instance B (or to the same
  instance for SQLite); from the moment the POST is sent to the moment the waiter has its
  answer, one callback at a time, p50 and p99 over --samples.

Results are printed as a Markdown table and written to bench/results/postgres-instances.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench.payload import CONTENT_TYPE, marketing_cloud_body  # noqa: E402
from pg_server import PostgresServer, find_bindir  # noqa: E402  (the tests' throwaway server)

BODY = marketing_cloud_body()
FORM = {"Content-Type": CONTENT_TYPE}


class Instance:
    """One `cbhub serve` on a free loopback port, logging warnings only (an access log line
    per request would cost more than some of the work measured)."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CBHUB_")}
        full_env.update(env, CBHUB_INGEST_RATE_PER_IP="0")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cbhub", "serve", "--port", str(port), "--log-level", "warning"],
            cwd=workdir,
            env=full_env,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("cbhub did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _load(urls: list[str], tokens: list[str], connections: int, seconds: float, counts: multiprocessing.Queue) -> None:
    """One loader process: `connections` clients posting as fast as they are answered."""

    async def run() -> int:
        done = 0
        deadline = time.monotonic() + seconds
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def client(n: int) -> None:
                nonlocal done
                url = urls[n % len(urls)]
                i = n
                while time.monotonic() < deadline:
                    async with session.post(f"{url}/cb/{tokens[i % len(tokens)]}", data=BODY, headers=FORM) as r:
                        await r.read()
                        if r.status != 200:
                            raise RuntimeError(f"POST answered {r.status}")
                    done += 1
                    i += connections

            await asyncio.gather(*(client(n) for n in range(connections)))
        return done

    counts.put(asyncio.run(run()))


async def _mint(url: str, count: int) -> list[str]:
    async with aiohttp.ClientSession() as session:
        tokens: list[str] = []
        while len(tokens) < count:
            batch = min(1000, count - len(tokens))
            async with session.post(f"{url}/v1/callbacks/batch", json={"count": batch, "ttl": 86400}) as r:
                tokens += [c["token"] for c in (await r.json())["callbacks"]]
        return tokens


def ingest_rate(urls: list[str], connections: int, seconds: float, loaders: int) -> float:
    tokens = asyncio.run(_mint(urls[0], 2000))
    counts: multiprocessing.Queue = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=_load, args=(urls, tokens, connections // loaders, seconds, counts))
        for _ in range(loaders)
    ]
    started = time.monotonic()
    for proc in procs:
        proc.start()
    total = sum(counts.get(timeout=seconds + 60) for _ in procs)
    for proc in procs:
        proc.join()
    return total / (time.monotonic() - started)


async def wake_latencies(waiter_url: str, poster_url: str, samples: int) -> list[float]:
    tokens = await _mint(poster_url, samples)
    latencies = []
    async with aiohttp.ClientSession() as waiters, aiohttp.ClientSession() as posters:
        for token in tokens:
            waiting = asyncio.ensure_future(waiters.get(f"{waiter_url}/v1/callbacks/{token}/wait?timeout=30"))
            await asyncio.sleep(0.02)  # registered on A
            sent = time.perf_counter()
            async with posters.post(f"{poster_url}/cb/{token}", data=BODY, headers=FORM) as r:
                assert r.status == 200
            response = await waiting
            await response.read()
            latencies.append(time.perf_counter() - sent)
            assert response.status == 200
    return sorted(latencies)


def percentile(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--loaders", type=int, default=2, help="load generator processes")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--dsn", help="an existing, empty PostgreSQL database (default: a throwaway server)")
    args = parser.parse_args()

    server = None
    dsn = args.dsn
    if dsn is None:
        bindir = find_bindir()
        if bindir is None:
            sys.exit("no PostgreSQL binaries found (apt-get install postgresql), and no --dsn given")
        server = PostgresServer(bindir, durable=True)
        server.start()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as workdir:

            def database(name: str) -> str:
                """A new database on the throwaway server, or the one --dsn names."""
                if server is None:
                    return dsn
                subprocess.run([str(server.bindir / "psql"), "-q", server.dsn(), "-c", f"CREATE DATABASE {name}"], check=True)
                return server.dsn(name)

            for name, env, count in (
                ("SQLite, 1 instance", {"CBHUB_STORAGE_PATH": str(Path(workdir) / "bench.db")}, 1),
                ("PostgreSQL, 1 instance", {"CBHUB_STORAGE_BACKEND": "postgres", "CBHUB_STORAGE_DSN": database("one")}, 1),
                ("PostgreSQL, 2 instances", {"CBHUB_STORAGE_BACKEND": "postgres", "CBHUB_STORAGE_DSN": database("two")}, 2),
            ):
                instances = [Instance(env, Path(workdir)) for _ in range(count)]
                try:
                    urls = [instance.url for instance in instances]
                    rate = ingest_rate(urls, args.connections, args.seconds, args.loaders)
                    wake = asyncio.run(wake_latencies(urls[0], urls[-1], args.samples))
                finally:
                    for instance in instances:
                        instance.stop()
                rows.append(
                    {
                        "setup": name,
                        "ingest_per_s": round(rate),
                        "wake_p50_ms": round(percentile(wake, 0.5), 2),
                        "wake_p99_ms": round(percentile(wake, 0.99), 2),
                        "wake_path": "POST to B, waiter on A" if count == 2 else "POST and waiter on one instance",
                    }
                )
                print(f"{name}: {rows[-1]}", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    print(f"\n{os.cpu_count()} CPUs; {args.connections} connections from {args.loaders} loader processes for "
          f"{args.seconds:.0f} s; {args.samples} wake samples; PostgreSQL with fsync on\n")
    print("| setup | ingest req/s | wake p50 (ms) | wake p99 (ms) | wake path |")
    print("| --- | ---: | ---: | ---: | --- |")
    for row in rows:
        print(f"| {row['setup']} | {row['ingest_per_s']} | {row['wake_p50_ms']} | {row['wake_p99_ms']} | {row['wake_path']} |")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "postgres-instances.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
