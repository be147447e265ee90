"""The `cbhub` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Sequence

from aiohttp import web

from cbhub import __version__
from cbhub.app import create_app
from cbhub.cli_client import add_commands, protect_tokens
from cbhub.config import Config, ConfigError, load_config
from cbhub.store import StoreError

log = logging.getLogger("cbhub")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbhub", description="Where asynchronous callbacks land and are awaited.")
    parser.add_argument("--version", action="version", version=f"cbhub {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(commands)  # new, wait, show, tail, cancel: the client side (cli_client.py)

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--config", metavar="PATH", help="a TOML configuration file")
    serve.add_argument("--host", help="address to listen on (server.host)")
    serve.add_argument("--port", help="port to listen on (server.port)")
    serve.add_argument("--db", metavar="PATH", help="SQLite database file (storage.path)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(protect_tokens(sys.argv[1:] if argv is None else argv))
    return args.run(args)


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # aiosqlite logs every statement at debug: not what "cbhub debug" means.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    try:
        config = load_config(
            args.config,
            overrides={"server.host": args.host, "server.port": args.port, "storage.path": args.db},
        )
    except ConfigError as exc:
        print(f"cbhub: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config))
    except (StoreError, OSError) as exc:
        print(f"cbhub: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


async def serve(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully within server.shutdown_timeout."""
    app = create_app(config)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,  # a client that hangs up cancels its long-poll at once
        access_log=None,
        shutdown_timeout=config.server.shutdown_timeout,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port, backlog=1024)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        for address in runner.addresses:
            host, port = address[0], address[1]
            shown = f"[{host}]" if ":" in host else host
            log.info("cbhub %s serving on http://%s:%d (database %s)", __version__, shown, port, config.storage.path)
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
