"""A form body is scanned once on arrival for the correlation fields and the fields the
built-in outcome rules read; the outcome decided from that scan is the one decided from the
body itself."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from bench.payload import marketing_cloud_body
from cbhub.domain.bodies import FORM_TYPE, correlation_of, scan
from cbhub.domain.outcomes import BUILTIN_FORM_FIELDS, classify, parse_rule

FIELDS = ("RequestID", "correlation_id")
BODIES = [
    marketing_cloud_body(),
    urlencode({"RequestID": "r-1", "OverallStatusCode": "Error", "ErrorCode": "12 & 13", "StatusMessage": "bad+input"}).encode(),
    b"StatusCode=OK&StatusCode=Error&RequestID=&correlation_id=c%201",
    b"Status%43ode=%20ok%20&x=%zz&&RequestID=a+b",
    b"nothing=here",
    "StatusMessage=caf\u00e9&ErrorCode=E1".encode(),
]
RULES = [None, {"field": "state", "error": ["failed"]}, {"field": "StatusCode", "error": ["error"], "error_message": "StatusMessage"}]


@pytest.mark.parametrize("raw", BODIES)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("builtin", [True, False])
def test_the_outcome_from_the_scan_is_the_outcome_from_the_body(raw: bytes, rule: dict[str, object] | None, builtin: bool) -> None:
    also = BUILTIN_FORM_FIELDS if builtin else frozenset()
    parsed, correlation, scanned = scan(raw, FORM_TYPE, FIELDS, also)
    assert (parsed, correlation) == correlation_of(raw, FORM_TYPE, FIELDS)
    assert scanned is not None
    own = parse_rule(rule) if rule is not None else None
    assert classify(raw, FORM_TYPE, None, own, builtin, scanned) == classify(raw, FORM_TYPE, None, own, builtin)


def test_a_body_that_is_not_a_form_is_not_scanned() -> None:
    assert scan(b'{"RequestID": "x"}', "application/json", FIELDS, BUILTIN_FORM_FIELDS)[1:] == ("x", None)
    assert scan(b"\xff\xfe", FORM_TYPE, FIELDS, BUILTIN_FORM_FIELDS)[2] is None
