"""The client commands of the `cbhub` command line: new, wait, show, tail, cancel.

Made for shell scripts: `url=$(cbhub new)`, hand the URL out, `cbhub wait "$url"`. What a
command produces goes to stdout; messages go to stderr as one line starting "cbhub: ".
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import urlsplit

import orjson

from cbhub.cli.progress import Spinner
from cbhub.client import CallbackClosed, CbHub, CbHubError, Delivery
from cbhub.client.hub import API_KEY_ENV, DEFAULT_URL, URL_ENV

# `cbhub wait` exit codes.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_TIMEOUT = 2
EXIT_CLOSED = 3  # expired or cancelled
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

Command = Callable[[CbHub, argparse.Namespace], Awaitable[int]]

COMMANDS = ("new", "wait", "show", "tail", "cancel")
# A token is URL-safe base64, so one in 64 starts with "-" and would pass for an option. No option
# of ours is this long or looks like this, so an argument that does is a token (or a group name).
TOKEN_LIKE = re.compile(r"-[-\w]{19,}")
VALUE_OPTIONS = frozenset({"--url", "--api-key", "--label", "--group", "--token", "--correlation-id"})


def protect_tokens(argv: Sequence[str]) -> list[str]:
    """`argv` with every token that starts with "-" made unmistakable for argparse: as an
    option's value it is joined to it (`--token=-x...`), as the positional it goes after `--`."""
    args = list(argv)
    if not args or args[0] not in COMMANDS or "--" in args:
        return args
    kept: list[str] = []
    positional: list[str] = []
    for arg in args:
        if not TOKEN_LIKE.fullmatch(arg):
            kept.append(arg)
        elif kept and kept[-1] in VALUE_OPTIONS:
            kept[-1] = f"{kept[-1]}={arg}"
        else:
            positional.append(arg)
    return kept + ["--", *positional] if positional else kept


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client commands to the `cbhub` parser's subcommands."""
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--url",
        default=os.environ.get(URL_ENV) or DEFAULT_URL,
        help=f"the cbhub server (default: ${URL_ENV}, else {DEFAULT_URL})",
    )
    server.add_argument(
        "--api-key", default=os.environ.get(API_KEY_ENV), help=f"API key to send (default: ${API_KEY_ENV})"
    )

    new = commands.add_parser(
        "new", parents=[server], help="mint a callback URL and print it", description="Print the new callback's URL."
    )
    new.add_argument("--ttl", type=int, metavar="S", help="seconds until it expires (server default: a day)")
    new.add_argument("--label", metavar="L", help="a name for it, shown back by the API")
    new.add_argument("--group", metavar="G", help="the group it belongs to")
    new.add_argument("--metadata", type=_json_object, metavar="JSON", help="a JSON object kept with it")
    new.add_argument("--settle", type=_seconds, metavar="S", help="its waits answer once the latest delivery is S s old")
    new.add_argument(
        "--expect-within", type=int, metavar="S", help="still pending after S seconds (below --ttl), it turns overdue"
    )
    new.add_argument("--count", type=int, default=1, metavar="N", help="mint N alike, one URL per line")
    new.add_argument("--json", action="store_true", help="print the callback object(s) as the API returns them")
    new.set_defaults(run=_runner(_new))

    wait = commands.add_parser(
        "wait",
        parents=[server],
        help="await a callback's result and print its body",
        description="Print the body of the callback's latest delivery (JSON and form fields as JSON). "
        "With several callbacks (or --any, --all), print {\"ready\": [tokens], \"callbacks\": [...]} once "
        "any or all of them have a result or are closed (all by default). "
        "Exit codes: 0 delivered (with several: each callback printed has a result), 2 timed out, "
        "3 expired or cancelled (with several: one printed has no result), 1 any other error, 130 interrupted.",
    )
    wait.add_argument("token", metavar="TOKEN", nargs="+", help="the callback's token or URL (several: up to 1000)")
    mode = wait.add_mutually_exclusive_group()
    mode.add_argument("--any", dest="mode", action="store_const", const="any", help="answer once one is ready")
    mode.add_argument("--all", dest="mode", action="store_const", const="all", help="answer once none is pending")
    wait.add_argument("--timeout", type=_seconds, metavar="S", help="give up after S seconds (default: until it expires)")
    wait.add_argument("--after", type=int, default=0, metavar="ID", help="only a delivery newer than this id")
    wait.add_argument(
        "--settle",
        type=_seconds,
        metavar="S",
        help="only once the latest delivery stayed the latest for S seconds (up to 300): the final one",
    )
    wait.set_defaults(run=_runner(_wait))

    show = commands.add_parser("show", parents=[server], help="print a callback as JSON")
    show.add_argument("token", metavar="TOKEN", help="the callback's token or URL")
    show.set_defaults(run=_runner(_show))

    tail = commands.add_parser(
        "tail",
        parents=[server],
        help="print deliveries as they arrive, one JSON line each",
        description="Print stored deliveries after --after, then live ones, one JSON object per line, "
        "until Ctrl-C (exit 0). Reconnects by itself when the server restarts.",
    )
    which = tail.add_mutually_exclusive_group()
    which.add_argument("--group", metavar="G", help="deliveries to the callbacks of this group")
    which.add_argument("--token", metavar="T", help="deliveries to this callback (token or URL)")
    tail.add_argument("--correlation-id", metavar="C", help="only deliveries with this correlation id")
    tail.add_argument("--after", type=int, default=0, metavar="ID", help="start after this delivery id")
    tail.set_defaults(run=_runner(_tail, interrupted=EXIT_OK))

    cancel = commands.add_parser(
        "cancel",
        parents=[server],
        help="cancel a callback and print its status",
        description="Cancel the callback; its waiters wake. Prints the status it ends in: "
        "cancelled, or expired if it had expired already.",
    )
    cancel.add_argument("token", metavar="TOKEN", help="the callback's token or URL")
    cancel.set_defaults(run=_runner(_cancel))


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text!r}")
    return value


def token_of(text: str) -> str:
    """A token from a token or a callback URL (its last path segment)."""
    if "/" not in text:
        return text
    segments = [segment for segment in urlsplit(text).path.split("/") if segment]
    return segments[-1] if segments else text


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"cbhub: {message}", file=sys.stderr)
    return code


def _runner(command: Command, interrupted: int = EXIT_INTERRUPTED) -> Callable[[argparse.Namespace], int]:
    """Run `command` with a client, turning errors into a one-line message and an exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(_with_hub(command, args))
        except KeyboardInterrupt:
            return interrupted
        except CbHubError as exc:
            return _fail(str(exc))
        except BrokenPipeError:
            # The reader went away (`cbhub tail | head -1`): stop quietly, and keep the
            # interpreter's final flush from complaining about the closed pipe.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK

    return run


async def _with_hub(command: Command, args: argparse.Namespace) -> int:
    async with CbHub(args.url, args.api_key) as hub:
        return await command(hub, args)


def _write_json(value: Any, indent: bool = True) -> None:
    option = orjson.OPT_INDENT_2 if indent else 0
    sys.stdout.buffer.write(orjson.dumps(value, option=option) + b"\n")
    sys.stdout.buffer.flush()


async def _new(hub: CbHub, args: argparse.Namespace) -> int:
    if not 1 <= args.count <= 1000:
        return _fail(f"--count must be from 1 to 1000, got {args.count}")
    fields = {"ttl": args.ttl, "label": args.label, "group": args.group, "metadata": args.metadata}
    fields.update(settle=args.settle, expect_within=args.expect_within)
    if args.count == 1:
        handles = [await hub.create(**fields)]
    else:
        handles = await hub.create_batch(args.count, **fields)
    if args.json:
        raw = [handle.callback.raw for handle in handles]
        _write_json(raw[0] if args.count == 1 else {"callbacks": raw})
    else:
        sys.stdout.write("".join(f"{handle.url}\n" for handle in handles))
    return EXIT_OK


async def _wait(hub: CbHub, args: argparse.Namespace) -> int:
    if len(args.token) > 1 or args.mode is not None:
        return await _wait_many(hub, args)
    token = token_of(args.token[0])
    try:
        async with Spinner(f"waiting for callback {token[:12]}…", sys.stderr):
            delivery = await hub.wait(token, timeout=args.timeout, after=args.after, settle=args.settle)
    except TimeoutError:
        return _fail(f"timed out after {args.timeout:g} s waiting for callback {token}", EXIT_TIMEOUT)
    except CallbackClosed as exc:
        return _fail(str(exc), EXIT_CLOSED)
    await _print_body(hub, delivery)
    return EXIT_OK


async def _wait_many(hub: CbHub, args: argparse.Namespace) -> int:
    tokens = [token_of(arg) for arg in args.token]
    mode = args.mode or "all"
    if args.after:
        return _fail("--after applies to one callback; not with several, --any or --all")
    waiting = hub.wait_any if mode == "any" else hub.wait_all
    try:
        async with Spinner(f"waiting for {mode} of {len(tokens)} callbacks…", sys.stderr):
            ready = await waiting(tokens, timeout=args.timeout)
    except TimeoutError:
        return _fail(f"timed out after {args.timeout:g} s waiting for {mode} of {len(tokens)} callbacks", EXIT_TIMEOUT)
    _write_json({"ready": [callback.token for callback in ready], "callbacks": [callback.raw for callback in ready]})
    return EXIT_OK if all(callback.result is not None for callback in ready) else EXIT_CLOSED


async def _print_body(hub: CbHub, delivery: Delivery) -> None:
    """The body as a person wants it: JSON and form fields as indented JSON, text as it came,
    anything else as the exact bytes received."""
    kind = delivery.kind
    if kind in ("json", "form"):
        _write_json(delivery.body)
    elif kind == "text":
        sys.stdout.write(delivery.body)
        sys.stdout.flush()
    elif kind == "binary":
        sys.stdout.buffer.write(await hub.body(delivery.id))
        sys.stdout.buffer.flush()


async def _show(hub: CbHub, args: argparse.Namespace) -> int:
    _write_json((await hub.get(token_of(args.token))).raw)
    return EXIT_OK


async def _cancel(hub: CbHub, args: argparse.Namespace) -> int:
    callback = await hub.cancel(token_of(args.token))
    print(callback.status)
    return EXIT_OK


async def _tail(hub: CbHub, args: argparse.Namespace) -> int:
    # Reconnections are worth a line on stderr; logging is configured here, in the command line.
    logging.basicConfig(level=logging.WARNING, format="cbhub: %(message)s", stream=sys.stderr)
    logging.getLogger("cbhub.client").setLevel(logging.INFO)
    # SIGTERM ends the stream as Ctrl-C does: quietly, exit 0.
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    token = token_of(args.token) if args.token else None
    stream = hub.deliveries(group=args.group, token=token, correlation_id=args.correlation_id, after=args.after)
    try:
        async for delivery in stream:
            _write_json(delivery.raw, indent=False)
    except asyncio.CancelledError:
        return EXIT_OK
    return EXIT_OK
