"""Proof that a delivery comes from its sender: Standard Webhooks and generic HMAC-SHA256.

Pure functions over plain data (a spec, the request's headers, its raw body, the time): no HTTP,
no storage. Digests come from the standard library and are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from cbhub.domain.model import HIDDEN_HEADERS

STANDARD_WEBHOOKS = "standard-webhooks"
HMAC_SHA256 = "hmac-sha256"
SCHEMES = (STANDARD_WEBHOOKS, HMAC_SHA256)
ENCODINGS = ("hex", "base64")
SPEC_FIELDS = frozenset({"scheme", "secret", "header", "encoding", "prefix"})
# Fields only the generic scheme has: Standard Webhooks fixes its headers and encoding.
HMAC_ONLY_FIELDS = ("header", "encoding", "prefix")
WHSEC_PREFIX = "whsec_"
# The key of a whsec_ secret: base64, its padding optional, not empty. Said here, not left to
# base64.b64decode, which on Python 3.11 and 3.12 also takes padding past a whole group
# ("AAAA=") where 3.13 refuses it. The OpenAPI document publishes this same pattern.
WHSEC_KEY_PATTERN = "(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}(?:==?)?|[A-Za-z0-9+/]{3}=?)"
_WHSEC_KEY = re.compile(WHSEC_KEY_PATTERN)
MAX_SECRET_LENGTH = 1024
MAX_HEADER_LENGTH = 100
MAX_PREFIX_LENGTH = 100


class SpecError(ValueError):
    """A verification spec that cannot be used; the message names the field, never the secret."""


@dataclass(frozen=True, slots=True)
class VerifySpec:
    scheme: str
    secret: str = field(repr=False)
    header: str = ""
    encoding: str = "hex"
    prefix: str = ""

    def describe(self) -> dict[str, Any]:
        """What a client API reader may see: everything but the secret."""
        if self.scheme == STANDARD_WEBHOOKS:
            return {"scheme": self.scheme}
        return {"scheme": self.scheme, "header": self.header, "encoding": self.encoding, "prefix": self.prefix}

    def to_json(self) -> dict[str, Any]:
        """The stored form, secret included (the database is readable by its owner only)."""
        return {**self.describe(), "secret": self.secret}


def parse_spec(value: Any, where: str = "verify") -> VerifySpec:
    """A spec from a mint request's `verify` object or the [ingest.verify] table."""
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}: must be an object with scheme and secret")
    for name in value:
        if name not in SPEC_FIELDS:
            raise SpecError(f"{where}.{str(name)[:40]}: unknown field (allowed: {', '.join(sorted(SPEC_FIELDS))})")
    scheme = value.get("scheme")
    if scheme not in SCHEMES:
        raise SpecError(f"{where}.scheme: must be one of {', '.join(SCHEMES)}")
    secret = value.get("secret")
    if not isinstance(secret, str) or not secret or len(secret) > MAX_SECRET_LENGTH:
        raise SpecError(f"{where}.secret: required, a non-empty string of at most {MAX_SECRET_LENGTH} characters")
    if scheme == STANDARD_WEBHOOKS:
        for name in HMAC_ONLY_FIELDS:
            if value.get(name) not in (None, ""):
                raise SpecError(f"{where}.{name}: only for the {HMAC_SHA256} scheme")
        spec = VerifySpec(scheme, secret)
        _standard_webhooks_key(spec, where)
        if not _WHSEC_KEY.fullmatch(secret[len(WHSEC_PREFIX) :]):
            raise SpecError(f"{where}.secret: after {WHSEC_PREFIX}, the secret must be base64")
        return spec
    header = value.get("header")
    if not isinstance(header, str) or not header.strip() or len(header) > MAX_HEADER_LENGTH:
        raise SpecError(f"{where}.header: required for {HMAC_SHA256}, the name of the signature header")
    if header.strip().lower() in HIDDEN_HEADERS:
        raise SpecError(f"{where}.header: {header.strip()!r} is not kept by cbhub; use another header")
    # Absent, null and "" are the default; any other value must be one (false and 0 are not).
    encoding = value.get("encoding")
    encoding = "hex" if encoding in (None, "") else encoding
    if encoding not in ENCODINGS:
        raise SpecError(f"{where}.encoding: must be one of {', '.join(ENCODINGS)}")
    prefix = value.get("prefix")
    prefix = "" if prefix is None else prefix
    if not isinstance(prefix, str) or len(prefix) > MAX_PREFIX_LENGTH:
        raise SpecError(f"{where}.prefix: must be a string of at most {MAX_PREFIX_LENGTH} characters")
    return VerifySpec(scheme, secret, header.strip(), encoding, prefix)


def _standard_webhooks_key(spec: VerifySpec, where: str = "verify") -> bytes:
    """A `whsec_` secret is base64 of the key bytes (padding optional, as senders' libraries accept)."""
    if not spec.secret.startswith(WHSEC_PREFIX):
        raise SpecError(f"{where}.secret: a {STANDARD_WEBHOOKS} secret starts with {WHSEC_PREFIX}")
    encoded = spec.secret[len(WHSEC_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SpecError(f"{where}.secret: after {WHSEC_PREFIX}, the secret must be base64") from None
    if not key:
        raise SpecError(f"{where}.secret: the key after {WHSEC_PREFIX} is empty")
    return key


def problem(spec: VerifySpec, headers: Mapping[str, str], body: bytes, now_s: int, tolerance_s: int) -> str | None:
    """Why the request fails verification, or None when it passes. `headers` in any case."""
    lowered = {name.lower(): value for name, value in headers.items()}
    if spec.scheme == STANDARD_WEBHOOKS:
        return _standard_webhooks_problem(spec, lowered, body, now_s, tolerance_s)
    return _hmac_problem(spec, lowered, body)


def _standard_webhooks_problem(
    spec: VerifySpec, headers: Mapping[str, str], body: bytes, now_s: int, tolerance_s: int
) -> str | None:
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    missing = [name for name, v in (("webhook-id", msg_id), ("webhook-timestamp", timestamp), ("webhook-signature", signatures)) if not v]
    if missing:
        return f"missing {', '.join(missing)} header"
    assert msg_id and timestamp and signatures
    try:
        sent_at = int(timestamp.strip())
    except ValueError:
        return "webhook-timestamp is not a whole number of seconds"
    # Outside the window a captured request cannot be replayed, even under a fresh message id.
    if abs(now_s - sent_at) > tolerance_s:
        return f"webhook-timestamp is more than {tolerance_s} s away from now"
    signed = f"{msg_id}.{sent_at}.".encode() + body
    expected = hmac.new(_standard_webhooks_key(spec), signed, hashlib.sha256).digest()
    # Several space-separated "v1,<base64>" entries: a sender rotating its secret signs twice.
    for entry in signatures.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, candidate):
            return None
    return "no webhook-signature entry matches"


def _hmac_problem(spec: VerifySpec, headers: Mapping[str, str], body: bytes) -> str | None:
    received = headers.get(spec.header.lower())
    if not received:
        return f"missing {spec.header} header"
    digest = hmac.new(spec.secret.encode(), body, hashlib.sha256).digest()
    if spec.encoding == "hex":
        # Hex digits are case-blind; the prefix is compared as configured.
        expected = spec.prefix + digest.hex()
        if received.startswith(spec.prefix):
            received = spec.prefix + received[len(spec.prefix) :].lower()
    else:
        expected = spec.prefix + base64.b64encode(digest).decode()
    if hmac.compare_digest(expected.encode(), received.strip().encode("utf-8", "surrogateescape")):
        return None
    return f"{spec.header} does not match the body"
