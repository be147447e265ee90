"""Expected sets and contracts: what a callback says, at mint, it is waiting for.

An expected set makes one callback URL wait for many deliveries: a list of correlation ids
(each must arrive once) or a count of distinct ones. A contract says what a delivery must look
like (a JSON Schema, form fields, content types); one that does not fit is stored all the same,
with its problems, and is never the callback's result. Pure rules: no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from referencing.exceptions import Unresolvable

from cbhub.domain.bodies import ParsedBody, media_type, parse_body

MAX_NAMED_IDS = 10_000
MAX_COUNT = 100_000
# How many missing ids a callback object shows; GET /v1/callbacks/{t}/missing pages the rest.
MISSING_SHOWN = 100
MAX_ID_LENGTH = 200
MAX_PROBLEMS = 10
MAX_PROBLEM_LENGTH = 200
MAX_CONTRACT_BYTES = 64 * 1024
MAX_CONTRACT_NAMES = 100
# Compiled schemas kept, by their JSON text: a callback's schema is compiled once, whatever
# number of deliveries it checks and however often its row is read.
COMPILED_SCHEMAS = 1024


class SpecProblem(ValueError):
    """An `expect` or `contract` that cannot be used; the text says why."""


# Expected sets


@dataclass(frozen=True, slots=True)
class Expect:
    """What a mint asks for: named correlation ids (in the order given), or a count of distinct ones."""

    correlation_ids: tuple[str, ...] = ()
    count: int = 0

    @property
    def named(self) -> bool:
        return bool(self.correlation_ids)

    @property
    def total(self) -> int:
        return len(self.correlation_ids) if self.named else self.count


def parse_expect(value: Any, name: str = "expect") -> Expect:
    """An expected set from a mint request; raises SpecProblem naming `name` and what is wrong."""
    try:
        return _expect(value)
    except SpecProblem as exc:
        raise SpecProblem(f"{name}: {exc}") from None


def _expect(value: Any) -> Expect:
    if not isinstance(value, dict) or len(value) != 1 or not ({"correlation_ids", "count"} & value.keys()):
        raise SpecProblem('must be {"correlation_ids": [...]} or {"count": N}')
    if "count" in value:
        count = value["count"]
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
            raise SpecProblem(f"count must be a whole number from 1 to {MAX_COUNT}")
        return Expect(count=count)
    ids = value["correlation_ids"]
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_NAMED_IDS:
        raise SpecProblem(f"correlation_ids must be a list of 1 to {MAX_NAMED_IDS} strings")
    seen: set[str] = set()
    for index, one in enumerate(ids):
        if not isinstance(one, str) or not one or len(one) > MAX_ID_LENGTH:
            raise SpecProblem(f"correlation_ids[{index}] must be a string of 1 to {MAX_ID_LENGTH} characters")
        if one in seen:
            raise SpecProblem(f"correlation_ids[{index}] repeats {one[:40]!r}: each id is expected once")
        seen.add(one)
    return Expect(correlation_ids=tuple(ids))


@dataclass(slots=True)
class Expected:
    """A callback's progress through its expected set."""

    total: int
    named: bool
    arrived: int = 0
    unexpected: int = 0
    # The first MISSING_SHOWN ids still missing, in mint order; None when not read (a listing,
    # a stream event) or when the set is a count.
    missing: list[str] | None = None

    @property
    def complete(self) -> bool:
        return self.arrived >= self.total

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "arrived": self.arrived, "unexpected": self.unexpected, "missing": self.missing}


# Contracts


@dataclass(frozen=True, slots=True)
class Contract:
    json_schema: Any = None  # a JSON Schema 2020-12 (an object), or None
    form_fields: tuple[str, ...] = ()
    content_types: tuple[str, ...] = ()
    reject: bool = False
    _validator: Validator | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "json_schema": self.json_schema,
            "form_fields": list(self.form_fields),
            "content_types": list(self.content_types),
            "reject": self.reject,
        }

    def text(self) -> str:
        """As stored."""
        return orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS).decode()

    def problems(self, raw: bytes, content_type: str | None, parsed: ParsedBody | None) -> tuple[str, ...]:
        """What is wrong with a delivery, at most MAX_PROBLEMS short messages; () when it fits."""
        found: list[str] = []
        kind, _ = media_type(content_type)
        if self.content_types and kind not in self.content_types:
            found.append(f"content type {kind or '(none)'!r} is not one of {', '.join(self.content_types)}")
        if self.form_fields or self._validator is not None:
            body = (parsed or parse_body(raw, content_type))
            if body.parse_error is not None:
                found.append(f"the body cannot be read: {body.parse_error}")
            else:
                found.extend(self._field_problems(body.body))
                found.extend(self._schema_problems(body.body))
        return tuple(_short(problem) for problem in found[:MAX_PROBLEMS])

    def _field_problems(self, body: Any) -> list[str]:
        if not self.form_fields:
            return []
        if not isinstance(body, dict):
            return ["the body is not a form (nor a JSON object): the contract names fields"]
        return [f"field {name!r} is missing or empty" for name in self.form_fields if body.get(name) in (None, "", [])]

    def _schema_problems(self, body: Any) -> list[str]:
        if self._validator is None:
            return []
        try:
            errors = list(islice(self._validator.iter_errors(body), MAX_PROBLEMS))
        except Unresolvable as exc:  # a $ref to another document (never fetched), met by this body
            return [f"the schema cannot be applied: {exc}"]
        except RecursionError:  # never fail the store's write: the delivery is kept, unchecked
            return ["the body is nested too deeply to be checked"]
        return [f"{error.json_path}: {error.message}" for error in errors]


def _short(text: str) -> str:
    return text if len(text) <= MAX_PROBLEM_LENGTH else text[: MAX_PROBLEM_LENGTH - 1] + "…"


def _names(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_CONTRACT_NAMES:
        raise SpecProblem(f"{what} must be a list of at most {MAX_CONTRACT_NAMES} strings")
    if not all(isinstance(name, str) and 0 < len(name) <= MAX_ID_LENGTH for name in value):
        raise SpecProblem(f"{what} must hold non-empty strings of at most {MAX_ID_LENGTH} characters")
    return tuple(value)


CONTRACT_FIELDS = frozenset({"json_schema", "form_fields", "content_types", "reject"})


def parse_contract(value: Any, name: str = "contract") -> Contract:
    """A contract from a mint request; raises SpecProblem naming `name` and what is wrong (an
    invalid schema says where)."""
    try:
        return _contract(value)
    except SpecProblem as exc:
        raise SpecProblem(f"{name}: {exc}") from None


def _contract(value: Any) -> Contract:
    if not isinstance(value, dict):
        raise SpecProblem("must be an object with json_schema, form_fields, content_types, reject")
    unknown = value.keys() - CONTRACT_FIELDS
    if unknown:
        raise SpecProblem(f"unknown field {min(unknown)[:40]!r} (allowed: {', '.join(sorted(CONTRACT_FIELDS))})")
    if len(orjson.dumps(value)) > MAX_CONTRACT_BYTES:
        raise SpecProblem(f"must be at most {MAX_CONTRACT_BYTES} bytes as JSON")
    reject = value.get("reject", False)
    if reject is None:
        reject = False
    if not isinstance(reject, bool):
        raise SpecProblem("reject must be true or false")
    schema = value.get("json_schema")
    if schema is not None:
        if not isinstance(schema, dict):
            raise SpecProblem("json_schema must be a JSON Schema (an object)")
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            where = "/".join(str(part) for part in exc.path) or "(root)"
            raise SpecProblem(_short(f"json_schema is not a valid JSON Schema 2020-12 at {where}: {exc.message}")) from None
    form_fields = _names(value.get("form_fields"), "form_fields")
    content_types = tuple(name.lower() for name in _names(value.get("content_types"), "content_types"))
    return contract_from_text(Contract(schema, form_fields, content_types, reject).text())


@functools.lru_cache(maxsize=COMPILED_SCHEMAS)
def contract_from_text(text: str) -> Contract:
    """A stored contract, its schema compiled; cached by its text, so every row read of the
    same callback (and every callback minted with the same contract) shares one validator."""
    stored = orjson.loads(text)
    schema = stored.get("json_schema")
    validator = Draft202012Validator(schema) if schema is not None else None
    return Contract(
        schema, tuple(stored.get("form_fields") or ()), tuple(stored.get("content_types") or ()),
        bool(stored.get("reject")), validator,
    )


# The contract check the store runs on a delivery's callback (like a guard): the problems of
# the delivery under that callback's contract, () when it has none or the delivery fits.
ContractCheck = Callable[[Contract], tuple[str, ...]]
