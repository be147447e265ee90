"""The declarations of the timing parameters and fields (settle, expect_within), parsed by the
handlers of api.py and published by openapi.py like the others of params.py."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from cbhub.domain.timing import MAX_SETTLE
from cbhub.errors import InvalidField, InvalidParameter
from cbhub.http.params import Body, Query, Schema

SETTLE_RULE = f"a number of seconds above 0 and at most {MAX_SETTLE:g}"


def _settle_seconds(raw: Any) -> float | None:
    """The value as seconds when it is a valid settle window, else None."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None
    value = float(raw)
    return value if math.isfinite(value) and 0 < value <= MAX_SETTLE else None


def settle_ms(seconds: float | None) -> int | None:
    """A settle window as stored: whole milliseconds, at least one."""
    return None if seconds is None else max(1, round(seconds * 1000))


@dataclass(frozen=True, slots=True)
class SettleParam:
    """A settle window in seconds (fractions allowed), above 0 and at most MAX_SETTLE; absent: None."""

    name: str
    description: str

    def parse(self, query: Query) -> float | None:
        raw = query.get(self.name)
        if raw is None or raw == "":
            return None
        try:
            value = _settle_seconds(float(raw))
        except ValueError:
            value = None
        if value is None:
            raise InvalidParameter(self.name, f"must be {SETTLE_RULE}, got {raw[:40]!r}")
        return value

    def schema(self) -> Schema:
        return {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": MAX_SETTLE}


@dataclass(frozen=True, slots=True)
class SettleField:
    """The same in a JSON body; absent or null: None."""

    name: str
    description: str
    required = False

    def parse(self, body: Body) -> float | None:
        raw = body.get(self.name)
        if raw is None:
            return None
        value = _settle_seconds(raw)
        if value is None:
            raise InvalidField(self.name, f"must be {SETTLE_RULE}, got {orjson.dumps(raw).decode()[:40]}")
        return value

    def schema(self) -> Schema:
        return {
            "type": "number",
            "exclusiveMinimum": True,
            "minimum": 0,
            "maximum": MAX_SETTLE,
            "nullable": True,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class ExpectWithinField:
    """Whole seconds from 1 to the callback's ttl - 1 (`maximum` is the largest ttl's); absent
    or null: None."""

    name: str
    maximum: int
    description: str
    required = False

    def parse(self, body: Body) -> int | None:
        raw = body.get(self.name)
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= self.maximum:
            shown = orjson.dumps(raw).decode()[:40]
            raise InvalidField(self.name, f"must be a whole number of seconds from 1 to ttl - 1, got {shown}")
        return raw

    def check(self, value: int | None, ttl: int) -> int | None:
        """`value`, refused unless it comes before the callback expires."""
        if value is not None and value >= ttl:
            raise InvalidField(self.name, f"must be less than ttl ({ttl} seconds), got {value}")
        return value

    def schema(self) -> Schema:
        return {
            "type": "integer",
            "minimum": 1,
            "maximum": max(1, self.maximum),
            "nullable": True,
            "description": self.description,
        }
