"""The text log format: the same lines as logging's own formatter, made faster; and lines
written in batches when they come fast, never held for long."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cbhub.observe.logs import BatchingStreamHandler, TextFormatter
from helpers import eventually_sync

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@pytest.mark.parametrize("created", [1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.0004, 1_800_000_123.5])
def test_text_lines_are_those_of_the_standard_formatter(created: float) -> None:
    mine, standard = TextFormatter(), logging.Formatter(FORMAT)
    for at in (created, created + 0.25, created):  # the cached second, then reused
        record = logging.LogRecord("cbhub.access", logging.INFO, "", 0, "POST %s %d", ("/cb/abc…", 200), None)
        record.created, record.msecs = at, float(int((at - int(at)) * 1000))
        assert mine.format(record) == standard.format(record)


def test_a_burst_of_lines_is_written_within_the_delay_and_a_warning_at_once(tmp_path: Path) -> None:
    path = tmp_path / "cbhub.log"
    with path.open("w") as stream:
        handler = BatchingStreamHandler(stream, delay=0.1)
        logger = logging.Logger("burst")
        logger.addHandler(handler)
        for n in range(1000):
            logger.info("line %d", n)
        # A warning goes out at once, with everything logged before it, in order.
        logger.warning("then a warning")
        lines = path.read_text().splitlines()
        assert lines == [f"line {n}" for n in range(1000)] + ["then a warning"]
        for n in range(1000, 1500):
            logger.info("line %d", n)
        # Written by the handler's own timer, soon after the delay (2 s: twenty delays, for a busy machine).
        eventually_sync(lambda: len(path.read_text().splitlines()) == 1501, timeout=2, what="the burst written")
        assert path.read_text().splitlines()[-1] == "line 1499"
        handler.close()
