"""How a delivery went: ok, error or unknown, read from its body once, when it is stored.

The rules, the first that decides wins:
1. the callback's own rule, given at mint (`OutcomeRule`): one field (a form field, a top-level
   JSON key or a JSON Pointer), its values compared as text, case-insensitively;
2. Marketing Cloud's form: `OverallStatusCode` / `StatusCode` of "OK" is ok, any other
   non-empty value or a non-empty `ErrorCode` is an error, told by `ErrorCode` and `StatusMessage`;
3. a JSON object's top-level `status` or `state` word, or a top-level `error`;
4. otherwise unknown.
Rules 2 and 3 are the built-in ones ([outcomes] builtin). "invalid" is not decided here: it is
a delivery refused by its callback's contract.

Pure: no I/O. A form body is scanned for the few fields the rules read, never decoded whole
(a Marketing Cloud result carries a percent-escaped XML document that nobody reads here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson

from cbhub.domain.bodies import (
    FORM_TYPE,
    FormScan,
    ParsedBody,
    form_fields,
    media_type,
    parse_body,
)

OK = "ok"
ERROR = "error"
UNKNOWN = "unknown"
# A delivery its callback's contract refused: stored, never the result.
INVALID = "invalid"
OUTCOMES = (OK, ERROR, UNKNOWN, INVALID)
# What a callback's result can be (an invalid delivery never becomes one).
RESULT_OUTCOMES = (OK, ERROR, UNKNOWN)

# The built-in rules' words, compared after casefold().
MARKETING_CLOUD_STATUS = ("OverallStatusCode", "StatusCode")
MARKETING_CLOUD_OK = "ok"
MARKETING_CLOUD_FIELDS = (*MARKETING_CLOUD_STATUS, "ErrorCode", "StatusMessage")
_BUILTIN_FORM_FIELDS = frozenset(MARKETING_CLOUD_FIELDS)
# What the built-in rules read of a form: scanned on arrival with the correlation fields.
BUILTIN_FORM_FIELDS = _BUILTIN_FORM_FIELDS
JSON_STATUS_KEYS = ("status", "state")
JSON_OK = frozenset({"ok", "success", "succeeded", "completed", "done"})
JSON_ERROR = frozenset({"error", "failed", "failure"})

# Bounds of a rule given at mint, and of what an error keeps of a sender's text.
MAX_RULE_VALUES = 100
MAX_RULE_TEXT = 200
MAX_ERROR_TEXT = 1000
RULE_FIELDS = frozenset({"field", "ok", "error", "error_code", "error_message"})


class RuleError(ValueError):
    """A rule given at mint that cannot be used; the message names the part at fault."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A delivery's outcome, and what the sender said went wrong (only for an error)."""

    outcome: str
    error: dict[str, str | None] | None = None

    def error_json(self) -> str | None:
        """The error as stored: JSON text, or None."""
        if self.error is None:
            return None
        return orjson.dumps(self.error).decode()


UNKNOWN_VERDICT = Verdict(UNKNOWN)
OK_VERDICT = Verdict(OK)
# A delivery that does not fit its callback's contract: what it says is not trusted.
INVALID_VERDICT = Verdict(INVALID)


@dataclass(frozen=True, slots=True)
class OutcomeRule:
    """A callback's own rule. `ok` None: any value not in `error` is ok. Values are kept
    casefolded, as they are compared."""

    field: str
    error: tuple[str, ...]
    ok: tuple[str, ...] | None = None
    error_code: str | None = None
    error_message: str | None = None

    def fields(self) -> tuple[str, ...]:
        """The body fields this rule reads."""
        return tuple(name for name in (self.field, self.error_code, self.error_message) if name is not None)

    def to_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "ok": list(self.ok) if self.ok is not None else None,
            "error": list(self.error),
            "error_code": self.error_code,
            "error_message": self.error_message,
        }


def parse_rule(value: Any, name: str = "outcome") -> OutcomeRule:
    """A rule from its JSON form (as given at mint, or as stored); raises RuleError naming the
    part at fault (`outcome.ok[2]: ...`)."""
    if not isinstance(value, dict):
        raise RuleError(f'{name}: must be an object such as {{"field": "/status", "error": ["failed"]}}')
    for key in value:
        if key not in RULE_FIELDS:
            raise RuleError(f"{name}.{key}: unknown; the fields are {', '.join(sorted(RULE_FIELDS))}")
    field = _rule_field(value, "field", name, required=True)
    assert field is not None
    # A value in both lists is an error (the error list is read first); with neither list, any
    # value the field has is ok.
    return OutcomeRule(
        field=field,
        ok=_rule_values(value, "ok", name),
        error=_rule_values(value, "error", name) or (),
        error_code=_rule_field(value, "error_code", name),
        error_message=_rule_field(value, "error_message", name),
    )


def _rule_field(value: dict[str, Any], key: str, name: str, required: bool = False) -> str | None:
    field = value.get(key)
    if field is None and not required:
        return None
    if not isinstance(field, str) or not field:
        hint = "required, " if required else ""
        raise RuleError(f'{name}.{key}: {hint}a form field name or a JSON Pointer such as "/result/state"')
    if len(field) > MAX_RULE_TEXT:
        raise RuleError(f"{name}.{key}: must be at most {MAX_RULE_TEXT} characters")
    return field


def _rule_values(value: dict[str, Any], key: str, name: str) -> tuple[str, ...] | None:
    values = value.get(key)
    if values is None:
        return None
    if not isinstance(values, list) or len(values) > MAX_RULE_VALUES:
        raise RuleError(f"{name}.{key}: must be a list of at most {MAX_RULE_VALUES} values")
    words: list[str] = []
    for index, item in enumerate(values):
        text = _text(item)
        if text is None or isinstance(item, (dict, list)) or len(text) > MAX_RULE_TEXT:
            raise RuleError(f"{name}.{key}[{index}]: must be a string, number or boolean of at most {MAX_RULE_TEXT} characters")
        words.append(text.strip().casefold())  # as a body's value is read
    return tuple(words)


def _pointer(pointer: str) -> tuple[str, ...]:
    """A JSON Pointer's reference tokens (RFC 6901: "~1" is "/", "~0" is "~"; any other "~"
    is read as itself)."""
    return tuple(token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/"))


def _text(value: Any) -> str | None:
    """A value as the text rules compare; None for an absent or null one."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return _text(value[0]) if value else None  # a repeated form field: its first value
    return value if isinstance(value, str) else str(value)


class _Body:
    """The fields of one body, read only as far as asked: a form's named fields, or a JSON
    object's keys and pointers."""

    __slots__ = ("form", "json")

    def __init__(self, form: dict[str, str] | None, json: Any) -> None:
        self.form = form
        self.json = json

    def get(self, field: str) -> Any:
        if self.form is not None:
            return self.form.get(field)
        if field.startswith("/"):
            return _resolve(self.json, _pointer(field))
        return self.json.get(field) if isinstance(self.json, dict) else None


def _resolve(document: Any, tokens: tuple[str, ...]) -> Any:
    for token in tokens:
        if isinstance(document, dict):
            document = document.get(token)
        elif isinstance(document, list) and token.isdigit() and int(token) < len(document):
            document = document[int(token)]
        else:
            return None
    return document


def _read_body(
    raw: bytes,
    content_type: str | None,
    parsed: ParsedBody | None,
    rule: OutcomeRule | None,
    builtin: bool,
    scanned: FormScan | None = None,
) -> _Body | None:
    """The body as the rules read it, or None when no rule can read it."""
    if not raw:
        return None
    names = _BUILTIN_FORM_FIELDS if builtin else frozenset()
    if rule is not None:
        names = names.union(rule.fields())
    if scanned is not None and scanned.covers(names):
        # A form scanned on arrival for these fields (and maybe more): nothing to read again.
        found = scanned.found
        return _Body({name: found[name] for name in names if name in found}, None)
    kind, charset = media_type(content_type)
    if kind == FORM_TYPE:
        if parsed is not None and isinstance(parsed.body, dict):
            return _Body({name: v for name in names if (v := _text(parsed.body.get(name))) is not None}, None)
        try:
            text = raw.decode(charset or "utf-8")
        except (UnicodeDecodeError, LookupError):
            return None
        return _Body(form_fields(text, names), None)
    if parsed is None:
        parsed = parse_body(raw, content_type)
    if isinstance(parsed.body, (dict, list)):
        return _Body(None, parsed.body)
    return None


def classify(
    raw: bytes,
    content_type: str | None,
    parsed: ParsedBody | None = None,
    rule: OutcomeRule | None = None,
    builtin: bool = True,
    scanned: FormScan | None = None,
) -> Verdict:
    """The outcome of a body received as (raw, content_type); `parsed` is its parsed form when
    the caller has it already (None: read here as far as needed), `scanned` the fields of a
    form body found on arrival (used when they include every field the rules read). Never
    raises."""
    if rule is None and not builtin:
        return UNKNOWN_VERDICT
    body = _read_body(raw, content_type, parsed, rule, builtin, scanned)
    if body is None:
        return UNKNOWN_VERDICT
    if rule is not None:
        verdict = _own_rule(body, rule)
        if verdict is not None:
            return verdict
    if builtin:
        verdict = _marketing_cloud(body) if body.form is not None else _json_rule(body.json)
        if verdict is not None:
            return verdict
    return UNKNOWN_VERDICT


def _own_rule(body: _Body, rule: OutcomeRule) -> Verdict | None:
    """None when the body lacks the rule's field: the built-in rules may still decide."""
    value = _text(body.get(rule.field))
    if value is None:
        return None
    word = value.strip().casefold()
    if word in rule.error:
        code = _text(body.get(rule.error_code)) if rule.error_code is not None else None
        message = _text(body.get(rule.error_message)) if rule.error_message is not None else None
        return _error(code, message)
    if rule.ok is None or word in rule.ok:
        return OK_VERDICT
    return UNKNOWN_VERDICT


def _marketing_cloud(body: _Body) -> Verdict | None:
    form = body.form
    assert form is not None
    statuses = [form[name] for name in MARKETING_CLOUD_STATUS if name in form]
    if not statuses:
        return None
    code = form.get("ErrorCode") or None
    failed = [status for status in statuses if status.strip() and status.strip().casefold() != MARKETING_CLOUD_OK]
    if code is not None or failed:
        return _error(code, form.get("StatusMessage") or None)
    if any(status.strip() for status in statuses):
        return OK_VERDICT
    return None


def _json_rule(document: Any) -> Verdict | None:
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    # null, false and "" say "no error" in the JSON senders write.
    if error is not None and error is not False and error != "":
        if isinstance(error, dict):
            return _error(_text(error.get("code")), _text(error.get("message")))
        return _error(None, _text(error) if not isinstance(error, list) else None)
    for key in JSON_STATUS_KEYS:
        word = document.get(key)
        if isinstance(word, str):
            word = word.strip().casefold()
            if word in JSON_OK:
                return OK_VERDICT
            if word in JSON_ERROR:
                return _error(None, None)
    return None


def _error(code: str | None, message: str | None) -> Verdict:
    return Verdict(ERROR, {"code": _short(code), "message": _short(message)})


def _short(text: str | None) -> str | None:
    if text is None or text == "":
        return None
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"
