"""Logging: text for people or one JSON object per line for machines, and the access log.

Tokens are secrets (whoever has one can post to the callback): log lines carry at most the
first 6 characters of one.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, TextIO

import orjson
from aiohttp import web

from cbhub.domain.model import short_token

# A path segment this long may be a token (they are 43 characters), even on an unknown route.
LONG_SEGMENT = 16
# Attributes every LogRecord has; anything else was passed with `extra=` and is worth keeping.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def loggable_path(request: web.BaseRequest) -> str:
    """The request's path as a log line may show it: tokens cut to their first characters."""
    return shortened_path(request.path, path_token(request))


def path_token(request: web.BaseRequest) -> str | None:
    """The token the request's route matched, if any."""
    match_info = getattr(request, "match_info", None)
    return match_info.get("token") if match_info else None


def shortened_path(path: str, token: str | None) -> str:
    parts = [
        short_token(part) if part and (part == token or len(part) > LONG_SEGMENT) else part
        for part in path.split("/")
    ]
    return "/".join(parts)[:120]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


# A line held to be formatted when written: the function that formats it, and its arguments.
Deferred = tuple[Callable[..., str], tuple[Any, ...]]
# What a deferred line is counted as towards max_bytes before it is formatted.
DEFERRED_SIZE = 128


class BatchingStreamHandler(logging.StreamHandler[TextIO]):
    """Writes what is logged in batches: one write for many lines when they come fast (the
    access log under load: a write per line cost more than a quarter of a callback's time),
    each line at once when they come slowly. Warnings and errors are written at once, with
    whatever came before them; no line waits longer than `delay` seconds.

    A line may also be held unformatted (`write_later`) and formatted when its batch is
    written: formatting a batch of access lines in one go costs a fraction of formatting each
    between two requests' work (measured: about 20 µs of a callback request's CPU, against a
    few µs in the batch)."""

    def __init__(self, stream: Any, delay: float = 0.1, max_bytes: int = 64 * 1024) -> None:
        super().__init__(stream)
        self.delay = delay
        self.max_bytes = max_bytes
        self._lines: list[str | Deferred] = []
        self._size = 0
        self._written_at = 0.0
        self._flusher: threading.Thread | None = None
        self._closed = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._hold(line, record.levelno)

    def write_line(self, line: str, level: int) -> None:
        """Write a line formatted by the caller, as `emit` writes a record's (the access log's
        way: see AccessLine)."""
        with self.lock:  # type: ignore[union-attr]  # as Handler.handle holds it around emit
            self._hold(line, level)

    def write_later(self, render: Callable[..., str], args: tuple[Any, ...], level: int) -> None:
        """Hold the line `render(*args)` will make; it is made when its batch is written, in
        its place among the other lines."""
        with self.lock:  # type: ignore[union-attr]
            self._lines.append((render, args))
            self._size += DEFERRED_SIZE
            self._written_if_due(level)

    def _hold(self, line: str, level: int) -> None:
        line += self.terminator
        self._lines.append(line)
        self._size += len(line)
        self._written_if_due(level)

    def _written_if_due(self, level: int) -> None:
        if level >= logging.WARNING or self._size >= self.max_bytes or time.monotonic() - self._written_at >= self.delay:
            self.flush()
        elif self._flusher is None:
            # Started on the first line held back: writes out what waits, every `delay`.
            self._flusher = threading.Thread(target=self._flush_forever, name="cbhub-log", daemon=True)
            self._flusher.start()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # logging always makes the lock
            if self._lines:
                lines, self._lines, self._size = self._lines, [], 0
                terminator = self.terminator
                text = "".join(
                    line if type(line) is str else _rendered(line, terminator)  # type: ignore[arg-type]
                    for line in lines
                )
                try:
                    self.stream.write(text)
                    self.stream.flush()
                except Exception:
                    # As logging does: a broken stream must not break the server.
                    pass
            self._written_at = time.monotonic()

    def _flush_forever(self) -> None:
        while not self._closed.wait(self.delay):
            self.flush()

    def close(self) -> None:
        self._closed.set()
        self.flush()
        super().close()


def _rendered(deferred: Deferred, terminator: str) -> str:
    render, args = deferred
    try:
        return render(*args) + terminator
    except Exception:
        # As logging does with a record it cannot format: the server goes on.
        return ""


def setup_logging(level: str, fmt: str) -> None:
    handler = BatchingStreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosqlite logs every statement at debug: not what "cbhub at debug" means.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
    # Neither format shows where a line was logged from, nor its thread or process: don't
    # look them up for every record (the logging HOWTO's "Optimization" section). The access
    # log writes one record per request, so this is on the hot path.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class _Stamp:
    """What a formatter's formatTime reads of a record."""

    __slots__ = ("created", "msecs")

    def __init__(self, created: float) -> None:
        self.created = created
        self.msecs = float(int((created - int(created)) * 1000))


# One request as the access log tells it: method, path as requested, the token its route
# matched (or None), status, seconds taken, client address, bytes of body sent. A plain tuple:
# one is made for every request, and everything else is worked out when the line is made.
AccessFields = tuple[str, str, "str | None", int, float, str, "int | None"]


def access_message(fields: AccessFields) -> tuple[str, dict[str, Any]]:
    """The access line's message and the fields a JSON line carries beside it."""
    method, path, token, status, seconds, remote, sent = fields
    shown = shortened_path(path, token)
    extra = {
        "method": method,
        "path": shown,
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
        "remote": remote,
        "bytes": sent,
    }
    return _message(fields, shown), extra


def _message(fields: AccessFields, shown: str) -> str:
    method, _, _, status, seconds, remote, _ = fields
    return f"{method} {shown} {status} {seconds * 1000:.1f}ms {remote}"


class AccessLine:
    """Writes one logger's INFO lines straight to the handler that would write them, without
    a LogRecord: the line is the same as the record's would be, formatted by the same
    formatter's rules (TextFormatter, JsonFormatter) and held by the same BatchingStreamHandler.
    Used when that is all logging would do with the record: the logger and its ancestors have
    no handler or filter of their own, the root logger has exactly one BatchingStreamHandler
    with one of cbhub's formatters and no filter. Otherwise (a test capturing records, a
    configuration of one's own) `target()` is None and the caller logs a record as usual."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def target(self) -> BatchingStreamHandler | None:
        """The handler to write to, checked on every call (a handler may be added any time):
        a walk of two or three loggers, far cheaper than a record."""
        node: logging.Logger | None = self.logger
        root = logging.root
        while node is not None and node is not root:
            if node.handlers or node.filters or not node.propagate or node.disabled:
                return None
            node = node.parent
        handlers = root.handlers
        if len(handlers) != 1 or root.filters:
            return None
        handler = handlers[0]
        if type(handler) is not BatchingStreamHandler or handler.filters or handler.level > logging.INFO:
            return None
        if type(handler.formatter) not in (TextFormatter, JsonFormatter):
            return None
        return handler

    def write(self, handler: BatchingStreamHandler, fields: AccessFields) -> None:
        """The access line of `fields`, as `logger.info(message, extra=extra)` would write it
        through `handler` now (see access_message); made when its batch is written."""
        handler.write_later(self._line, (time.time(), handler.formatter, fields), logging.INFO)

    def _line(self, created: float, formatter: logging.Formatter, fields: AccessFields) -> str:
        stamp = _Stamp(created)
        if type(formatter) is TextFormatter:
            # The text line has no use for the JSON line's fields: only the message is made.
            message = _message(fields, shortened_path(fields[1], fields[2]))
            line = f"{formatter.formatTime(stamp)} INFO {self.logger.name}: {message}"  # type: ignore[arg-type]
        else:
            message, extra = access_message(fields)
            entry: dict[str, Any] = {
                "time": datetime.fromtimestamp(stamp.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
                "level": "info",
                "logger": self.logger.name,
                "message": message,
            }
            entry.update(extra)
            line = orjson.dumps(entry, default=str).decode()
        return line


# logging.Formatter's own default_msec_format, which its type leaves optional.
MSEC_FORMAT = "%s,%03d"


class TextFormatter(logging.Formatter):
    """logging's default text format, with the date and time formatted once per second rather
    than once per line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return MSEC_FORMAT % (self._second_text, record.msecs)
