"""What deciding a delivery's outcome and checking a contract cost at ingest, per request.

`python -m bench --parts classify`: the server CPU per request of the ingest load (as in the
ingest part) for four kinds of delivery, each beside the bare aiohttp baseline measured in the
same run, their runs alternating:

- the Marketing Cloud form on a server with `[outcomes] builtin = false` (no rule decides: the
  cost before outcomes were classified);
- the same form with the built-in rules (the default: the Marketing Cloud rule decides);
- a 1 KB JSON body (the built-in JSON rule decides);
- the same JSON body on callbacks minted with a small JSON Schema contract (it fits).

The differences (built-in − off, contract − plain JSON) are what classification and the
contract check cost per request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

import aiohttp

from bench import load
from bench.payload import (
    CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    JSON_SCHEMA,
    json_body,
    marketing_cloud_body,
)
from bench.procs import Server
from bench.report import Figure
from bench.suite import Context, running
from bench.targets import mint


@dataclass(frozen=True)
class Kind:
    """One kind of delivery: what is posted, where, and the outcome each delivery must get (so
    that the figures are of the path they claim to measure)."""

    label: str
    server: str  # "default" or "builtin_off"
    body: bytes
    content_type: str
    mint_fields: dict[str, object] | None
    outcome: str


KINDS = (
    Kind("Marketing Cloud form, outcome rules off (before)", "builtin_off", marketing_cloud_body(), CONTENT_TYPE,
         None, "unknown"),
    Kind("Marketing Cloud form, built-in outcome rules", "default", marketing_cloud_body(), CONTENT_TYPE, None, "ok"),
    Kind("JSON body, built-in outcome rules", "default", json_body(), JSON_CONTENT_TYPE, None, "ok"),
    Kind("JSON body, JSON Schema contract", "default", json_body(), JSON_CONTENT_TYPE,
         {"contract": {"json_schema": JSON_SCHEMA}}, "ok"),
)


def _mint(server: Server, count: int, fields: dict[str, object] | None) -> list[str]:
    async def go() -> list[str]:
        async with aiohttp.ClientSession() as session:
            return await mint(session, server.url, count, fields=fields)

    return asyncio.run(go())


def _check_outcome(server: Server, token: str, kind: Kind) -> None:
    """The delivery got the outcome its kind is about (and, under a contract, fitted it)."""

    async def go() -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{server.url}/v1/callbacks/{token}") as response,
        ):
            return str((await response.json())["outcome"])

    outcome = asyncio.run(go())
    if outcome != kind.outcome:
        raise RuntimeError(f"classify: {kind.label}: a delivery's outcome is {outcome!r}, not {kind.outcome!r}")


def classify(ctx: Context) -> list[Figure]:
    """Server CPU per request for each kind of delivery, beside the baseline of the same run."""
    plan = ctx.plan
    cpu = {
        kind.label: Figure(f"ingest CPU per request, {kind.label}", "µs", reference_name="baseline") for kind in KINDS
    }
    non_2xx = Figure("classify: answers not 2xx (+ socket errors), all kinds", "count", target="0",
                     check_value=lambda v: v == 0)
    # Differences of medians would mix runs; each run's difference, then their median.
    rules = Figure("outcome classification: CPU per request (built-in rules − rules off)", "µs")
    contract = Figure("contract check: CPU per request (JSON Schema contract − plain JSON)", "µs")
    off_env = {"CBHUB_OUTCOMES_BUILTIN": "false"}
    with (
        running(ctx.start_baseline()) as baseline,
        running(ctx.start_cbhub(ctx.path("classify.db"), "cbhub-classify.log")) as default,
        running(ctx.start_cbhub(ctx.path("classify-off.db"), "cbhub-classify-off.log", off_env)) as builtin_off,
    ):
        servers = {"default": default, "builtin_off": builtin_off}
        loads = {}
        for kind in KINDS:
            server = servers[kind.server]
            tokens = _mint(server, plan.tokens, kind.mint_fields)
            loads[kind.label] = load.Load(server.url, "POST", "/cb/", tokens, kind.body, plan.connections,
                                          plan.classify_seconds, kind.content_type)
        ctx.drive_posts(baseline, loads[KINDS[0].label].tokens, plan.warm_up_seconds)
        for kind in KINDS:
            warm_up = loads[kind.label]
            load.drive(replace(warm_up, seconds=plan.warm_up_seconds), ctx.tool, ctx.cores, ctx.workdir)
            _check_outcome(servers[kind.server], warm_up.tokens[0], kind)
        errors = 0
        for _ in range(plan.runs):
            before = baseline.cpu_seconds()
            result = ctx.drive_posts(baseline, loads[KINDS[0].label].tokens, plan.classify_seconds)
            baseline_cpu = (baseline.cpu_seconds() - before) / max(result.requests, 1) * 1e6
            for kind in KINDS:
                server = servers[kind.server]
                before = server.cpu_seconds()
                result = load.drive(loads[kind.label], ctx.tool, ctx.cores, ctx.workdir)
                cpu[kind.label].cbhub.runs.append((server.cpu_seconds() - before) / max(result.requests, 1) * 1e6)
                cpu[kind.label].reference.runs.append(baseline_cpu)
                errors += result.non_2xx + result.errors
            run = {label: figure.cbhub.runs[-1] for label, figure in cpu.items()}
            rules.cbhub.runs.append(run[KINDS[1].label] - run[KINDS[0].label])
            contract.cbhub.runs.append(run[KINDS[3].label] - run[KINDS[2].label])
        non_2xx.cbhub.runs.append(errors)
    return [*cpu.values(), rules, contract, non_2xx]
