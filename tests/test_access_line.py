"""The access log's lines written without a LogRecord are the lines a record would have made,
in both formats; anything else in the way (a handler of one's own) gets records as before."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

import orjson

from cbhub.observe.logs import (
    AccessLine,
    BatchingStreamHandler,
    JsonFormatter,
    TextFormatter,
)

MESSAGE = "POST /cb/abcdef… 200 1.2ms 127.0.0.1"
EXTRA = {"method": "POST", "path": "/cb/abcdef…", "status": 200, "duration_ms": 1.23, "remote": "127.0.0.1", "bytes": 61}
TOKEN = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
# The request the line tells of, as the access logger hands it over.
FIELDS = ("POST", f"/cb/{TOKEN}", TOKEN, 200, 0.00123, "127.0.0.1", 61)


@contextmanager
def root_handler() -> Iterator[tuple[BatchingStreamHandler, io.StringIO]]:
    """The root logger as the server sets it up, for the block (pytest's own capture handlers,
    added around each test, set aside)."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream, delay=0)
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield handler, stream
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def _both_ways(handler: BatchingStreamHandler, stream: io.StringIO) -> tuple[str, str]:
    logger = logging.getLogger("cbhub.access")
    direct = AccessLine(logger)
    assert direct.target() is handler
    direct.write(handler, FIELDS)
    logger.info("%s", MESSAGE, extra=EXTRA)
    handler.flush()
    first, second = stream.getvalue().splitlines()
    return first, second


def test_a_text_line_is_the_records_line() -> None:
    with root_handler() as (handler, stream):
        handler.setFormatter(TextFormatter())
        direct, recorded = _both_ways(handler, stream)
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
    assert stamp.match(direct) and stamp.match(recorded)
    assert stamp.sub("", direct) == stamp.sub("", recorded) == f"INFO cbhub.access: {MESSAGE}"


def test_a_json_line_is_the_records_line() -> None:
    with root_handler() as (handler, stream):
        handler.setFormatter(JsonFormatter())
        direct, recorded = (orjson.loads(line) for line in _both_ways(handler, stream))
    assert list(direct) == list(recorded)  # the same keys in the same order
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", direct.pop("time"))
    recorded.pop("time")
    assert direct == recorded == {"level": "info", "logger": "cbhub.access", "message": MESSAGE, **EXTRA}


def test_records_are_made_when_something_else_listens() -> None:
    with root_handler() as (handler, _):
        handler.setFormatter(TextFormatter())
        logger = logging.getLogger("cbhub.access")
        direct = AccessLine(logger)
        own = logging.NullHandler()
        logger.addHandler(own)
        try:
            assert direct.target() is None
        finally:
            logger.removeHandler(own)
        assert direct.target() is handler
        logging.getLogger().addHandler(own)
        try:
            assert direct.target() is None
        finally:
            logging.getLogger().removeHandler(own)


def test_a_held_line_is_written_in_its_place_among_the_others() -> None:
    with root_handler() as (handler, stream):
        handler.setFormatter(TextFormatter())
        handler.delay = 60  # nothing written until a warning (or the size) says so
        handler.flush()  # the last write was just now
        direct = AccessLine(logging.getLogger("cbhub.access"))
        direct.write(handler, FIELDS)
        logging.getLogger("cbhub.store").info("between")
        assert stream.getvalue() == ""  # held, not yet formatted nor written
        direct.write(handler, FIELDS)
        logging.getLogger("cbhub").warning("after")
        lines = [line.split(" ", 2)[2] for line in stream.getvalue().splitlines()]
    assert lines == [
        f"INFO cbhub.access: {MESSAGE}",
        "INFO cbhub.store: between",
        f"INFO cbhub.access: {MESSAGE}",
        "WARNING cbhub: after",
    ]
