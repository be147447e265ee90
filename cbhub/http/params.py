"""Reading and checking what a client sends, each query parameter and JSON field declared once.

A declaration holds a parameter's or a field's name, type, bounds, default and description. The
handler parses with it (`parse`) and /v1/openapi.json publishes it (`schema`), so the document
states exactly what the parser accepts: the two cannot drift. Every refusal names what it refuses.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Generic, Mapping, Protocol, TypeVar
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from cbhub.domain import networks
from cbhub.domain.expectations import (
    MAX_CONTRACT_NAMES,
    MAX_COUNT,
    MAX_ID_LENGTH,
    MAX_NAMED_IDS,
)
from cbhub.domain.filters import DeliveryFilter
from cbhub.domain.model import HIDDEN_HEADERS
from cbhub.domain.outcomes import (
    MAX_RULE_TEXT,
    MAX_RULE_VALUES,
    OUTCOMES,
)
from cbhub.domain.responses import (
    MAX_BODY_CHARS,
    MAX_CONTENT_TYPE,
    MAX_ECHO_NAME,
    MAX_HEADER_NAME,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    REFUSED_HEADER_PREFIXES,
    REFUSED_HEADERS,
    STATUS_MAX,
    STATUS_MIN,
    TEXT_PLAIN,
)
from cbhub.domain.signatures import (
    ENCODINGS,
    HMAC_ONLY_FIELDS,
    HMAC_SHA256,
    MAX_HEADER_LENGTH,
    MAX_PREFIX_LENGTH,
    MAX_SECRET_LENGTH,
    STANDARD_WEBHOOKS,
    WHSEC_KEY_PATTERN,
    WHSEC_PREFIX,
)
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
# Callback and delivery ids are signed 64-bit integers in both stores.
MAX_CURSOR = 2**63 - 1

Schema = dict[str, Any]
Query = Mapping[str, str]


class MultiQuery(Protocol):
    """A query string that keeps repeats (aiohttp's request.query)."""

    def getall(self, key: str, default: tuple[()]) -> list[str] | tuple[()]: ...

Body = Mapping[str, Any]
D = TypeVar("D", int, None)
S = TypeVar("S")


def transient_query(request: web.BaseRequest) -> MultiDictProxy[str]:
    """The request's query parameters, parsed for the caller alone: `request.query` would keep
    the parsed multidict (and the URL's copy of it) on the request for its whole life, 0.4 KB
    on every held long-poll, websocket or event stream. The same parse as aiohttp's (yarl's
    is parse_qsl's, blank values kept)."""
    pairs = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)
    return MultiDictProxy(MultiDict(pairs))


# Query parameters. Absent and empty are the same: `?limit=` is no limit given.


@dataclass(frozen=True, slots=True)
class IntParam(Generic[D]):
    """A whole number from `minimum` to `maximum`; absent: `default` (None: "not given")."""

    name: str
    default: D
    minimum: int
    maximum: int
    description: str

    def parse(self, query: Query) -> int | D:
        raw = query.get(self.name)
        if raw is None or raw == "":
            return self.default
        try:
            value = int(raw)
        except ValueError:
            raise InvalidParameter(self.name, f"must be a whole number, got {raw[:40]!r}") from None
        if not self.minimum <= value <= self.maximum:
            raise InvalidParameter(self.name, f"must be from {self.minimum} to {self.maximum}, got {value}")
        return value

    def schema(self) -> Schema:
        schema: Schema = {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}
        return schema if self.default is None else {**schema, "default": self.default}


@dataclass(frozen=True, slots=True)
class SecondsParam:
    """A duration in seconds, 0 or more. Above the server's cap (callbacks.max_wait) it is lowered
    to the cap, not refused: a client cannot know the cap, and waiting less is always safe."""

    name: str
    default: float
    description: str

    def parse(self, query: Query, cap: float) -> float:
        raw = query.get(self.name)
        if raw is None or raw == "":
            return min(self.default, cap)
        try:
            value = float(raw)
        except ValueError:
            raise InvalidParameter(self.name, f"must be a number of seconds, got {raw[:40]!r}") from None
        if not math.isfinite(value) or value < 0:
            raise InvalidParameter(self.name, f"must be a number of seconds, 0 or more, got {raw[:40]!r}")
        return min(value, cap)

    def schema(self) -> Schema:
        return {"type": "number", "minimum": 0, "default": self.default}


FLAG_WORDS = {"": False, "0": False, "false": False, "1": True, "true": True}


@dataclass(frozen=True, slots=True)
class FlagParam:
    """Yes or no: 1 or true, 0 or false, in any case; absent is no."""

    name: str
    description: str

    def parse(self, query: Query) -> bool:
        raw = query.get(self.name, "").lower()
        if raw not in FLAG_WORDS:
            raise InvalidParameter(self.name, f"must be 1 or 0, got {raw[:40]!r}")
        return FLAG_WORDS[raw]

    def schema(self) -> Schema:
        return {"type": "string", "pattern": "^(" + "|".join(_caseless(word) for word in FLAG_WORDS) + ")$"}


@dataclass(frozen=True, slots=True)
class TextParam:
    """A short string (a token, a group, a label...); absent: None. With `choices`, one of them."""

    name: str
    description: str
    choices: tuple[str, ...] = ()

    def parse(self, query: Query) -> str | None:
        value = query.get(self.name)
        if value is None or value == "":
            return None
        if len(value) > MAX_NAME_LENGTH:
            raise InvalidParameter(self.name, f"must be at most {MAX_NAME_LENGTH} characters")
        if self.choices and value not in self.choices:
            raise InvalidParameter(self.name, f"must be one of {', '.join(self.choices)}, got {value[:40]!r}")
        return value

    def schema(self) -> Schema:
        if self.choices:
            return {"type": "string", "enum": list(self.choices)}
        return {"type": "string", "maxLength": MAX_NAME_LENGTH}


@dataclass(frozen=True, slots=True)
class TokensParam:
    """A repeated parameter (`?token=A&token=B`), 1 to `most` values, each shaped as a token
    (URL-safe base64, at most TOKEN_CHARS: a bound on the request line); repeats are kept once,
    in the order first given. Required: absent is refused."""

    name: str
    most: int
    description: str
    required = True

    def parse(self, query: MultiQuery) -> list[str]:
        given = [value for value in query.getall(self.name, ()) if value != ""]
        if not given:
            raise InvalidParameter(self.name, "required: give it once per token")
        if len(given) > self.most:
            raise InvalidParameter(self.name, f"at most {self.most} values, got {len(given)}")
        for value in given:
            if not TOKEN_SHAPE.fullmatch(value):
                shown = repr(value[:40])
                raise InvalidParameter(self.name, f"each is 1 to {TOKEN_CHARS} of A-Z a-z 0-9 _ -, got {shown}")
        return list(dict.fromkeys(given))

    def schema(self) -> Schema:
        return {
            "type": "array",
            "items": {"type": "string", "pattern": f"^{TOKEN_SHAPE.pattern}$"},
            "minItems": 1,
            "maxItems": self.most,
        }


# What a minted token looks like (43 or 44 characters of URL-safe base64), with room to spare.
TOKEN_CHARS = 64
TOKEN_SHAPE = re.compile(f"[A-Za-z0-9_-]{{1,{TOKEN_CHARS}}}")


class QueryParam(Protocol):
    # Read-only: the declarations are frozen dataclasses.
    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    def schema(self) -> Schema: ...


# The filters of deliveries and of event streams, combined with AND.
TOKEN_FILTER = TextParam("token", "only this callback's deliveries")
GROUP_FILTER = TextParam("group", "only the deliveries of this group's callbacks")
CORRELATION_FILTER = TextParam("correlation_id", "only deliveries carrying this correlation id (e.g. a RequestID)")
OUTCOME_FILTER = TextParam("outcome", "only deliveries with this outcome", choices=OUTCOMES)
DELIVERY_FILTERS = (TOKEN_FILTER, GROUP_FILTER, CORRELATION_FILTER, OUTCOME_FILTER)
# The cursor of deliveries: whoever has seen id N has seen every delivery below N.
AFTER = IntParam("after", 0, 0, MAX_CURSOR, "only deliveries after this id: the last one seen")


def query_filter(query: Query, owner: str | None) -> DeliveryFilter:
    """The token, group, correlation_id and outcome parameters, combined with AND, within what
    `owner` may see (None: everything)."""
    return DeliveryFilter(
        token=TOKEN_FILTER.parse(query),
        group=GROUP_FILTER.parse(query),
        correlation_id=CORRELATION_FILTER.parse(query),
        owner=owner,
        outcome=OUTCOME_FILTER.parse(query),
    )


# JSON bodies: an object whose fields are all optional unless `required`. A field given as null
# is a field not given (its default), as JSON clients write absent values either way.


class Field(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def required(self) -> bool: ...

    def parse(self, body: Body) -> Any: ...

    def schema(self) -> Schema: ...


@dataclass(frozen=True, slots=True)
class JsonBody:
    """A JSON object body: its fields, in the order a handler checks them; any other is refused."""

    fields: tuple[Field, ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(field.name for field in self.fields)

    @property
    def required(self) -> bool:
        """Whether a request needs a body at all: an empty one is {}, which lacks a required field."""
        return any(field.required for field in self.fields)

    async def read(self, request: web.Request) -> dict[str, Any]:
        """The body as a JSON object (an empty body is {}); unknown fields are refused."""
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidJson(f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidBody()
        refuse_unknown_fields(body, self.names)
        return body

    def schema(self) -> Schema:
        schema: Schema = {
            "type": "object",
            "additionalProperties": False,
            "properties": {field.name: field.schema() for field in self.fields},
        }
        required = [field.name for field in self.fields if field.required]
        return {**schema, "required": required} if required else schema


def refuse_unknown_fields(body: Body, allowed: frozenset[str]) -> None:
    for name in body:
        if name not in allowed:
            raise UnknownField(name, allowed)


def field_int(body: Body, name: str, default: int, minimum: int, maximum: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(name, f"must be a whole number, got {orjson.dumps(value).decode()[:40]}")
    if not minimum <= value <= maximum:
        raise InvalidField(name, f"must be from {minimum} to {maximum}, got {value}")
    return value


def field_name(body: Body, name: str) -> str | None:
    """An optional short string such as a label or a group."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidField(name, "must be a non-empty string or null")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidField(name, f"must be at most {MAX_NAME_LENGTH} characters")
    return value


@dataclass(frozen=True, slots=True)
class IntField:
    """A whole number from `minimum` to `maximum`; absent or null: `default`."""

    name: str
    default: int
    minimum: int
    maximum: int
    description: str
    required: bool = False

    def parse(self, body: Body) -> int:
        if self.required and self.name not in body:
            raise InvalidField(self.name, f"required, a whole number from {self.minimum} to {self.maximum}")
        return field_int(body, self.name, self.default, self.minimum, self.maximum)

    def schema(self) -> Schema:
        return {
            "type": "integer",
            "minimum": self.minimum,
            "maximum": self.maximum,
            "default": self.default,
            "nullable": True,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class NameField:
    """A short non-empty string, such as a label or a group; absent or null: None."""

    name: str
    description: str
    required = False

    def parse(self, body: Body) -> str | None:
        return field_name(body, self.name)

    def schema(self) -> Schema:
        return {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_NAME_LENGTH,
            "nullable": True,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class ObjectField:
    """Any JSON object of at most MAX_METADATA_BYTES (as compact JSON); absent or null: {}."""

    name: str
    description: str
    required = False

    def parse(self, body: Body) -> dict[str, Any]:
        value = body.get(self.name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InvalidField(self.name, "must be a JSON object")
        if len(orjson.dumps(value)) > MAX_METADATA_BYTES:
            raise InvalidField(self.name, f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
        return value

    def schema(self) -> Schema:
        # JSON Schema cannot bound an object's size in bytes: the description says it.
        limit = f" (at most {MAX_METADATA_BYTES} bytes as JSON)"
        return {"type": "object", "nullable": True, "description": self.description + limit}


@dataclass(frozen=True, slots=True)
class NetworksField:
    """A list of IP addresses or CIDRs, kept as canonical CIDRs; absent or null: none."""

    name: str
    description: str
    required = False

    def parse(self, body: Body) -> tuple[str, ...]:
        value = body.get(self.name)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise InvalidField(self.name, 'must be a list of IP addresses or CIDRs such as "203.0.113.0/24"')
        try:
            return networks.normalise(value)
        except ValueError as exc:
            raise InvalidField(self.name, str(exc)) from None

    def schema(self) -> Schema:
        return {
            "type": "array",
            "items": {"type": "string", "pattern": IP_NETWORK_PATTERN},
            "maxItems": networks.MAX_NETWORKS,
            "nullable": True,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class SpecField(Generic[S]):
    """A JSON object a domain module reads and checks: a signature check, a response spec, an
    outcome rule, an expected set, a contract. Absent or null: None. `read(value, name)`
    raises `problem` with a message naming the part at fault; `shape` is the JSON Schema of
    what `read` accepts, as far as a schema can say it."""

    name: str
    description: str
    read: Callable[[Any, str], S]
    problem: type[Exception]
    shape: Schema
    required = False

    def parse(self, body: Body) -> S | None:
        value = body.get(self.name)
        if value is None:
            return None
        try:
            return self.read(value, self.name)
        except self.problem as exc:
            # The message names the field (and never repeats a secret).
            raise BadRequest(str(exc), code=InvalidField.code) from None

    def schema(self) -> Schema:
        return {"nullable": True, **self.shape, "description": self.description}


# The patterns below say in JSON Schema (ECMAScript regular expressions) what Python accepts,
# character for character: str.strip's whitespace, str.lower's case folding, ipaddress's syntax.

# What str.isspace calls whitespace (none lies above U+3000): not quite what a pattern's \s means.
_SPACES = "".join(f"\\u{ord(c):04x}" for c in map(chr, range(0x3001)) if c.isspace())
_SPACE, _NOT_SPACE = f"[{_SPACES}]", f"[^{_SPACES}]"
# str.lower folds one non-ASCII letter onto an ASCII one: the Kelvin sign onto k.
_LOWERED_ONTO = {"k": "\\u212a"}


def _caseless(word: str) -> str:
    """A pattern of the strings whose .lower() is `word` (an ASCII word)."""
    return "".join(f"[{c}{c.upper()}{_LOWERED_ONTO.get(c, '')}]" if c.isalpha() else c for c in word)


_WHSEC_PATTERN = f"^{WHSEC_PREFIX}{WHSEC_KEY_PATTERN}$"
_HIDDEN_HEADER_PATTERN = f"^{_SPACE}*(?:{'|'.join(_caseless(name) for name in sorted(HIDDEN_HEADERS))}){_SPACE}*$"
_EMPTY = {"type": "string", "enum": ["", None], "nullable": True}
_STANDARD_WEBHOOKS: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["scheme", "secret"],
    "properties": {
        "scheme": {"type": "string", "enum": [STANDARD_WEBHOOKS]},
        "secret": {
            "type": "string",
            "maxLength": MAX_SECRET_LENGTH,
            "pattern": _WHSEC_PATTERN,
            "description": f"{WHSEC_PREFIX} then the key in base64, as the sender shows it",
        },
        # Standard Webhooks fixes its headers and encoding: the generic scheme's fields stay empty.
        **{name: _EMPTY for name in HMAC_ONLY_FIELDS},
    },
}
_HMAC: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["scheme", "secret", "header"],
    "properties": {
        "scheme": {"type": "string", "enum": [HMAC_SHA256]},
        "secret": {"type": "string", "minLength": 1, "maxLength": MAX_SECRET_LENGTH},
        "header": {
            "type": "string",
            "maxLength": MAX_HEADER_LENGTH,
            "pattern": _NOT_SPACE,  # not blank
            "not": {"pattern": _HIDDEN_HEADER_PATTERN},  # cbhub does not keep these headers
            "description": "the header carrying the signature",
        },
        "encoding": {
            "type": "string",
            "enum": [*ENCODINGS, "", None],
            "nullable": True,
            "description": f"of the digest; empty: {ENCODINGS[0]}",
        },
        "prefix": {
            "type": "string",
            "maxLength": MAX_PREFIX_LENGTH,
            "nullable": True,
            "description": 'before the digest, such as "sha256="',
        },
    },
}

_PRINTABLE = "^[ -~]*$"
_REFUSED_HEADER_PATTERN = (
    "^(?:"
    + "|".join([*(_caseless(name) for name in REFUSED_HEADERS), *(_caseless(p) + ".*" for p in REFUSED_HEADER_PREFIXES)])
    + ")$"
)
_FIXED_ANSWER: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "status": {"type": "integer", "minimum": STATUS_MIN, "maximum": STATUS_MAX, "nullable": True, "default": 200},
        "content_type": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_CONTENT_TYPE,
            "pattern": _PRINTABLE,
            "nullable": True,
            "description": f"empty: {TEXT_PLAIN}",
        },
        "body": {"type": "string", "maxLength": MAX_BODY_CHARS, "nullable": True, "description": "sent as UTF-8"},
        "headers": {
            "type": "object",
            "nullable": True,
            "maxProperties": MAX_HEADERS,
            "propertyNames": {
                "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]{1," + str(MAX_HEADER_NAME) + "}$",
                "not": {"pattern": _REFUSED_HEADER_PATTERN},
            },
            "additionalProperties": {"type": "string", "maxLength": MAX_HEADER_VALUE, "pattern": _PRINTABLE},
            "description": "no hop-by-hop, framing, cookie, CORS or security header (docs/api.md)",
        },
        "echo": {"type": "string", "enum": [None], "nullable": True},
    },
}
_ECHO_ANSWER: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["echo"],
    "properties": {
        "echo": {
            "type": "string",
            "pattern": "^(?:query|form|json):[\\s\\S]{1," + str(MAX_ECHO_NAME) + "}$",
            "description": "answer this query parameter, form field or top-level JSON field as text/plain",
        }
    },
}

_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = f"{_OCTET}(?:\\.{_OCTET}){{3}}"
_HEXTET = "[0-9A-Fa-f]{1,4}"
# Eight hextets, or fewer around one "::" standing for at least one zero hextet.
_IPV6 = "|".join(
    [f"(?:{_HEXTET}:){{7}}{_HEXTET}", f"(?:{_HEXTET}:){{1,7}}:", f":(?::{_HEXTET}){{1,7}}", "::"]
    + [f"(?:{_HEXTET}:){{1,{left}}}(?::{_HEXTET}){{1,{7 - left}}}" for left in range(1, 7)]
)

# Prefix lengths, 0 to 32 and 0 to 128, with the leading zeros ipaddress allows.
_IPV4_PREFIX = "0*(?:[12]?[0-9]|3[0-2])"
_IPV6_PREFIX = "0*(?:[1-9]?[0-9]|1[01][0-9]|12[0-8])"


# An address or a CIDR (host bits allowed), in the usual notations; ipaddress also takes a few rare
# ones this does not list (a netmask after the slash, IPv6 with a dotted IPv4 tail or a zone).
IP_NETWORK_PATTERN = (
    f"^{_SPACE}*(?:{_IPV4}(?:/{_IPV4_PREFIX})?|(?:{_IPV6})(?:/{_IPV6_PREFIX})?){_SPACE}*$"
)

# The shapes of the SpecFields' objects: what each domain parser accepts.
VERIFY_SHAPE: Schema = {"oneOf": [_STANDARD_WEBHOOKS, _HMAC]}
RESPONSE_SHAPE: Schema = {"oneOf": [_FIXED_ANSWER, _ECHO_ANSWER]}


def _rule_shape() -> Schema:
    # What parse_rule accepts; that ok and error share no value, and that one of them is given,
    # the description says.
    field = {"type": "string", "minLength": 1, "maxLength": MAX_RULE_TEXT}
    word = {"oneOf": [{"type": "string", "maxLength": MAX_RULE_TEXT}, {"type": "number"}, {"type": "boolean"}]}
    words = {"type": "array", "items": word, "maxItems": MAX_RULE_VALUES, "nullable": True}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["field"],
        "properties": {
            "field": {**field, "description": 'a form field, a top-level JSON key, or a JSON Pointer ("/result/state")'},
            "ok": {**words, "description": "values meaning success (absent: any value not in error)"},
            "error": {**words, "description": "values meaning failure"},
            "error_code": {**field, "nullable": True, "description": "the field holding the error's code"},
            "error_message": {**field, "nullable": True, "description": "the field holding the error's message"},
        },
    }


def _expect_shape() -> Schema:
    named = {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_NAMED_IDS,
        "uniqueItems": True,
        "items": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
        "description": "each must arrive once, as a delivery's correlation_id",
    }
    return {
        "oneOf": [
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["correlation_ids"],
                "properties": {"correlation_ids": named},
            },
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["count"],
                "properties": {"count": {"type": "integer", "minimum": 1, "maximum": MAX_COUNT}},
            },
        ],
    }


def _contract_shape() -> Schema:
    names = {
        "type": "array",
        "maxItems": MAX_CONTRACT_NAMES,
        "items": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
        "nullable": True,
    }
    # A schema is checked as a JSON Schema 2020-12 by the server; the document cannot say that,
    # nor that one of the three checks must be given.
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "json_schema": {"type": "object", "nullable": True, "description": "a JSON Schema 2020-12"},
            "form_fields": {**names, "description": "fields that must be present and non-empty"},
            "content_types": {**names, "description": "media types accepted, such as application/json"},
            "reject": {
                "type": "boolean",
                "nullable": True,
                "description": "answer 422 to a delivery that does not fit (it is stored all the same)",
            },
        },
    }


RULE_SHAPE = _rule_shape()
EXPECT_SHAPE = _expect_shape()
CONTRACT_SHAPE = _contract_shape()
