"""The baseline: a bare aiohttp app whose callback route reads the body and answers 200.

No storage, no routing beyond one route, no logging: the ceiling for any aiohttp service on
this machine. Run as `python -m bench.baseline --port 0`; it logs "serving on http://HOST:PORT"
on stderr like `cbhub serve`, so the suite starts both the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiohttp import web

from cbhub.eventloop import EVENT_LOOPS, loop_factory

ANSWER = b'{"ok":true}'


async def receive(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


def create_app() -> web.Application:
    app = web.Application()
    for method in ("POST", "PUT", "PATCH"):
        app.router.add_route(method, "/cb/{token}", receive)
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
