"""The baseline: a bare aiohttp app whose callback route reads the body and answers 200.

No storage, no routing beyond one route, no logging: the ceiling for any aiohttp service on
this machine. For the held-waiters part it also holds bare waiters on cbhub's paths: a long-poll
that sleeps and a websocket with cbhub's heartbeat that reads and drops, with no state beyond
what aiohttp keeps per connection (the floor for any aiohttp service holding idle clients), and
counts them on /metrics as cbhub does. Run as `python -m bench.baseline --port 0`; it logs "serving on http://HOST:PORT"
on stderr like `cbhub serve`, so the suite starts both the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiohttp import web

from cbhub.config import RealtimeConfig
from cbhub.cli.eventloop import EVENT_LOOPS, loop_factory

ANSWER = b'{"ok":true}'
HEARTBEAT = RealtimeConfig().heartbeat  # cbhub's default: aiohttp's ping timer, as cbhub has
HELD = web.AppKey("held", dict)


async def receive(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


async def wait(request: web.Request) -> web.Response:
    held = request.app[HELD]
    held["long_poll"] += 1
    try:
        await asyncio.sleep(float(request.query.get("timeout", "30")))
    finally:
        held["long_poll"] -= 1
    return web.Response(status=204)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT)
    await ws.prepare(request)
    held = request.app[HELD]
    held["websocket"] += 1
    try:
        async for _ in ws:
            pass
    finally:
        held["websocket"] -= 1
    return ws


async def metrics(request: web.Request) -> web.Response:
    lines = [f'cbhub_waiters{{kind="{kind}"}} {count}' for kind, count in request.app[HELD].items()]
    return web.Response(text="\n".join(lines) + "\n")


def create_app() -> web.Application:
    app = web.Application()
    app[HELD] = {"long_poll": 0, "websocket": 0}
    for method in ("POST", "PUT", "PATCH"):
        app.router.add_route(method, "/cb/{token}", receive)
    app.router.add_get("/v1/callbacks/{token}/wait", wait)
    app.router.add_get("/v1/callbacks/{token}/ws", websocket)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(create_app())
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound_host, bound_port = runner.addresses[0][:2]
    print(f"baseline serving on http://{bound_host}:{bound_port}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto", help="as cbhub's server.event_loop")
    args = parser.parse_args()
    # The same loop as `cbhub serve` on this machine: the baseline differs by nothing but the work.
    with asyncio.Runner(loop_factory=loop_factory(args.event_loop)) as runner:
        runner.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
