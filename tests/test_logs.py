"""The text log format: the same lines as logging's own formatter, made faster."""

from __future__ import annotations

import logging

import pytest

from cbhub.logs import TextFormatter

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@pytest.mark.parametrize("created", [1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.0004, 1_800_000_123.5])
def test_text_lines_are_those_of_the_standard_formatter(created: float) -> None:
    mine, standard = TextFormatter(), logging.Formatter(FORMAT)
    for at in (created, created + 0.25, created):  # the cached second, then reused
        record = logging.LogRecord("cbhub.access", logging.INFO, "", 0, "POST %s %d", ("/cb/abc…", 200), None)
        record.created, record.msecs = at, float(int((at - int(at)) * 1000))
        assert mine.format(record) == standard.format(record)
