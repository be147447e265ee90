"""The `cbhub` command line: the parser, and a dispatch that imports only the command it runs.

The client commands (new, wait, show, tail, cancel, group; `cbhub.cli.client`) load the client alone,
so `url=$(cbhub new)` in a shell loop starts fast and needs none of the server's modules; serve
and backup (`cbhub.cli.serve`) load the server. Logging is configured by `serve` only.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from cbhub import __version__
from cbhub.cli.client import add_commands, protect_tokens

# The server's commands, run by "module:function" so that parsing their arguments loads nothing.
SERVE = "cbhub.cli.serve:serve_command"
BACKUP = "cbhub.cli.serve:backup_command"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbhub", description="Where asynchronous callbacks land and are awaited.")
    parser.add_argument("--version", action="version", version=f"cbhub {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(commands)  # new, wait, show, tail, cancel, group: the client side

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--config", metavar="PATH", help="a TOML configuration file")
    serve.add_argument("--host", help="address to listen on (server.host)")
    serve.add_argument("--port", help="port to listen on (server.port)")
    serve.add_argument("--db", metavar="PATH", help="SQLite database file (storage.path)")
    serve.add_argument("--log-level", help="debug, info, warning or error (log.level)")
    serve.add_argument("--log-format", help="text or json (log.format)")
    serve.set_defaults(run=SERVE)

    backup = commands.add_parser("backup", help="copy the database to DEST, safely while the server runs")
    backup.add_argument("dest", metavar="DEST", help="the backup file to write (replaced if it exists)")
    backup.add_argument("--config", metavar="PATH", help="a TOML configuration file")
    backup.add_argument("--db", metavar="PATH", help="SQLite database file (storage.path)")
    backup.set_defaults(run=BACKUP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(protect_tokens(sys.argv[1:] if argv is None else argv))
    run = args.run
    if isinstance(run, str):
        module, _, function = run.partition(":")
        run = getattr(importlib.import_module(module), function)
    return int(run(args))
