"""Server processes under test: started, pinned to their own core, watched, stopped.

Every server is a real process listening on 127.0.0.1 only. On a machine with two or more cores
the servers run on core 0 (`taskset`) and the load generators on the others, so that a server
and the client measuring it never compete for one core.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

HOST = "127.0.0.1"
SERVING = re.compile(r"serving on (http://\S+)")
# Held waiters need a descriptor each, on the client and on the server.
WANTED_FILES = 30_000


class StartFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Cores:
    """Where servers and load generators run; both None when the machine has one core."""

    server: frozenset[int] | None
    load: frozenset[int] | None

    @property
    def pinned(self) -> bool:
        return self.server is not None

    def server_prefix(self) -> list[str]:
        return _taskset(self.server)

    def load_prefix(self) -> list[str]:
        return _taskset(self.load)


def _taskset(cores: frozenset[int] | None) -> list[str]:
    if cores is None:
        return []
    return ["taskset", "-c", ",".join(str(core) for core in sorted(cores))]


def plan_cores() -> Cores:
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2 or shutil.which("taskset") is None:
        return Cores(None, None)
    return Cores(frozenset(available[:1]), frozenset(available[1:]))


def pin_self(cores: Cores) -> None:
    """Run this process (the Python load generators) on the load cores."""
    if cores.load is not None:
        os.sched_setaffinity(0, cores.load)


def raise_file_limit() -> int:
    """Raise the soft limit on open files towards the hard one; the limit now in force.
    Children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_FILES if hard == resource.RLIM_INFINITY else min(WANTED_FILES, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


@dataclass
class Server:
    """A started server: where it listens, which process holds its connections."""

    name: str
    proc: subprocess.Popen
    url: str
    log_path: Path
    started_in: float  # seconds from spawn to its "serving on" line
    _rss_pid: int | None = field(default=None)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def rss(self) -> int:
        """Resident memory, in bytes, of the process that serves (nginx: its worker)."""
        return psutil.Process(self._rss_pid or self.proc.pid).memory_info().rss

    def cpu_seconds(self) -> float:
        """CPU time the serving process has used so far, all its threads, user and system."""
        times = psutil.Process(self._rss_pid or self.proc.pid).cpu_times()
        return times.user + times.system

    def loop_thread_cpu_seconds(self) -> float:
        """CPU time of the serving process's main thread alone: for cbhub and the baseline, the
        one that runs the event loop (the rest are the writer, checkpoints, logs, ...)."""
        pid = self._rss_pid or self.proc.pid
        for thread in psutil.Process(pid).threads():
            if thread.id == pid:
                return float(thread.user_time + thread.system_time)
        return 0.0

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(
    name: str,
    argv: list[str],
    log_path: Path,
    cores: Cores,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Server:
    """Spawn `argv` on the server core and wait for its "serving on http://..." line."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CBHUB_")}
    full_env.update(env or {})
    log = log_path.open("w")
    spawned = time.perf_counter()
    proc = subprocess.Popen(
        [*cores.server_prefix(), *argv],
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,  # a Ctrl-C to the suite does not reach it mid-measurement
    )
    log.close()
    deadline = spawned + timeout
    while time.perf_counter() < deadline:
        match = SERVING.search(log_path.read_text(errors="replace"))
        if match:
            return Server(name, proc, match.group(1), log_path, time.perf_counter() - spawned)
        if proc.poll() is not None:
            break
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    raise StartFailed(f"{name} did not start:\n{log_path.read_text(errors='replace')[-2000:]}")


def start_cbhub(db: Path, log_path: Path, cores: Cores, env: dict[str, str] | None = None) -> Server:
    """`cbhub serve` as a user runs it, on a database of our own, with durable commits.

    The per-address rate limit on callback URLs is off: all the load comes from 127.0.0.1,
    which is what that limit exists to stop (a version of cbhub without it ignores the
    variable)."""
    argv = [sys.executable, "-m", "cbhub", "serve", "--host", HOST, "--port", "0", "--db", str(db)]
    settings = {"CBHUB_STORAGE_SYNCHRONOUS": "FULL", "CBHUB_INGEST_RATE_PER_IP": "0"}
    return start("cbhub", argv, log_path, cores, {**settings, **(env or {})})


def start_baseline(log_path: Path, cores: Cores, event_loop: str = "auto") -> Server:
    argv = [sys.executable, "-m", "bench.baseline", "--host", HOST, "--port", "0", "--event-loop", event_loop]
    # Importable from wherever the suite was started.
    return start("baseline", argv, log_path, cores, {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
