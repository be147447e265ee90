"""`python -m bench`: the whole suite in one run; `python -m bench --smoke` in seconds."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from bench import load, nchan
from bench.parts import PARTS
from bench.plan import FULL, SMOKE
from bench.procs import pin_self, plan_cores, raise_file_limit
from bench.report import Figure, table, write_json
from bench.suite import Context
from cbhub.cli.eventloop import EVENT_LOOPS, resolve

RESULTS = Path(__file__).with_name("results")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="small counts, one run: seconds, for CI")
    parser.add_argument("--runs", type=int, help="runs per figure (median taken; default 3, smoke 1)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk when installed (auto), or the Python one")
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto",
                        help="cbhub's server.event_loop, used by the baseline too (default auto: uvloop when installed)")
    parser.add_argument("--no-nchan", action="store_true", help="skip the nchan comparison")
    parser.add_argument("--out", type=Path, help="results file (default bench/results/results-<time>.json)")
    return parser


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("cbhub", "aiohttp", "uvloop"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if args.runs:
        plan = type(plan)(**{**plan.__dict__, "runs": args.runs})
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        print(f"unknown part(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    tool = "wrk" if args.load == "wrk" or (args.load == "auto" and load.have_wrk()) else "python"
    cores = plan_cores()
    pin_self(cores)
    files = raise_file_limit()
    notes: list[str] = []
    use_nchan = not args.no_nchan and nchan.find_module() is not None
    if not use_nchan:
        notes.append("nchan skipped: " + ("--no-nchan" if args.no_nchan else nchan.missing_reason()))
    if tool == "python":
        notes.append("load from the Python generator (wrk is not installed or not chosen): it, not the server, may be the limit")
    if not cores.pinned:
        notes.append("servers and load share the cores: taskset missing or a single core")
    if files < 2 * plan.held_waiters:
        notes.append(f"open-file limit is {files}: the held-waiters part may fail")
    started = time.monotonic()
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="cbhub-bench-") as workdir:
        ctx = Context(plan, cores, Path(workdir), tool, use_nchan, args.event_loop, notes=notes)
        for part in PARTS:
            if part in parts:
                print(f"[bench] {part}...", file=sys.stderr, flush=True)
                figures.extend(PARTS[part](ctx))
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "plan": plan.__dict__,
        "cpus": os.cpu_count(),
        "pinned": {"server": sorted(cores.server or ()), "load": sorted(cores.load or ())},
        "load_generator": tool,
        "event_loop": resolve(args.event_loop),
        "nchan": use_nchan,
        "versions": _versions(),
        "seconds": round(time.monotonic() - started, 1),
    }
    out = args.out or RESULTS / f"results-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    write_json(out, meta, figures, notes)
    print(table(figures))
    for note in notes:
        print(f"- {note}")
    print(f"\n{len(figures)} figures in {meta['seconds']} s; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
