"""Figures, their medians and spread, the printed table and the JSON results file."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


def percentile(sorted_values: list[float], pct: float) -> float:
    """The nearest-rank percentile of values already sorted; 0 for none."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(len(sorted_values) * pct / 100) - 1))
    return sorted_values[index]


@dataclass
class Series:
    """One quantity measured once per run."""

    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None

    def spread(self) -> str:
        if len(self.runs) < 2:
            return ""
        return f"{_number(min(self.runs))}–{_number(max(self.runs))}"


@dataclass
class Figure:
    """A row of the table: cbhub's figure beside its reference (the baseline, nchan, or cbhub on
    an empty database), the ratio of the medians and whether the target is met."""

    name: str
    unit: str
    cbhub: Series = field(default_factory=Series)
    reference: Series = field(default_factory=Series)
    reference_name: str = ""
    target: str = ""
    # The target, as a test of the ratio (cbhub / reference) or of cbhub's own median.
    check_ratio: Callable[[float], bool] | None = None
    check_value: Callable[[float], bool] | None = None
    # The target as the most cbhub's median may exceed the reference's, in the figure's unit.
    most_above: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        mine, theirs = self.cbhub.median, self.reference.median
        if mine is None or not theirs:
            return None
        return mine / theirs

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None when there is none, or nothing to judge it by."""
        verdicts = []
        if self.check_ratio is not None and self.ratio is not None:
            verdicts.append(self.check_ratio(self.ratio))
        if self.check_value is not None and self.cbhub.median is not None:
            verdicts.append(self.check_value(self.cbhub.median))
        if self.most_above is not None and self.cbhub.median is not None and self.reference.median is not None:
            verdicts.append(self.cbhub.median - self.reference.median <= self.most_above)
        return all(verdicts) if verdicts else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "cbhub": {"median": self.cbhub.median, "runs": self.cbhub.runs},
            "reference": (
                {"name": self.reference_name, "median": self.reference.median, "runs": self.reference.runs}
                if self.reference_name
                else None
            ),
            "ratio": self.ratio,
            "target": self.target or None,
            "met": self.met,
            "note": self.note or None,
        }


def _number(value: float | None) -> str:
    if value is None:
        return "–"
    if float(value).is_integer() and abs(value) < 1000:
        return str(int(value))
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(series: Series) -> str:
    spread = series.spread()
    return f"{_number(series.median)} ({spread})" if spread else _number(series.median)


HEADER = ("figure", "unit", "cbhub median (spread)", "reference", "reference median (spread)", "ratio", "target", "met")


def table(figures: list[Figure]) -> str:
    """A Markdown table, readable in a terminal and pasteable into docs/performance.md."""
    rows = [HEADER]
    for figure in figures:
        met = {True: "yes", False: "**no**", None: ""}[figure.met]
        rows.append(
            (
                figure.name,
                figure.unit,
                _cell(figure.cbhub),
                figure.reference_name or "",
                _cell(figure.reference) if figure.reference_name else "",
                f"{figure.ratio:.2f}" if figure.ratio is not None else "",
                figure.target,
                met,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "| " + " | ".join("-" * width for width in widths) + " |")
    return "\n".join(lines)


def write_json(path: Path, meta: dict[str, Any], figures: list[Figure], notes: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, "figures": [figure.to_json() for figure in figures], "notes": notes}
    path.write_text(json.dumps(document, indent=2) + "\n")
