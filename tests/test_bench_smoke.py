"""The benchmark suite still runs: a smoke run of every part, in seconds, with small counts.

Its figures are printed, never asserted: speed targets are met in the full benchmark
(`python -m bench`, docs/performance.md), not in a timed unit test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import load
from bench.postgres import missing_reason
from bench.procs import plan_cores, start_baseline

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(250)
def test_smoke_run_of_the_whole_suite(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    names = [figure["name"] for figure in results["figures"]]
    assert any(name.startswith("ingest throughput") for name in names)
    assert any(name.startswith("wake latency") for name in names)
    assert any(name.startswith("memory per idle") for name in names)
    # The wake in two parts: the software against nchan, the durable against software + commit.
    assert any(name.startswith("SQLite alone: one commit of one delivery p99") for name in names)
    assert any(name.endswith("p99, durable") for name in names)
    # Outcome classification and contracts.
    assert any(name.startswith("ingest CPU per request, JSON body, JSON Schema contract") for name in names)
    assert any(name.startswith("outcome classification") for name in names)
    if missing_reason() is None:
        assert any(name == "ingest throughput, PostgreSQL, 2 instances" for name in names)
        assert any(name.startswith("ordering lock held") for name in names)
    assert any(name.startswith("memory per long-poll,") and "at once" in name for name in names)
    assert all(figure["cbhub"]["runs"] for figure in results["figures"])


def test_python_load_generator_drives_the_baseline(tmp_path: Path) -> None:
    """The fallback used where wrk is not installed."""
    cores = plan_cores()
    server = start_baseline(tmp_path / "baseline.log", cores)
    try:
        posts = load.Load(server.url, "POST", "/cb/", ["a", "b"], b"x=1", connections=4, seconds=0.5)
        result = load.drive(posts, "python", cores, tmp_path)
    finally:
        server.stop()
    print(result.to_json())
    assert result.requests > 0
    assert result.non_2xx == 0 and result.errors == 0
