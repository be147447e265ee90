"""`cbhub serve` and `cbhub backup`: the commands that load the server."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import resource
import signal
import sqlite3
import ssl
import sys
from urllib.parse import urlsplit

from aiohttp import web

from cbhub import __version__
from cbhub.app import create_app, stop_gracefully
from cbhub.cli import eventloop
from cbhub.config import (
    Config,
    ConfigError,
    StorageConfig,
    exposure_problem,
    load_config,
)
from cbhub.errors import CbhubError, StoreError
from cbhub.http.access import AccessLogger
from cbhub.http.deadline import DeadlineAppRunner
from cbhub.http.keys import METRICS
from cbhub.observe.logs import setup_logging
from cbhub.store.sqlite.store import backup_database

log = logging.getLogger("cbhub")
STRAGGLER_GRACE = 0.5


def serve_command(args: argparse.Namespace) -> int:
    try:
        config = load_config(
            args.config,
            overrides={
                "server.host": args.host,
                "server.port": args.port,
                "storage.path": args.db,
                "log.level": args.log_level,
                "log.format": args.log_format,
            },
        )
    except ConfigError as exc:
        print(f"cbhub: {exc}", file=sys.stderr)
        return 2
    problem = exposure_problem(config)
    if problem is not None:
        print(f"cbhub: refusing to start: {problem}", file=sys.stderr)
        return 2
    setup_logging(config.log.level, config.log.format)
    try:
        factory = eventloop.loop_factory(config.server.event_loop)
    except ImportError:
        print("cbhub: server.event_loop is uvloop, which is not installed (pip install uvloop)", file=sys.stderr)
        return 2
    log.info("event loop: %s", eventloop.resolve(config.server.event_loop))
    log.info("open files: up to %s", raise_open_files_limit())
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(config))
    except (CbhubError, OSError) as exc:  # the store cannot be opened, the port taken, ...
        print(f"cbhub: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def backup_command(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, overrides={"storage.path": args.db})
    except ConfigError as exc:
        print(f"cbhub: {exc}", file=sys.stderr)
        return 2
    if config.storage.backend != "sqlite":
        print(
            "cbhub: backup copies a SQLite database; back PostgreSQL up with its own tools"
            " (pg_dump, pg_basebackup; see docs/postgres.md)",
            file=sys.stderr,
        )
        return 2
    try:
        pages = backup_database(config.storage.path, args.dest)
    except (OSError, sqlite3.Error, StoreError) as exc:
        print(f"cbhub: backup failed: {exc}", file=sys.stderr)
        return 1
    print(f"backed up {config.storage.path} to {args.dest} ({pages} pages)", file=sys.stderr)
    return 0


# Collect the youngest generation after this many new container objects instead of CPython's
# 700: every callback request makes a few dozen (aiohttp's request and response, cbhub's
# records), so the default ran a collection every few requests, about 8 µs of CPU per request
# under load (measured in `python -m bench`). Nothing is kept longer than one such interval.
YOUNG_COLLECTION_THRESHOLD = 20_000


def settle_garbage_collector() -> None:
    """Once the server is up: what startup made (modules, the app, its routes) lives as long as
    the process, so it is moved out of the collector's sight (gc.freeze), and collections of
    young objects run less often (YOUNG_COLLECTION_THRESHOLD). Full collections then walk only
    what serving made, never the startup heap."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


def raise_open_files_limit() -> str:
    """Raise the soft limit on open files to the hard one; what the limit now is, for the log.

    Every waiting client (long-poll, websocket, event stream) holds a descriptor, and so does
    every connection still sending its request: a soft limit left at a shell's usual 1024 would
    refuse callbacks long before the machine must. The hard limit is the administrator's
    (systemd's LimitNOFILE=, ulimit -Hn) and is kept."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return _limit_text(soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        # macOS, for one, refuses an unlimited soft limit: keep what there is.
        return f"{_limit_text(soft)} (the hard limit, {_limit_text(hard)}, was refused: {exc})"
    return f"{_limit_text(hard)} (raised from {_limit_text(soft)})"


def _limit_text(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def describe_storage(storage: StorageConfig) -> str:
    """Where the data is, for the log: never a password."""
    if storage.backend == "sqlite":
        return f"database {storage.path}"
    parts = urlsplit(storage.dsn)
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"PostgreSQL {parts.scheme}://{user}{host}{port}{parts.path}"


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context from server.tls_cert / server.tls_key; None: plain HTTP.
    A missing or unreadable file raises OSError (ssl.SSLError is one), which stops the start."""
    if not config.server.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.server.tls_cert, config.server.tls_key)
    return context


async def serve(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully within server.shutdown_timeout."""
    context = tls_context(config)
    scheme = "https" if context is not None else "http"
    app = create_app(config)
    runner = DeadlineAppRunner(
        app,
        read_timeout=config.server.read_timeout,
        on_read_timeout=app[METRICS].read_timeouts.inc,
        handler_cancellation=True,  # a client that hangs up cancels its long-poll at once
        access_log=logging.getLogger("cbhub.access") if config.log.access else None,
        access_log_class=AccessLogger,
        # The real wait happens in stop_gracefully; this is only for what is left after it.
        shutdown_timeout=STRAGGLER_GRACE,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port, backlog=1024, ssl_context=context)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        for address in runner.addresses:
            host, port = address[0], address[1]
            shown = f"[{host}]" if ":" in host else host
            log.info(
                "cbhub %s serving on %s://%s:%d (%s)", __version__, scheme, shown, port, describe_storage(config.storage)
            )
        if config.auth.api_keys:
            log.info("client API: %d API keys (%s)", len(config.auth.api_keys), ", ".join(config.auth.api_keys))
        else:
            log.info("client API: no API keys; anyone who can reach the server can use it")
        settle_garbage_collector()
        await stop.wait()
        await site.stop()  # no new connections
        await stop_gracefully(app, max(config.server.shutdown_timeout - STRAGGLER_GRACE, 0.1))
    finally:
        await runner.cleanup()
