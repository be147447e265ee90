"""Reading and checking what a client sends: every refusal names the field."""

from __future__ import annotations

import math
from typing import Any, Mapping

import orjson
from aiohttp import web

from cbhub.domain import networks
from cbhub.domain.filters import DeliveryFilter
from cbhub.domain.signatures import SpecError, VerifySpec, parse_spec
from cbhub.errors import (
    BadRequest,
    InvalidBody,
    InvalidField,
    InvalidJson,
    InvalidParameter,
    UnknownField,
)

MAX_NAME_LENGTH = 200
MAX_METADATA_BYTES = 16 * 1024


def query_int(query: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParameter(name, f"must be a whole number, got {raw[:40]!r}") from None
    if not minimum <= value <= maximum:
        raise InvalidParameter(name, f"must be from {minimum} to {maximum}, got {value}")
    return value


def query_flag(query: Mapping[str, str], name: str) -> bool:
    """A yes/no parameter: 1 or true, 0 or false; absent or empty is false."""
    raw = query.get(name, "").lower()
    if raw in ("", "0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise InvalidParameter(name, f"must be 1 or 0, got {raw[:40]!r}")


def query_seconds(query: Mapping[str, str], name: str, default: float, cap: float) -> float:
    """A duration in seconds, at least 0; values above `cap` are lowered to it."""
    raw = query.get(name)
    if raw is None or raw == "":
        return min(default, cap)
    try:
        value = float(raw)
    except ValueError:
        raise InvalidParameter(name, f"must be a number of seconds, got {raw[:40]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidParameter(name, f"must be a number of seconds, 0 or more, got {raw[:40]!r}")
    return min(value, cap)


def query_text(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidParameter(name, f"must be at most {MAX_NAME_LENGTH} characters")
    return value


def query_filter(query: Mapping[str, str], owner: str | None) -> DeliveryFilter:
    """The token, group and correlation_id parameters, combined with AND, within what
    `owner` may see (None: everything)."""
    return DeliveryFilter(
        token=query_text(query, "token"),
        group=query_text(query, "group"),
        correlation_id=query_text(query, "correlation_id"),
        owner=owner,
    )


async def json_object(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is {}); unknown fields are refused."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidBody()
    refuse_unknown_fields(body, allowed)
    return body


def refuse_unknown_fields(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for name in body:
        if name not in allowed:
            raise UnknownField(name, allowed)


def field_int(body: Mapping[str, Any], name: str, default: int, minimum: int, maximum: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(name, f"must be a whole number, got {orjson.dumps(value).decode()[:40]}")
    if not minimum <= value <= maximum:
        raise InvalidField(name, f"must be from {minimum} to {maximum}, got {value}")
    return value


def field_name(body: Mapping[str, Any], name: str) -> str | None:
    """An optional short string such as a label or a group."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidField(name, "must be a non-empty string or null")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidField(name, f"must be at most {MAX_NAME_LENGTH} characters")
    return value


def field_metadata(body: Mapping[str, Any], name: str = "metadata") -> dict[str, Any]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidField(name, "must be a JSON object")
    if len(orjson.dumps(value)) > MAX_METADATA_BYTES:
        raise InvalidField(name, f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    return value


def field_networks(body: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """An optional list of IP addresses or CIDRs, as canonical CIDRs."""
    value = body.get(name)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidField(name, "must be a list of IP addresses or CIDRs such as \"203.0.113.0/24\"")
    try:
        return networks.normalise(value)
    except ValueError as exc:
        raise InvalidField(name, str(exc)) from None


def field_verify(body: Mapping[str, Any], name: str = "verify") -> VerifySpec | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        return parse_spec(value, name)
    except SpecError as exc:
        # The message names the field and never repeats the secret.
        raise BadRequest(str(exc), code=InvalidField.code) from None
