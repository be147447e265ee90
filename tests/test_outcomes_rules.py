"""The outcome rules, as a pure function: a callback's own rule, the built-in Marketing Cloud and
JSON rules, and what is left unknown."""

from __future__ import annotations

from urllib.parse import urlencode

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from helpers import MARKETING_CLOUD_FIELDS

from cbhub.domain.bodies import correlation_of, parse_body
from cbhub.domain.outcomes import (
    ERROR,
    OK,
    UNKNOWN,
    RuleError,
    Verdict,
    classify,
    parse_rule,
)

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


def form(**fields: str) -> bytes:
    return urlencode({**MARKETING_CLOUD_FIELDS, **fields}).encode()


def of_json(value: object, rule: dict[str, object] | None = None, builtin: bool = True) -> Verdict:
    return classify(orjson.dumps(value), JSON, None, parse_rule(rule) if rule else None, builtin)


def of_form(raw: bytes, rule: dict[str, object] | None = None, builtin: bool = True) -> Verdict:
    return classify(raw, FORM, None, parse_rule(rule) if rule else None, builtin)


# Marketing Cloud's form


def test_marketing_cloud_ok_is_ok():
    assert of_form(form()) == Verdict(OK)


def test_marketing_cloud_error_carries_its_code_and_message():
    raw = form(OverallStatusCode="Error", StatusCode="Error", ErrorCode="12014", StatusMessage="Invalid data extension")
    assert of_form(raw) == Verdict(ERROR, {"code": "12014", "message": "Invalid data extension"})


def test_marketing_cloud_error_code_alone_is_an_error():
    assert of_form(form(ErrorCode="310007")) == Verdict(ERROR, {"code": "310007", "message": None})


def test_marketing_cloud_status_is_compared_without_case():
    assert of_form(form(OverallStatusCode="ok", StatusCode="Ok")).outcome == OK


def test_marketing_cloud_without_status_fields_is_unknown():
    assert of_form(urlencode({"RequestID": "r1", "foo": "bar"}).encode()) == Verdict(UNKNOWN)


def test_a_form_is_read_as_parse_body_reads_it():
    raw = b"RequestID=r%201&OverallStatusCode=Has+Errors&ErrorCode=1%262&StatusMessage=a+b%20c"
    parsed = parse_body(raw, FORM)
    assert of_form(raw) == classify(raw, FORM, parsed) == Verdict(ERROR, {"code": "1&2", "message": "a b c"})
    # As the ingest route hands it over: a form is not parsed for its correlation id.
    handed, _ = correlation_of(raw, FORM, ("RequestID",))
    assert classify(raw, FORM, handed).outcome == ERROR


def test_a_repeated_form_field_counts_by_its_first_value():
    raw = b"StatusCode=OK&StatusCode=Error"
    assert of_form(raw).outcome == OK


# The JSON rule


@pytest.mark.parametrize("word", ["ok", "success", "Succeeded", "COMPLETED", "done"])
def test_json_success_words_are_ok(word):
    assert of_json({"status": word}).outcome == OK
    assert of_json({"state": word}).outcome == OK


@pytest.mark.parametrize("word", ["error", "Failed", "failure"])
def test_json_failure_words_are_errors(word):
    assert of_json({"state": word}) == Verdict(ERROR, {"code": None, "message": None})


def test_json_error_text_or_object():
    assert of_json({"error": "quota exceeded"}) == Verdict(ERROR, {"code": None, "message": "quota exceeded"})
    assert of_json({"status": "done", "error": {"code": "E42", "message": "boom"}}) == Verdict(
        ERROR, {"code": "E42", "message": "boom"}
    )
    assert of_json({"error": None, "status": "done"}).outcome == OK


def test_json_other_shapes_are_unknown():
    assert of_json({"status": "running"}).outcome == UNKNOWN
    assert of_json({"result": {"status": "ok"}}).outcome == UNKNOWN  # only top-level keys
    assert of_json([1, 2]).outcome == UNKNOWN
    assert classify(b"plain text", "text/plain") == Verdict(UNKNOWN)
    assert classify(b"", None) == Verdict(UNKNOWN)
    assert classify(b"{not json", JSON) == Verdict(UNKNOWN)


# A callback's own rule


def test_own_rule_with_a_json_pointer():
    rule = {
        "field": "/result/state",
        "ok": ["Shipped"],
        "error": ["REJECTED"],
        "error_code": "/result/reason/code",
        "error_message": "/result/reason/text",
    }
    rejected = {"result": {"state": "rejected", "reason": {"code": 7, "text": "no stock"}}}
    assert of_json(rejected, rule) == Verdict(ERROR, {"code": "7", "message": "no stock"})
    assert of_json({"result": {"state": "SHIPPED"}}, rule).outcome == OK
    # A value in neither list: unknown, even where a built-in rule would say ok.
    assert of_json({"status": "ok", "result": {"state": "packing"}}, rule).outcome == UNKNOWN


def test_own_rule_pointer_into_a_list_and_escapes():
    rule = {"field": "/items/1/a~1b", "error": ["x"]}
    assert of_json({"items": [{}, {"a/b": "X"}]}, rule).outcome == ERROR


def test_own_rule_without_an_ok_list_takes_anything_else_as_ok():
    rule = {"field": "code", "error": ["E1", "E2"]}
    assert of_json({"code": "whatever"}, rule).outcome == OK
    assert of_json({"code": "e2"}, rule).outcome == ERROR
    assert of_json({"code": 0}, {"field": "code", "error": [1]}).outcome == OK
    assert of_json({"code": 1}, {"field": "code", "error": [1]}).outcome == ERROR
    assert of_json({"ok": True}, {"field": "ok", "error": [False]}).outcome == OK


def test_own_rule_on_a_form_field():
    rule = {"field": "Result", "ok": ["accepted"], "error": ["declined"], "error_message": "Why"}
    raw = urlencode({"Result": "Declined", "Why": "card expired"}).encode()
    assert of_form(raw, rule) == Verdict(ERROR, {"code": None, "message": "card expired"})


def test_a_body_without_the_rules_field_falls_to_the_built_in_rules():
    rule = {"field": "/outcome", "error": ["bad"]}
    assert of_json({"status": "failed"}, rule).outcome == ERROR
    assert of_form(form(), {"field": "Result", "error": ["x"]}).outcome == OK


def test_builtin_false_leaves_only_own_rules():
    assert of_form(form(ErrorCode="1"), builtin=False) == Verdict(UNKNOWN)
    assert of_json({"status": "failed"}, builtin=False) == Verdict(UNKNOWN)
    assert of_json({"x": "no"}, {"field": "x", "error": ["no"]}, builtin=False).outcome == ERROR
    assert of_json({"status": "failed"}, {"field": "x", "error": ["no"]}, builtin=False).outcome == UNKNOWN


def test_long_error_texts_are_cut():
    verdict = of_json({"error": "x" * 5000})
    assert verdict.error is not None and len(verdict.error["message"] or "") == 1000


@pytest.mark.parametrize(
    ("rule", "named"),
    [
        ("failed", "outcome: must be an object"),
        ({"error": ["x"]}, "outcome.field: required"),
        ({"field": "", "error": ["x"]}, "outcome.field"),
        ({"field": "s", "error": "failed"}, "outcome.error: must be a list"),
        ({"field": "s", "ok": [None]}, "outcome.ok[0]"),
        ({"field": "s", "ok": [{"a": 1}]}, "outcome.ok[0]"),
        ({"field": "s", "error": ["x"], "errors": []}, "outcome.errors: unknown"),
        ({"field": "s", "error_code": 3}, "outcome.error_code"),
        ({"field": "s" * 201}, "outcome.field: must be at most 200"),
    ],
)
def test_bad_rules_are_refused_naming_the_part(rule, named):
    with pytest.raises(RuleError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse_rule(rule)


def test_a_rule_round_trips_through_its_json():
    rule = parse_rule({"field": "/s", "ok": ["Done"], "error": ["FAIL", 3], "error_code": "c"})
    assert rule.ok == ("done",) and rule.error == ("fail", "3")
    assert parse_rule(rule.to_json()) == rule


# The form scan reads as parse_body reads


_PIECES = st.sampled_from(
    ["StatusCode", "OverallStatusCode", "ErrorCode", "StatusMessage", "Result", "=", "&", "+", "%20", "%3D", "%26",
     "OK", "ok", "Error", "12014", "x", "", "%", "%zz", "Status%43ode"]
)


@given(st.lists(_PIECES, max_size=14).map("".join))
def test_a_scanned_form_reads_as_a_parsed_one(text):
    raw = text.encode()
    rule = parse_rule({"field": "Result", "error": ["x"], "error_code": "ErrorCode"})
    for own in (None, rule):
        assert classify(raw, FORM, None, own) == classify(raw, FORM, parse_body(raw, FORM), own)
