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
