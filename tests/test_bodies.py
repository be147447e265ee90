"""Finding a body's correlation id without parsing all of it finds the same id as parsing it."""

from __future__ import annotations

from urllib.parse import quote_plus

from hypothesis import given, settings
from hypothesis import strategies as st

from cbhub.domain.bodies import FORM_TYPE, correlation_id, correlation_of, parse_body
from cbhub.config import CallbacksConfig

FIELDS = CallbacksConfig().correlation_fields
# Field names: the correlation fields themselves, near misses, and anything.
names = st.sampled_from([*FIELDS, "requestid", "Request ID", "RequestID ", ""]) | st.text(max_size=8)
# Raw fragments too, so that broken escapes ("%", "%zz", "%C3") and stray "=" and "&" occur.
fragments = st.sampled_from(["%", "%zz", "%C3", "%C3%A9", "+", "=", "&", "&&", ";"]) | st.text(max_size=12)


@st.composite
def form_bodies(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        name, value = draw(names), draw(st.text(max_size=10))
        encode = draw(st.booleans())
        parts.append(f"{quote_plus(name) if encode else name}={quote_plus(value) if encode else value}")
        if draw(st.booleans()):
            parts.append(draw(fragments))
    return "&".join(parts).encode("utf-8", "surrogatepass")


# Slow to generate (a composite of many draws); conftest's profile keeps that from failing it.
@settings(max_examples=100)
@given(form_bodies(), st.sampled_from([FORM_TYPE, f"{FORM_TYPE}; charset=utf-8", f"{FORM_TYPE}; charset=latin-1"]))
def test_a_form_gives_the_same_correlation_id_as_parsing_it(raw: bytes, content_type: str) -> None:
    parsed, found = correlation_of(raw, content_type, FIELDS)
    assert found == correlation_id(parse_body(raw, content_type), FIELDS)
    assert parsed is None or not raw  # a form is left to be parsed when first read


@settings(max_examples=100)
@given(st.binary(max_size=40), st.sampled_from([None, "application/json", "text/plain", FORM_TYPE + "; charset=bogus"]))
def test_other_bodies_are_parsed_as_before(raw: bytes, content_type: str | None) -> None:
    parsed, found = correlation_of(raw, content_type, FIELDS)
    expected = parse_body(raw, content_type)
    assert found == correlation_id(expected, FIELDS)
    assert parsed is None or parsed == expected


def test_a_marketing_cloud_form_is_correlated_by_its_request_id() -> None:
    raw = b"RequestID=5b3f2a7e&ConversationID=&StatusCode=OK&RequestID=second"
    assert correlation_of(raw, FORM_TYPE, FIELDS) == (None, "5b3f2a7e")
