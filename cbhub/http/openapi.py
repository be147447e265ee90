"""The OpenAPI 3 description of cbhub's HTTP API, served at /v1/openapi.json.

Query parameters and request bodies are not written here: they come from the declarations the
handlers parse with (cbhub.http.params, declared in api.py and realtime.py), so the document
accepts exactly what the server does. Routes, summaries and responses are written here; a test
checks that every route is described and every description is a route, and a fuzzer checks the
server against the document.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from aiohttp import web

from cbhub import __version__
from cbhub.config import CallbacksConfig, Config
from cbhub.domain.model import STATUSES
from cbhub.domain.outcomes import OUTCOMES, RESULT_OUTCOMES
from cbhub.http import api, realtime
from cbhub.http.errors import json_response
from cbhub.http.keys import CONFIG
from cbhub.http.params import MAX_CURSOR, JsonBody, QueryParam
from cbhub.store.base import GROUP_LIST_LIMIT

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _query(params: tuple[QueryParam, ...]) -> list[dict[str, Any]]:
    # allowEmptyValue: every parameter given empty (`?limit=`) is read as not given (its default).
    return [
        {
            "name": param.name,
            "in": "query",
            "required": getattr(param, "required", False),
            # A required one given empty is not given: refused.
            "allowEmptyValue": not getattr(param, "required", False),
            "schema": param.schema(),
            # A repeated parameter (?token=A&token=B) is an array, one value per repeat.
            **({"style": "form", "explode": True} if param.schema()["type"] == "array" else {}),
            "description": param.description,
        }
        for param in params
    ]


def _path(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"}}


NULLABLE_STRING = {"type": "string", "nullable": True}
TOKEN = _path("token", {"type": "string", "minLength": 1})
BAD_REQUEST = _error("malformed request; the message names the field or parameter")
NOT_FOUND = _error("unknown token, delivery or group")
UNAVAILABLE = _error("the store cannot commit, or the server is stopping; see Retry-After")

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "Delivery": {
        "type": "object",
        "required": ["id", "token", "received_at", "method", "headers", "size", "query"],
        "properties": {
            "id": {"type": "integer"},
            "token": {"type": "string"},
            "received_at": {"type": "string", "format": "date-time"},
            "method": {"type": "string"},
            "content_type": NULLABLE_STRING,
            "remote_addr": NULLABLE_STRING,
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "size": {"type": "integer"},
            "body": {"description": "JSON value, form fields, text, or null", "nullable": True},
            "body_base64": NULLABLE_STRING,
            "parse_error": NULLABLE_STRING,
            "query": {"type": "object"},
            "correlation_id": NULLABLE_STRING,
            "late": {"type": "boolean", "description": "came after its callback closed: kept, never its result"},
            "outcome": {
                "type": "string",
                "enum": list(OUTCOMES),
                "description": "how it went, decided when it was stored (docs/api.md: Outcomes)",
            },
            "error": {"allOf": [_ref("DeliveryError")], "nullable": True, "description": "set for an error only"},
            "problems": {
                "type": "array",
                "items": {"type": "string"},
                "maxItems": 10,
                "description": "why it does not fit its callback's contract; empty: it fits. Non-empty: invalid,"
                " stored but never the result",
            },
            "answered": {"allOf": [_ref("Answer")], "nullable": True, "description": "null: cbhub's JSON receipt"},
        },
    },
    "Answer": {
        "type": "object",
        "description": "what the sender was answered, by the callback's response spec or the server's default",
        "required": ["status", "content_type", "body", "headers"],
        "properties": {
            "status": {"type": "integer"},
            "content_type": {"type": "string"},
            "body": {"type": "string"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "DeliveryError": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": NULLABLE_STRING, "message": NULLABLE_STRING},
    },
    "Callback": {
        "type": "object",
        "required": ["token", "status", "callback_url", "created_at", "expires_at", "metadata", "deliveries"],
        "properties": {
            "token": {"type": "string"},
            "status": {"type": "string", "enum": list(STATUSES)},
            "callback_url": {"type": "string", "format": "uri"},
            "created_at": {"type": "string", "format": "date-time"},
            "expires_at": {"type": "string", "format": "date-time"},
            "label": NULLABLE_STRING,
            "group": NULLABLE_STRING,
            "metadata": {"type": "object"},
            "deliveries": {"type": "integer"},
            "late_deliveries": {"type": "integer", "description": "deliveries kept after it closed"},
            "invalid_deliveries": {
                "type": "integer",
                "description": "deliveries that did not fit its contract (counted in deliveries, never its result)",
            },
            "result": {"allOf": [_ref("Delivery")], "nullable": True},
            "created_by": {"type": "string", "nullable": True, "description": "the name of the API key that minted it"},
            "allow_ips": {"type": "array", "items": {"type": "string"}},
            "verify": {"type": "object", "nullable": True, "description": "its signature check, without the secret"},
            "expected": {
                "type": "object",
                "nullable": True,
                "description": "its expected set (null: none): pending until every id arrived",
                "required": ["total", "arrived", "unexpected", "missing"],
                "properties": {
                    **{name: {"type": "integer"} for name in ("total", "arrived", "unexpected")},
                    "missing": {
                        "type": "array",
                        "items": {"type": "string"},
                        "nullable": True,
                        "description": "the first 100 ids not arrived, in mint order; null for a count,"
                        " and in listings and stream events",
                    },
                },
            },
            "contract": {"type": "object", "nullable": True, "description": "what its deliveries must look like"},
            "response": {"type": "object", "nullable": True, "description": "what its URL answers a sender; null: the default"},
            "settle": {"type": "number", "nullable": True, "description": "its settle window in seconds"},
            "settled_at": {
                "type": "string",
                "format": "date-time",
                "nullable": True,
                "description": "when its latest delivery settled; null until then, and again after a newer one",
            },
            "expect_within": {"type": "integer", "nullable": True, "description": "seconds it was expected within"},
            "overdue": {"type": "boolean", "description": "still pending when it was expected; stays true"},
            "outcome": {
                "type": "string",
                "enum": list(RESULT_OUTCOMES),
                "nullable": True,
                "description": "its result's outcome; null while it has no result",
            },
            "error": {"allOf": [_ref("DeliveryError")], "nullable": True, "description": "its result's error"},
            "outcome_rule": {"type": "object", "nullable": True, "description": "its own outcome rule, given at mint"},
        },
    },
    "ReadyCallbacks": {
        "type": "object",
        "required": ["ready", "callbacks"],
        "properties": {
            "ready": {"type": "array", "items": {"type": "string"}, "description": "tokens with a result or closed"},
            "callbacks": {"type": "array", "items": _ref("Callback")},
        },
    },
    "MissingPage": {
        "type": "object",
        "required": ["missing", "next_after"],
        "properties": {
            "missing": {"type": "array", "items": {"type": "string"}},
            "next_after": {"type": "string", "nullable": True, "description": "the next page's after; null: no more"},
        },
    },
    "CallbackList": {
        "type": "object",
        "required": ["callbacks"],
        "properties": {"callbacks": {"type": "array", "items": _ref("Callback")}},
    },
    "CallbackListing": {
        "type": "object",
        "required": ["callbacks", "next_before"],
        "properties": {
            "callbacks": {"type": "array", "items": _ref("Callback")},
            "next_before": {"type": "integer", "nullable": True, "description": "cursor to older ones; null: no more"},
        },
    },
    "CallbackUpdate": {
        "type": "object",
        "required": ["callback", "deliveries"],
        "properties": {
            "callback": _ref("Callback"),
            "deliveries": {"type": "array", "items": _ref("Delivery")},
            "settled": {"type": "boolean", "description": "with a settle window: whether the answer is final"},
        },
    },
    "DeliveryPage": {
        "type": "object",
        "required": ["deliveries", "next_after"],
        "properties": {
            "deliveries": {"type": "array", "items": _ref("Delivery")},
            "next_after": {"type": "integer"},
        },
    },
    "GroupCounts": {
        "type": "object",
        "required": [
            "group",
            "total",
            "pending",
            "received",
            "expired",
            "cancelled",
            "overdue",
            "outcomes",
            "errors",
            "pending_tokens",
        ],
        "properties": {
            "group": {"type": "string"},
            **{
                name: {"type": "integer"}
                for name in ("total", "pending", "received", "expired", "cancelled", "overdue")
            },
            "outcomes": {
                "type": "object",
                "description": "the callbacks that have a result, by its outcome",
                "required": list(RESULT_OUTCOMES),
                "properties": {name: {"type": "integer"} for name in RESULT_OUTCOMES},
            },
            "errors": {
                "type": "array",
                "maxItems": GROUP_LIST_LIMIT,
                "description": "the first callbacks whose result is an error, in the order the errors came",
                "items": {
                    "type": "object",
                    "required": ["token", "label", "correlation_id", "error", "delivery_id"],
                    "properties": {
                        "token": {"type": "string"},
                        "label": NULLABLE_STRING,
                        "correlation_id": NULLABLE_STRING,
                        "error": {"allOf": [_ref("DeliveryError")], "nullable": True},
                        "delivery_id": {"type": "integer"},
                    },
                },
            },
            "pending_tokens": {
                "type": "array",
                "maxItems": GROUP_LIST_LIMIT,
                "items": {"type": "string"},
                "description": "the first pending callbacks, oldest first",
            },
        },
    },
    "Receipt": {
        "type": "object",
        "required": ["ok", "delivery_id", "duplicate", "late"],
        "properties": {
            "ok": {"type": "boolean"},
            "delivery_id": {"type": "integer"},
            "duplicate": {"type": "boolean"},
            "late": {"type": "boolean", "description": "the callback accepts no more deliveries: kept, flagged late"},
        },
    },
    "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
}

IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 255},
    "description": "a repeat within 24 h returns what the first request minted (200)",
}

def _mint_operation(summary: str, answer: str) -> dict[str, Any]:
    # Its requestBody comes in document(): the body's ttl is this server's configuration.
    return {
        "summary": summary,
        "parameters": [IDEMPOTENCY_KEY],
        "responses": {
            "201": _json(_ref(answer), "minted"),
            "200": _json(_ref(answer), "what this Idempotency-Key minted before"),
            "400": BAD_REQUEST,
            "413": _error("body too large"),
            "422": _error("Idempotency-Key reused with a different request"),
            "503": UNAVAILABLE,
        },
    }


def _ingest_operation(method: str) -> dict[str, Any]:
    return {
        "summary": f"The public callback URL: a third party {method}s its result here",
        "parameters": [TOKEN],
        "requestBody": {"required": False, "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {
            "200": {
                "description": "committed to disk (or a sender's retry, already stored; or late): the receipt,"
                " or what the callback's response spec says (any 2xx, any content type)",
                "content": {
                    JSON: {"schema": _ref("Receipt")},
                    "*/*": {"schema": {"type": "string"}},
                },
            },
            "2XX": {"description": "a response spec's status", "content": {"*/*": {"schema": {"type": "string"}}}},
            "401": _error("the request's signature does not verify"),
            "403": _error("the sender's address is not allowed"),
            "404": NOT_FOUND,
            "429": _error("too many refused requests from this address; see Retry-After"),
            "410": _error("the callback accepts no more deliveries (with callbacks.keep_late = false)"),
            "413": _error("body too large"),
            "422": _error("stored, but it does not fit the callback's contract, which says reject"),
            "503": UNAVAILABLE,
        },
    }


def _websocket_operation(summary: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "summary": summary + " (protocol: docs/realtime.md)",
        "parameters": parameters,
        "responses": {
            "101": {"description": "switching to the websocket protocol"},
            "400": BAD_REQUEST,
            "404": NOT_FOUND,
            "426": _error("not a websocket upgrade request"),
        },
    }


def _sse_operation(
    summary: str, parameters: list[dict[str, Any]], more: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "summary": summary + " (format: docs/realtime.md)",
        "parameters": [
            *parameters,
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 0, "maximum": MAX_CURSOR},
                "description": "resume after this delivery id (an EventSource sends it when reconnecting)",
            },
        ],
        "responses": {
            "200": {"description": "an endless event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            "400": BAD_REQUEST,
            "404": NOT_FOUND,
            **(more or {}),
        },
    }


PATHS: dict[str, Any] = {
    "/v1/callbacks": {
        "post": _mint_operation("Mint a callback", "Callback"),
        "get": {
            "summary": "Callbacks matching every filter, newest first (items without result)",
            "parameters": _query(api.LISTING_PARAMS),
            "responses": {"200": _json(_ref("CallbackListing"), "a page"), "400": BAD_REQUEST, "503": UNAVAILABLE},
        },
    },
    "/v1/callbacks/batch": {
        "post": _mint_operation(f"Mint up to {api.MAX_BATCH} callbacks at once", "CallbackList")
    },
    "/v1/callbacks/{token}": {
        "get": {
            "summary": "A callback, with its latest delivery as result",
            "parameters": [TOKEN],
            "responses": {"200": _json(_ref("Callback"), "the callback"), "404": NOT_FOUND},
        },
        "delete": {
            "summary": "Cancel a callback (idempotent); its waiters wake",
            "parameters": [TOKEN],
            "responses": {"200": _json(_ref("Callback"), "the callback, now cancelled"), "404": NOT_FOUND, "503": UNAVAILABLE},
        },
    },
    "/v1/callbacks/{token}/wait": {
        "get": {
            "summary": "Long-poll until the callback has deliveries after the cursor (with an expected set: until"
            " it is complete), is closed or turns overdue; with settle, until its latest delivery settled",
            "parameters": [TOKEN, *_query(api.WAIT_CALLBACK_PARAMS)],
            "responses": {
                "200": _json(
                    _ref("CallbackUpdate"), "new deliveries, the callback's final status, or it turned overdue"
                ),
                "204": {"description": "nothing arrived before the timeout"},
                "400": BAD_REQUEST,
                "404": NOT_FOUND,
                "503": UNAVAILABLE,
            },
        }
    },
    "/v1/callbacks/{token}/missing": {
        "get": {
            "summary": "The ids of the callback's expected set that have not arrived, in mint order, a page at a time",
            "parameters": [TOKEN, *_query(api.MISSING_PARAMS)],
            "responses": {
                "200": _json(_ref("MissingPage"), "a page"),
                "400": BAD_REQUEST,
                "404": _error("unknown token, or an after that is not an id of the set"),
            },
        }
    },
    "/v1/wait": {
        "get": {
            "summary": "Long-poll until any (mode=any) or all (mode=all) of several callbacks have a result or are closed",
            "parameters": _query(api.WAIT_MANY_PARAMS),
            "responses": {
                "200": _json(_ref("ReadyCallbacks"), "the callbacks with a result or closed"),
                "204": {"description": "not ready before the timeout"},
                "400": BAD_REQUEST,
                "404": _error("a token is unknown (or, with API keys, another key's); the message names it"),
                "503": UNAVAILABLE,
            },
        }
    },
    "/v1/deliveries": {
        "get": {
            "summary": "Deliveries matching every filter, oldest first, after a cursor; long-polls with wait",
            "parameters": _query(api.DELIVERIES_PARAMS),
            "responses": {"200": _json(_ref("DeliveryPage"), "a page"), "400": BAD_REQUEST, "503": UNAVAILABLE},
        }
    },
    "/v1/deliveries/{id}/body": {
        "get": {
            "summary": "The exact bytes received, with the original Content-Type",
            "parameters": [_path("id", {"type": "integer", "minimum": 1, "maximum": MAX_CURSOR})],
            "responses": {
                "200": {"description": "the raw body", "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
                "404": NOT_FOUND,
            },
        }
    },
    "/v1/groups/{group}": {
        "get": {
            "summary": "A group's summary: callbacks by status and outcome, its errors, its pending tokens",
            "parameters": [_path("group")],
            "responses": {"200": _json(_ref("GroupCounts"), "the summary"), "404": NOT_FOUND},
        }
    },
    "/v1/groups/{group}/wait": {
        "get": {
            "summary": "Long-poll until no callback of the group is pending, or (until=first_error) one has an error",
            "parameters": [_path("group"), *_query(api.WAIT_GROUP_PARAMS)],
            "responses": {
                "200": _json(_ref("GroupCounts"), "none is pending any more, or (first_error) one has an error result"),
                "204": {"description": "some are still pending at the timeout (first_error: and none has an error)"},
                "400": BAD_REQUEST,
                "404": NOT_FOUND,
                "503": UNAVAILABLE,
            },
        }
    },
    "/v1/ws": {"get": _websocket_operation("Subscribe to many callbacks, groups or correlation ids", [])},
    "/v1/callbacks/{token}/ws": {
        "get": _websocket_operation(
            "One callback's deliveries over a websocket, replayed from `after` then live",
            [TOKEN, *_query(realtime.CALLBACK_WEBSOCKET_PARAMS)],
        )
    },
    "/v1/events": {
        "get": _sse_operation(
            "Server-Sent Events: deliveries, statuses and new callbacks matching the filters (none: everything)",
            _query(realtime.EVENTS_PARAMS),
        )
    },
    "/v1/callbacks/{token}/events": {
        "get": _sse_operation(
            "Server-Sent Events for one callback, replayed from `after` (default 0) then live, until it closes",
            [TOKEN, *_query(realtime.CALLBACK_EVENTS_PARAMS)],
            {"204": {"description": "the callback is closed and there is nothing new to replay: stop reconnecting"}},
        )
    },
    "/": {
        "get": {
            "summary": "The inspector: a web page where callbacks are seen arriving (docs/inspector.md)",
            "security": [],  # public: the page asks for a key itself when the API needs one
            "responses": {"200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}},
        }
    },
    "/static/{name}": {
        "get": {
            "summary": "A file of the inspector page (script, style sheet, icon)",
            "security": [],
            "parameters": [_path("name")],
            "responses": {
                "200": {"description": "the file", "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
                "404": _error("no such file"),
            },
        }
    },
    "/v1/openapi.json": {
        "get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3")}}
    },
    "/cb/{token}": {
        **{method: _ingest_operation(method.upper()) for method in ("post", "put", "patch")},
        "get": {
            "summary": "A verification handshake (WebSub, Meta): answered by the callback's echo, never stored",
            "parameters": [TOKEN],
            "responses": {
                "200": {"description": "the echoed value", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "403": _error("the sender's address is not allowed"),
                "404": NOT_FOUND,
                "405": _error('the callback was minted without a "response": {"echo": ...}'),
                "410": _error("the callback accepts no more deliveries (with callbacks.keep_late = false)"),
                "429": _error("too many refused requests from this address; see Retry-After"),
            },
        },
    },
    "/healthz": {
        "get": {
            "summary": "Whether the process lives and its store answers",
            "responses": {"200": _json(_ref("Status"), "alive"), "503": UNAVAILABLE},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Whether the store accepts writes",
            "responses": {"200": _json(_ref("Status"), "ready"), "503": UNAVAILABLE},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {
                "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "401": _error("the metrics token is set and was not given"),
            },
        }
    },
}


# The JSON bodies, by operation: the schema's name, and the declaration its handler reads it with.
REQUEST_BODIES: dict[tuple[str, str], tuple[str, Callable[[CallbacksConfig], JsonBody]]] = {
    ("/v1/callbacks", "post"): ("MintRequest", api.mint_body),
    ("/v1/callbacks/batch", "post"): ("BatchRequest", api.batch_body),
}

# Browsers cannot set a header on a websocket or an EventSource: these take the key in the URL.
STREAM_PATHS = ("/v1/ws", "/v1/callbacks/{token}/ws", "/v1/events", "/v1/callbacks/{token}/events")
ACCESS_TOKEN = {
    "name": "access_token",
    "in": "query",
    "required": False,
    "schema": {"type": "string"},
    "description": "the API key, for clients that cannot send an Authorization header",
}


def document(config: Config) -> dict[str, Any]:
    """The document, with the limits this server's configuration sets."""
    paths = copy.deepcopy(PATHS)
    schemas = copy.deepcopy(SCHEMAS)
    for (path, method), (name, body_for) in REQUEST_BODIES.items():
        body = body_for(config.callbacks)
        schemas[name] = copy.deepcopy(body.schema())
        paths[path][method]["requestBody"] = {"required": body.required, "content": {JSON: {"schema": _ref(name)}}}
    if config.auth.api_keys:
        for path, item in paths.items():
            for operation in item.values():
                if path.startswith("/v1/"):
                    # Every client API route then answers 401 without a key.
                    operation["responses"]["401"] = _error("no API key, or an unknown one")
                else:
                    operation.setdefault("security", [])  # public: callbacks, health, metrics, page
        for path in STREAM_PATHS:
            for operation in paths[path].values():
                operation["parameters"].append(ACCESS_TOKEN)
    security = {"bearer": {"type": "http", "scheme": "bearer"}} if config.auth.api_keys else {}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "cbhub",
            "version": __version__,
            "description": "Where asynchronous callbacks land and are awaited.",
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": security},
        **({"security": [{"bearer": []}]} if security else {}),
    }


async def openapi(request: web.Request) -> web.Response:
    return json_response(document(request.app[CONFIG]))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/openapi.json", openapi, allow_head=False)
