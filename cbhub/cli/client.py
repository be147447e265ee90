"""The client commands of the `cbhub` command line: new, wait, show, tail, cancel, group.

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
from cbhub.client import CallbackClosed, CbHub, CbHubError, Delivery, GroupStatus
from cbhub.client.hub import API_KEY_ENV, DEFAULT_URL, URL_ENV
from cbhub.client.models import ERROR

# `cbhub wait` and `cbhub group` exit codes.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_TIMEOUT = 2
EXIT_CLOSED = 3  # expired or cancelled
EXIT_FAILED = 4  # the result's outcome is error (wait --fail-on-error); a group has an error result
EXIT_NOT_ALL_OK = 5  # a group without errors, but not all ok: pending, unknown, or never answered
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
# A group wait asks at most this long per request, then asks again until its own deadline.
GROUP_POLL_SECONDS = 60.0

Command = Callable[[CbHub, argparse.Namespace], Awaitable[int]]

COMMANDS = ("new", "wait", "show", "tail", "cancel", "group")
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
        "3 expired or cancelled (with several: one printed has no result), 4 delivered with an error outcome "
        "(with --fail-on-error), 1 any other error, 130 interrupted.",
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
    wait.add_argument(
        "--fail-on-error",
        action="store_true",
        help="exit 4 when the delivery's outcome is error (the body is printed, the error on stderr)",
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

    group = commands.add_parser(
        "group",
        parents=[server],
        help="print a group's summary: outcomes, errors, pending callbacks",
        description="Print how a group's callbacks went: a table, or the API's JSON with --json. "
        "Exit codes: 0 every callback answered ok, 4 any answered with an error, 5 no error but not all "
        "ok (pending, unknown, or closed unanswered), 2 timed out (--wait), 1 any other error, 130 interrupted.",
    )
    group.add_argument("group", metavar="GROUP", help="the group's name")
    group.add_argument("--wait", action="store_true", help="wait until none is pending (or see --until)")
    group.add_argument(
        "--until",
        choices=("all", "first_error"),
        default="all",
        help="with --wait: all (default) waits until none is pending; first_error stops at the first error too",
    )
    group.add_argument("--timeout", type=_seconds, metavar="S", help="with --wait: give up after S seconds (default: never)")
    group.add_argument("--json", action="store_true", help="print the summary as the API returns it")
    group.set_defaults(run=_runner(_group))


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
    if args.fail_on_error and delivery.outcome == ERROR:
        return _fail(f"callback {token} answered with an error: {delivery.error or 'error'}", EXIT_FAILED)
    return EXIT_OK


async def _wait_many(hub: CbHub, args: argparse.Namespace) -> int:
    tokens = [token_of(arg) for arg in args.token]
    mode = args.mode or "all"
    if args.after or args.settle is not None:
        return _fail("--after and --settle apply to one callback; not with several, --any or --all")
    waiting = hub.wait_any if mode == "any" else hub.wait_all
    try:
        async with Spinner(f"waiting for {mode} of {len(tokens)} callbacks…", sys.stderr):
            ready = await waiting(tokens, timeout=args.timeout)
    except TimeoutError:
        return _fail(f"timed out after {args.timeout:g} s waiting for {mode} of {len(tokens)} callbacks", EXIT_TIMEOUT)
    _write_json({"ready": [callback.token for callback in ready], "callbacks": [callback.raw for callback in ready]})
    if args.fail_on_error and any(callback.outcome == ERROR for callback in ready):
        return _fail(f"a callback of the {len(tokens)} answered with an error", EXIT_FAILED)
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


async def _group(hub: CbHub, args: argparse.Namespace) -> int:
    if not args.wait:
        summary = await hub.group(args.group)
    else:
        async with Spinner(f"waiting for group {args.group[:40]}…", sys.stderr):
            found = await _wait_group(hub, args.group, args.until, args.timeout)
        if found is None:
            assert args.timeout is not None
            return _fail(f"timed out after {args.timeout:g} s waiting for group {args.group}", EXIT_TIMEOUT)
        summary = found
    if args.json:
        _write_json(summary.raw)
    else:
        sys.stdout.write(group_table(summary))
        sys.stdout.flush()
    if summary.error:
        return EXIT_FAILED
    return EXIT_OK if summary.all_ok else EXIT_NOT_ALL_OK


async def _wait_group(hub: CbHub, group: str, until: Any, timeout: float | None) -> GroupStatus | None:
    """The group's summary once its wait is answered; None when `timeout` passes first. The
    server caps one wait (callbacks.max_wait): it is asked again until the deadline."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        remaining = GROUP_POLL_SECONDS if deadline is None else min(GROUP_POLL_SECONDS, deadline - loop.time())
        summary = await hub.wait_group(group, max(0.0, remaining), until)
        if summary is not None:
            return summary
        if deadline is not None and loop.time() >= deadline:
            return None


def group_summary_line(summary: GroupStatus) -> str:
    """"497 ok · 2 error · 1 pending": the counts that are not zero, as the inspector shows them."""
    parts = [
        (summary.ok, "ok"),
        (summary.error, "error"),
        (summary.unknown, "unknown"),
        (summary.pending, "pending"),
        # Closed without a result: they will never answer.
        (summary.total - summary.pending - summary.ok - summary.error - summary.unknown, "unanswered"),
    ]
    return " · ".join(f"{count} {word}" for count, word in parts if count) or "no callbacks"


def group_table(summary: GroupStatus) -> str:
    """A group's summary for a person: the counts, then each error and each pending token."""
    lines = [f"group {summary.group}: {summary.total} callbacks, {group_summary_line(summary)}", ""]
    rows = [
        ("ok", summary.ok),
        ("error", summary.error),
        ("unknown", summary.unknown),
        ("pending", summary.pending),
        ("received", summary.received),
        ("expired", summary.expired),
        ("cancelled", summary.cancelled),
    ]
    lines += [f"  {name:<10}{count:>8}" for name, count in rows]
    if summary.errors:
        more = f" (first {len(summary.errors)} of {summary.error})" if summary.error > len(summary.errors) else ""
        lines += ["", f"errors{more}:"]
        width = max(len(e.correlation_id or "-") for e in summary.errors)
        for item in summary.errors:
            error = item.error
            code = (error.code if error is not None else None) or "-"
            message = (error.message if error is not None else None) or ""
            lines.append(f"  {item.correlation_id or '-':<{width}}  {code:<8}  {item.token}  {message}".rstrip())
    if summary.pending_tokens:
        more = f" (first {len(summary.pending_tokens)} of {summary.pending})" if summary.pending > len(summary.pending_tokens) else ""
        lines += ["", f"pending{more}:"]
        lines += [f"  {token}" for token in summary.pending_tokens]
    return "\n".join(lines) + "\n"
