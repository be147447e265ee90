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
from typing import Any, TextIO

import orjson
from aiohttp import web

from cbhub.domain.model import short_token

# A path segment this long may be a token (they are 43 characters), even on an unknown route.
LONG_SEGMENT = 16
# Attributes every LogRecord has; anything else was passed with `extra=` and is worth keeping.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def loggable_path(request: web.BaseRequest) -> str:
    """The request's path as a log line may show it: tokens cut to their first characters."""
    match_info = getattr(request, "match_info", None)
    token = match_info.get("token") if match_info else None
    parts = [
        short_token(part) if part and (part == token or len(part) > LONG_SEGMENT) else part
        for part in request.path.split("/")
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


class BatchingStreamHandler(logging.StreamHandler[TextIO]):
    """Writes what is logged in batches: one write for many lines when they come fast (the
    access log under load: a write per line cost more than a quarter of a callback's time),
    each line at once when they come slowly. Warnings and errors are written at once, with
    whatever came before them; no line waits longer than `delay` seconds."""

    def __init__(self, stream: Any, delay: float = 0.1, max_bytes: int = 64 * 1024) -> None:
        super().__init__(stream)
        self.delay = delay
        self.max_bytes = max_bytes
        self._lines: list[str] = []
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

    def _hold(self, line: str, level: int) -> None:
        line += self.terminator
        self._lines.append(line)
        self._size += len(line)
        if level >= logging.WARNING or self._size >= self.max_bytes or time.monotonic() - self._written_at >= self.delay:
            self.flush()
        elif self._flusher is None:
            # Started on the first line held back: writes out what waits, every `delay`.
            self._flusher = threading.Thread(target=self._flush_forever, name="cbhub-log", daemon=True)
            self._flusher.start()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # logging always makes the lock
            if self._lines:
                text, self._lines, self._size = "".join(self._lines), [], 0
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

    def write(self, handler: BatchingStreamHandler, message: str, extra: dict[str, Any]) -> None:
        """`message` (already formatted) with `extra` as `logger.info(message, extra=extra)`
        would write it through `handler`."""
        formatter = handler.formatter
        stamp = _Stamp(time.time())
        if type(formatter) is TextFormatter:
            line = f"{formatter.formatTime(stamp)} INFO {self.logger.name}: {message}"  # type: ignore[arg-type]
        else:
            entry: dict[str, Any] = {
                "time": datetime.fromtimestamp(stamp.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
                "level": "info",
                "logger": self.logger.name,
                "message": message,
            }
            entry.update(extra)
            line = orjson.dumps(entry, default=str).decode()
        handler.write_line(line, logging.INFO)


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
