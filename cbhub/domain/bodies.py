"""Reading a callback body the way a person would, without ever refusing it.

The raw bytes are what cbhub stores; everything here is derived from (bytes, content type) and
so can be recomputed on every read. Parsing never raises: what cannot be parsed is kept raw and
explained in `parse_error`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson

FORM_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class ParsedBody:
    body: Any  # JSON value, dict of form fields, text, or None
    body_base64: str | None  # the raw bytes when `body` cannot represent them
    parse_error: str | None


def media_type(content_type: str | None) -> tuple[str, str | None]:
    """Split a Content-Type header into (lower-case media type, charset or None)."""
    if not content_type:
        return "", None
    kind, _, params = content_type.partition(";")
    charset = None
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower() or None
    return kind.strip().lower(), charset


def _is_json(kind: str) -> bool:
    return kind == "application/json" or kind.endswith("+json")


def _is_text(kind: str) -> bool:
    return kind.startswith("text/") or kind.endswith("+xml") or kind in ("application/xml", "application/javascript")


def _decode(raw: bytes, charset: str | None) -> str:
    return raw.decode(charset or "utf-8")


def parse_form(text: str) -> dict[str, Any]:
    """Form fields as an object: a repeated field becomes a list, an empty one stays ""."""
    fields: dict[str, Any] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        if name in fields:
            previous = fields[name]
            if isinstance(previous, list):
                previous.append(value)
            else:
                fields[name] = [previous, value]
        else:
            fields[name] = value
    return fields


def _raw(raw: bytes, error: str | None) -> ParsedBody:
    return ParsedBody(None, base64.b64encode(raw).decode("ascii"), error)


def _text_or_raw(raw: bytes, charset: str | None, error: str | None) -> ParsedBody:
    try:
        return ParsedBody(_decode(raw, charset), None, error)
    except (UnicodeDecodeError, LookupError) as exc:
        return _raw(raw, error or f"body is not valid {charset or 'utf-8'} text: {exc}")


def parse_body(raw: bytes, content_type: str | None) -> ParsedBody:
    """Interpret `raw` by its content type; never raises."""
    if not raw:
        return ParsedBody(None, None, None)
    kind, charset = media_type(content_type)
    if _is_json(kind) or (not kind and raw.lstrip()[:1] in (b"{", b"[")):
        try:
            return ParsedBody(orjson.loads(raw), None, None)
        except orjson.JSONDecodeError as exc:
            return _text_or_raw(raw, charset, f"invalid JSON: {exc}")
    if kind == FORM_TYPE:
        try:
            return ParsedBody(parse_form(_decode(raw, charset)), None, None)
        except (UnicodeDecodeError, LookupError) as exc:
            return _raw(raw, f"form body is not valid {charset or 'utf-8'}: {exc}")
    if _is_text(kind) or not kind:
        parsed = _text_or_raw(raw, charset, None)
        if not kind and parsed.body is None:
            # No content type and not text: binary, which is not an error.
            return ParsedBody(None, parsed.body_base64, None)
        return parsed
    return _raw(raw, None)


def correlation_id(parsed: ParsedBody, fields: tuple[str, ...]) -> str | None:
    """The first present of `fields` among the form fields or top-level JSON keys."""
    body = parsed.body
    if not isinstance(body, dict):
        return None
    for name in fields:
        value = body.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is None or isinstance(value, (dict, list)):
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        text = str(value)
        if text:
            return text
    return None


class FormScan:
    """The first value of each of `names` present in a form body (decoded), scanned once on
    arrival: the correlation id and the outcome rules read their fields from it."""

    __slots__ = ("names", "found")

    def __init__(self, names: frozenset[str], found: dict[str, str]) -> None:
        self.names = names
        self.found = found

    def covers(self, names: frozenset[str]) -> bool:
        return names <= self.names


def correlation_of(raw: bytes, content_type: str | None, fields: tuple[str, ...]) -> tuple[ParsedBody | None, str | None]:
    """The body's correlation id, and its parsed form when finding the id parsed it anyway
    (None: it is parsed when first read, if ever). Always the same id as
    `correlation_id(parse_body(raw, content_type), fields)`."""
    parsed, found, _ = scan(raw, content_type, fields)
    return parsed, found


def scan(
    raw: bytes, content_type: str | None, fields: tuple[str, ...], also: frozenset[str] = frozenset()
) -> tuple[ParsedBody | None, str | None, FormScan | None]:
    """As correlation_of, and for a form body the scan of `fields` and `also` (the fields the
    outcome rules read), so that the body is read once on arrival, not once for each.

    A form body, the common case, is only scanned for the fields named: decoding every value
    (a result XML is percent-escaped throughout) is most of the cost of taking a callback in,
    and is wasted when nobody is waiting for it."""
    kind, charset = media_type(content_type)
    if kind == FORM_TYPE and raw:
        try:
            text = _decode(raw, charset)
        except (UnicodeDecodeError, LookupError):
            pass  # parse_body explains it
        else:
            names = _scanned_names(also, fields)
            found = form_fields(text, names)
            return None, _first_present(found, fields), FormScan(names, found)
    parsed = parse_body(raw, content_type)
    return parsed, correlation_id(parsed, fields), None


@lru_cache(maxsize=64)
def _scanned_names(also: frozenset[str], fields: tuple[str, ...]) -> frozenset[str]:
    return also.union(fields)


def _first_present(found: dict[str, str], fields: tuple[str, ...]) -> str | None:
    # A repeated field counts by its first value, as in parse_form; an empty one is skipped.
    for name in fields:
        if found.get(name):
            return found[name]
    return None


def form_fields(text: str, names: frozenset[str]) -> dict[str, str]:
    """The first value of each of `names` present in a form, decoding nothing else (splits and
    decodes as parse_qsl(keep_blank_values=True) does). It stops once all are found: Marketing
    Cloud's fields come before its long ResultDetailXML."""
    found: dict[str, str] = {}
    wanted = len(names)
    for segment in text.split("&"):
        if not segment:
            continue
        name, _, value = segment.partition("=")
        if "%" in name or "+" in name:
            name = unquote(name.replace("+", " "))
        if name in names and name not in found:
            found[name] = unquote(value.replace("+", " ")) if "%" in value or "+" in value else value
            if len(found) == wanted:
                break
    return found
