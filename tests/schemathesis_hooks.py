"""Schemathesis hooks for tests/test_openapi_and_fuzz.py, loaded through SCHEMATHESIS_HOOKS.

GET /v1/deliveries/{id}/body answers what a sender posted under the type it declared, so the
fuzzer reads back its own random bytes labelled YAML. Schemathesis (4.x) reuses the data of
responses and skips one it cannot read when reading raises ValueError; a YAML error is no
ValueError, so it kills the worker thread: the operations queued behind it go untested and
the run still passes. Read as ValueError, such a body is skipped as Schemathesis means to.
"""

from __future__ import annotations

from typing import Any

import schemathesis
import yaml

# The YAML types Schemathesis reads (and, by family, any "+yaml" one).
YAML_TYPES = ("text/yaml", "text/x-yaml", "text/vnd.yaml", "application/yaml", "application/x-yaml")


@schemathesis.deserializer(*YAML_TYPES)
def yaml_or_value_error(ctx: Any, response: Any) -> Any:
    try:
        return yaml.safe_load(response.content.decode(response.encoding or "utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from exc


# A mint's "response": {"headers": {...}} takes header names of token characters, none of the
# refused ones. The document says so in `propertyNames`, which the OpenAPI 3.0 dialect (JSON
# Schema draft 4) does not have: Schemathesis generates any name and calls the request valid.
# Only that refusal is dropped; a schema-valid mint refused for anything else still fails.


def _refuses_a_header_name(body: Any) -> bool:
    from cbhub.domain.responses import HEADER_NAME, header_refused

    response = body.get("response") if isinstance(body, dict) else None
    headers = response.get("headers") if isinstance(response, dict) else None
    if not isinstance(headers, dict):
        return False
    return any(not HEADER_NAME.fullmatch(name) or header_refused(name) for name in headers)


@schemathesis.hook
def filter_failure(ctx: Any, failure: Any, case: Any, response: Any) -> bool:
    if getattr(failure, "code", None) != "ST202" or response.status_code != 400:
        return True
    return not _refuses_a_header_name(case.body)
