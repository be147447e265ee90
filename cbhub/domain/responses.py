"""What the sender hears: the answer a callback URL gives to a stored delivery, when a mint (or
the server's [ingest.response]) asks for one other than cbhub's JSON receipt.

Two kinds of spec: a fixed answer (status, content type, body, headers), or an echo of one
value of the request (`query:NAME`, `form:NAME`, `json:NAME`), as text/plain: what the
verification handshakes of WebSub, Slack, Meta and others expect back. Pure rules: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson

from cbhub.domain.bodies import FORM_TYPE, media_type, parse_body
from cbhub.domain.model import Incoming

MAX_BODY_CHARS = 4096
MAX_HEADERS = 10
MAX_HEADER_NAME = 100
MAX_HEADER_VALUE = 1000
MAX_CONTENT_TYPE = 200
MAX_ECHO_NAME = 200
STATUS_MIN, STATUS_MAX = 200, 299
TEXT_PLAIN = "text/plain; charset=utf-8"
ECHO_SOURCES = ("query", "form", "json")

# Headers a spec may not set. Hop-by-hop and framing headers belong to the connection and to
# the body cbhub sends (Content-Type has its own field); cookies and security policies would
# act on cbhub's own origin, where the inspector runs, and cbhub sets the policy of every custom
# answer itself (ANSWER_POLICY). Compared case-insensitively; the prefixes cover families.
REFUSED_HEADERS = (
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "content-type",
    "upgrade",
    "te",
    "trailer",
    "set-cookie",
    "strict-transport-security",
    "content-security-policy",
    "content-security-policy-report-only",
    "x-content-type-options",
    "x-frame-options",
)
REFUSED_HEADER_PREFIXES = ("proxy-", "access-control-")
# On every custom answer: whatever its type, a browser opening the callback URL runs no script
# of the body's and loads nothing (the same policy as the raw delivery body route).
ANSWER_POLICY = (("X-Content-Type-Options", "nosniff"), ("Content-Security-Policy", "default-src 'none'; sandbox"))

# RFC 9110 token characters: what a header name may be made of.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
# Printable ASCII (and space): what a header value (and a content type) may hold.
HEADER_VALUE = re.compile(r"[ -~]*")
ECHO = re.compile(r"(query|form|json):(.{1,200})", re.DOTALL)


class ResponseSpecError(ValueError):
    """A spec that cannot be used; the message starts with the field it is about."""


@dataclass(frozen=True, slots=True)
class ResponseSpec:
    """A fixed answer (`echo` None) or an echo (`echo` = (source, name)) of one request value."""

    status: int = 200
    content_type: str = TEXT_PLAIN
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    echo: tuple[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        if self.echo is not None:
            return {"echo": f"{self.echo[0]}:{self.echo[1]}"}
        return {
            "status": self.status,
            "content_type": self.content_type,
            "body": self.body,
            "headers": dict(self.headers),
        }


@dataclass(frozen=True, slots=True)
class Answer:
    """What a sender was answered."""

    status: int
    content_type: str
    body: str
    headers: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "content_type": self.content_type, "body": self.body, "headers": dict(self.headers)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Answer:
        return cls(data["status"], data["content_type"], data["body"], tuple(data.get("headers", {}).items()))


def header_refused(name: str) -> bool:
    lowered = name.lower()
    return lowered in REFUSED_HEADERS or lowered.startswith(REFUSED_HEADER_PREFIXES)


def parse_response(value: Any, where: str = "response") -> ResponseSpec:
    """A spec from its JSON form; raises ResponseSpecError naming the field."""
    if not isinstance(value, dict):
        raise ResponseSpecError(f"{where}: must be an object")
    if "echo" in value and value["echo"] is not None:
        extra = sorted(set(value) - {"echo"})
        if extra:
            raise ResponseSpecError(f"{where}.{extra[0]}: not allowed with echo (the answer is the echoed value)")
        return ResponseSpec(echo=_echo(value["echo"], f"{where}.echo"))
    unknown = sorted(set(value) - {"status", "content_type", "body", "headers", "echo"})
    if unknown:
        raise ResponseSpecError(f"{where}.{unknown[0]}: unknown field (status, content_type, body, headers or echo)")
    return ResponseSpec(
        status=_status(value.get("status"), f"{where}.status"),
        content_type=_content_type(value.get("content_type"), f"{where}.content_type"),
        body=_body(value.get("body"), f"{where}.body"),
        headers=_headers(value.get("headers"), f"{where}.headers"),
    )


def fixed_spec(status: int, content_type: str, body: str, headers: dict[str, str], where: str) -> ResponseSpec | None:
    """The server default ([ingest.response]); None when every key is at its default (200, "",
    "", none), which is cbhub's JSON receipt."""
    if status == 200 and not content_type and not body and not headers:
        return None
    return parse_response({"status": status, "content_type": content_type or None, "body": body, "headers": headers}, where)


def _echo(value: Any, where: str) -> tuple[str, str]:
    match = ECHO.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ResponseSpecError(f'{where}: must be "query:NAME", "form:NAME" or "json:NAME" (NAME: 1 to 200 characters)')
    return match.group(1), match.group(2)


def _status(value: Any, where: str) -> int:
    if value is None:
        return 200
    if isinstance(value, bool) or not isinstance(value, int) or not STATUS_MIN <= value <= STATUS_MAX:
        raise ResponseSpecError(f"{where}: must be a whole number from {STATUS_MIN} to {STATUS_MAX}")
    return value


def _content_type(value: Any, where: str) -> str:
    if value is None:
        return TEXT_PLAIN
    if not isinstance(value, str) or not value or len(value) > MAX_CONTENT_TYPE or not HEADER_VALUE.fullmatch(value):
        raise ResponseSpecError(f"{where}: must be 1 to {MAX_CONTENT_TYPE} printable ASCII characters")
    return value


def _body(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_BODY_CHARS:
        raise ResponseSpecError(f"{where}: must be a string of at most {MAX_BODY_CHARS} characters")
    return value


def _headers(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > MAX_HEADERS:
        raise ResponseSpecError(f"{where}: must be an object of at most {MAX_HEADERS} headers")
    headers = []
    for name, text in value.items():
        if not HEADER_NAME.fullmatch(name):
            raise ResponseSpecError(f"{where}: {name[:40]!r} is not a header name (1 to {MAX_HEADER_NAME} token characters)")
        if header_refused(name):
            raise ResponseSpecError(f"{where}: {name} may not be set (hop-by-hop, framing or security header)")
        if not isinstance(text, str) or len(text) > MAX_HEADER_VALUE or not HEADER_VALUE.fullmatch(text):
            raise ResponseSpecError(f"{where}.{name}: must be at most {MAX_HEADER_VALUE} printable ASCII characters")
        headers.append((name, text))
    return tuple(headers)


def answer_for(spec: ResponseSpec, incoming: Incoming) -> Answer:
    """The answer `spec` gives to `incoming`."""
    if spec.echo is None:
        return Answer(spec.status, spec.content_type, spec.body, spec.headers)
    # Bounded as a fixed body is: the answer is recorded with the delivery, and challenges are
    # short (a longer value is cut, as documented).
    return Answer(200, TEXT_PLAIN, echoed(spec.echo, incoming)[:MAX_BODY_CHARS])


def echoed(echo: tuple[str, str], incoming: Incoming) -> str:
    """The value echoed: the first of a repeated parameter or field; a JSON number, boolean,
    object or list as its JSON text; "" when the request does not carry it (the request is
    still stored and answered 200: a delivery is never refused for what it lacks)."""
    source, name = echo
    if source == "query":
        return _first(parse_qsl(incoming.query_string, keep_blank_values=True), name)
    kind, _ = media_type(incoming.content_type)
    if source == "form" and kind != FORM_TYPE:
        return ""
    parsed = incoming.parsed if incoming.parsed is not None else parse_body(incoming.raw, incoming.content_type)
    body = parsed.body
    if not isinstance(body, dict) or (source == "json" and kind == FORM_TYPE):
        return ""
    value = body.get(name)
    if isinstance(value, list) and source == "form":
        value = value[0] if value else None
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _first(pairs: list[tuple[str, str]], name: str) -> str:
    for key, value in pairs:
        if key == name:
            return value
    return ""
