"""The client API under /v1: mint callbacks, read them, await them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cbhub.config import CallbacksConfig
from cbhub.domain.expectations import MAX_CONTRACT_BYTES, SpecProblem, parse_contract, parse_expect
from cbhub.domain.filters import CallbackFilter
from cbhub.domain.model import STATUSES, Callback, Delivery, MintSpec
from cbhub.domain.outcomes import OUTCOMES, RuleError, parse_rule
from cbhub.domain.responses import ResponseSpecError, parse_response
from cbhub.domain.signatures import SpecError, parse_spec
from cbhub.errors import DeliveryNotFound, InvalidHeader
from cbhub.http.deadline import held
from cbhub.http.errors import json_response
from cbhub.http.keys import CONFIG, HUB, base_url, caller
from cbhub.http.params import (
    AFTER,
    CONTRACT_SHAPE,
    DELIVERY_FILTERS,
    EXPECT_SHAPE,
    MAX_CURSOR,
    RESPONSE_SHAPE,
    RULE_SHAPE,
    VERIFY_SHAPE,
    FlagParam,
    IntField,
    IntParam,
    JsonBody,
    NameField,
    NetworksField,
    ObjectField,
    SecondsParam,
    SpecField,
    TextParam,
    TokensParam,
    query_filter,
    transient_query,
)
from cbhub.http.timing import ExpectWithinField, SettleField, SettleParam, settle_ms
from cbhub.store.base import GroupSummary
from cbhub.waiting.hub import UNTIL_ALL, UNTILS

MAX_BATCH = 1000

# What each route reads, declared once: the handlers parse with these and /v1/openapi.json
# publishes them (cbhub.http.openapi).

LABEL = NameField("label", "a name for people, such as the job that waits")
GROUP = NameField("group", "callbacks awaited together: /v1/groups/{group}")
METADATA = ObjectField("metadata", "kept with the callback, returned as it is")
ALLOW_IPS = NetworksField(
    "allow_ips", "IP addresses or CIDRs the callback URL accepts requests from (403 otherwise)"
)
VERIFY = SpecField(
    "verify", "signature check of every request: docs/security.md", parse_spec, SpecError, VERIFY_SHAPE
)
RESPONSE = SpecField(
    "response",
    "what the callback URL answers a sender: a fixed answer or an echo (docs/api.md)",
    parse_response,
    ResponseSpecError,
    RESPONSE_SHAPE,
)
COUNT = IntField("count", 1, 1, MAX_BATCH, "how many callbacks to mint", required=True)
EXPECT = SpecField(
    "expect",
    "the correlation ids this one URL awaits (named, or a count of distinct ones): pending until all arrived",
    parse_expect,
    SpecProblem,
    EXPECT_SHAPE,
)
CONTRACT = SpecField(
    "contract",
    "what a delivery must look like; one that does not fit is stored as invalid, never the result"
    f" (at most {MAX_CONTRACT_BYTES} bytes as JSON)",
    parse_contract,
    SpecProblem,
    CONTRACT_SHAPE,
)
OUTCOME_RULE = SpecField(
    "outcome",
    "how to read each delivery's outcome: which field, which values"
    " (ok, error or both; compared as text, case-insensitively)",
    parse_rule,
    RuleError,
    RULE_SHAPE,
)


def ttl_field(limits: CallbacksConfig) -> IntField:
    """Its default and maximum are this server's configuration."""
    return IntField("ttl", limits.default_ttl, 1, limits.max_ttl, "lifetime in seconds")


SETTLE = SettleField(
    "settle",
    "settle window in seconds: waits answer once the latest delivery stayed the latest that long,"
    " and a settled event follows",
)


def expect_within_field(limits: CallbacksConfig) -> ExpectWithinField:
    """Its maximum is the longest ttl's; a mint also checks it against its own ttl."""
    return ExpectWithinField(
        "expect_within", limits.max_ttl - 1, "seconds (below ttl) after which a still pending callback is overdue"
    )


def mint_body(limits: CallbacksConfig) -> JsonBody:
    return JsonBody(
        (
            ttl_field(limits),
            LABEL,
            GROUP,
            METADATA,
            ALLOW_IPS,
            VERIFY,
            EXPECT,
            CONTRACT,
            RESPONSE,
            SETTLE,
            expect_within_field(limits),
            OUTCOME_RULE,
        )
    )


def batch_body(limits: CallbacksConfig) -> JsonBody:
    # No expected set in a batch: a set is what one URL awaits; a batch is many URLs.
    return JsonBody((COUNT, *(field for field in mint_body(limits).fields if field is not EXPECT)))


# GET /v1/callbacks
LISTED_GROUP = TextParam("group", "only this group's")
LISTED_LABEL = TextParam("label", "only those with this label")
LISTED_STATUS = TextParam("status", "only those with this status", choices=STATUSES)
LISTED_CORRELATION = TextParam("correlation_id", "only those that received a delivery with this correlation id")
LISTED_OUTCOME = TextParam("outcome", "only those whose result has this outcome", choices=OUTCOMES)
LISTING_LIMIT = IntParam("limit", 50, 1, 500, "page size")
BEFORE = IntParam("before", MAX_CURSOR, 1, MAX_CURSOR, "the next_before of the previous page")
LISTED_OVERDUE = FlagParam("overdue", "only those that turned overdue (expect_within)")
LISTING_PARAMS = (
    LISTED_GROUP,
    LISTED_LABEL,
    LISTED_STATUS,
    LISTED_CORRELATION,
    LISTED_OUTCOME,
    LISTED_OVERDUE,
    LISTING_LIMIT,
    BEFORE,
)
# GET /v1/callbacks/{token}/wait and /v1/groups/{group}/wait
TIMEOUT = SecondsParam("timeout", 30.0, "seconds to hold the request (capped at callbacks.max_wait)")
WAIT_SETTLE = SettleParam(
    "settle", "answer once the latest delivery stayed the latest this many seconds (default: the callback's settle)"
)
UNTIL = TextParam("until", "all (default): no callback pending; first_error: that, or any error result", choices=UNTILS)
WAIT_CALLBACK_PARAMS = (TIMEOUT, AFTER, WAIT_SETTLE, UNTIL)
WAIT_GROUP_PARAMS = (TIMEOUT, UNTIL)
# GET /v1/callbacks/{token}/missing
MISSING_AFTER = TextParam("after", "the next_after of the previous page: the last id it showed")
MISSING_LIMIT = IntParam("limit", 100, 1, 1000, "page size")
MISSING_PARAMS = (MISSING_AFTER, MISSING_LIMIT)
# GET /v1/wait
MAX_WAIT_TOKENS = 1000
WAIT_TOKENS = TokensParam("token", MAX_WAIT_TOKENS, "a callback's token, once per callback (repeats count once)")
WAIT_MODE = TextParam("mode", "any: answer once one is ready; all (the default): once none is pending", choices=("any", "all"))
WAIT_MANY_PARAMS = (WAIT_TOKENS, WAIT_MODE, TIMEOUT)
# GET /v1/deliveries
PAGE_LIMIT = IntParam("limit", 100, 1, 1000, "page size")
WAIT = SecondsParam("wait", 0.0, "seconds to long-poll while nothing matches (capped at callbacks.max_wait)")
DELIVERIES_PARAMS = (*DELIVERY_FILTERS, AFTER, PAGE_LIMIT, WAIT)
RAW_BODY_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox"}


def _callback_json(request: web.Request, callback: Callback) -> dict[str, Any]:
    return callback.to_json(base_url(request))


def _deliveries_json(deliveries: list[Delivery]) -> list[dict[str, Any]]:
    return [delivery.to_json() for delivery in deliveries]


def _mint_spec(request: web.Request, body: dict[str, Any]) -> MintSpec:
    limits = request.app[CONFIG].callbacks
    ttl = ttl_field(limits).parse(body)
    expect_within = expect_within_field(limits)
    return MintSpec(
        ttl=ttl,
        label=LABEL.parse(body),
        group=GROUP.parse(body),
        metadata=METADATA.parse(body),
        created_by=caller(request).name,
        allow_ips=ALLOW_IPS.parse(body),
        verify=VERIFY.parse(body),
        expect=EXPECT.parse(body),
        contract=CONTRACT.parse(body),
        response=RESPONSE.parse(body),
        settle_ms=settle_ms(SETTLE.parse(body)),
        expect_within=expect_within.check(expect_within.parse(body), ttl),
        outcome_rule=OUTCOME_RULE.parse(body),
    )


def _idempotency(request: web.Request) -> tuple[str, str] | None:
    key = request.headers.get("Idempotency-Key")
    if not key:
        return None
    if len(key) > 255:
        raise InvalidHeader("Idempotency-Key", "must be at most 255 characters")
    # Scoped by API key: two clients choosing the same key get their own callbacks.
    return caller(request).scope, key


async def create_callback(request: web.Request) -> web.Response:
    body = await mint_body(request.app[CONFIG].callbacks).read(request)
    spec = _mint_spec(request, body)
    callbacks, created = await request.app[HUB].mint(spec, idempotency=_idempotency(request))
    return json_response(_callback_json(request, callbacks[0]), status=201 if created else 200)


async def create_batch(request: web.Request) -> web.Response:
    body = await batch_body(request.app[CONFIG].callbacks).read(request)
    count = COUNT.parse(body)
    spec = _mint_spec(request, body)
    callbacks, created = await request.app[HUB].mint(spec, count, batch=True, idempotency=_idempotency(request))
    payload = {"callbacks": [_callback_json(request, callback) for callback in callbacks]}
    return json_response(payload, status=201 if created else 200)


async def list_callbacks(request: web.Request) -> web.Response:
    query = request.query
    status = LISTED_STATUS.parse(query)
    where = CallbackFilter(
        owner=caller(request).owner,
        group=LISTED_GROUP.parse(query),
        label=LISTED_LABEL.parse(query),
        status=status,
        correlation_id=LISTED_CORRELATION.parse(query),
        overdue=True if LISTED_OVERDUE.parse(query) else None,
        outcome=LISTED_OUTCOME.parse(query),
    )
    before = BEFORE.parse(query)
    limit = LISTING_LIMIT.parse(query)
    page = await request.app[HUB].list_callbacks(where, before, limit)
    base = base_url(request)
    # Without `result`: a page of 500 latest bodies could weigh hundreds of megabytes.
    listed = [{k: v for k, v in callback.to_json(base).items() if k != "result"} for callback in page.callbacks]
    return json_response({"callbacks": listed, "next_before": page.next_before})


async def get_callback(request: web.Request) -> web.Response:
    callback = await request.app[HUB].get_callback(request.match_info["token"], caller(request).owner)
    return json_response(_callback_json(request, callback))


async def cancel_callback(request: web.Request) -> web.Response:
    callback = await request.app[HUB].cancel(request.match_info["token"], caller(request).owner)
    return json_response(_callback_json(request, callback))


async def wait_callback(request: web.Request) -> web.StreamResponse:
    query = transient_query(request)
    timeout = TIMEOUT.parse(query, request.app[CONFIG].callbacks.max_wait)
    after = AFTER.parse(query)
    settle = WAIT_SETTLE.parse(query)
    until = UNTIL.parse(query) or UNTIL_ALL
    del query  # read: not kept by this frame while the request is held
    held(request)
    update = await request.app[HUB].wait_for_callback(
        request.match_info["token"], after, timeout, caller(request).owner, settle, until
    )
    if update is None:
        return web.Response(status=204)
    answer: dict[str, Any] = {
        "callback": _callback_json(request, update.callback),
        "deliveries": _deliveries_json(update.deliveries),
    }
    if update.settled is not None:
        answer["settled"] = update.settled
    return json_response(answer)


async def missing_ids(request: web.Request) -> web.Response:
    limit = MISSING_LIMIT.parse(request.query)
    # One more than asked: whether it comes tells whether a next page exists.
    found = await request.app[HUB].missing(
        request.match_info["token"], MISSING_AFTER.parse(request.query), limit + 1, caller(request).owner
    )
    page = found[:limit]
    return json_response({"missing": page, "next_after": page[-1] if len(found) > limit else None})
async def wait_many(request: web.Request) -> web.StreamResponse:
    query = transient_query(request)
    tokens = WAIT_TOKENS.parse(query)
    mode = WAIT_MODE.parse(query) or "all"
    timeout = TIMEOUT.parse(query, request.app[CONFIG].callbacks.max_wait)
    del query
    held(request)
    ready = await request.app[HUB].wait_for_many(tokens, mode == "all", timeout, caller(request).owner)
    if ready is None:
        return web.Response(status=204)
    return json_response(
        {"ready": [callback.token for callback in ready], "callbacks": [_callback_json(request, c) for c in ready]}
    )


async def list_deliveries(request: web.Request) -> web.Response:
    query = transient_query(request)
    where = query_filter(query, owner=caller(request).owner)
    after = AFTER.parse(query)
    limit = PAGE_LIMIT.parse(query)
    wait = WAIT.parse(query, request.app[CONFIG].callbacks.max_wait)
    del query
    if wait > 0:
        held(request)
    deliveries = await request.app[HUB].wait_for_deliveries(where, after, limit, wait)
    next_after = deliveries[-1].id if deliveries else after
    return json_response({"deliveries": _deliveries_json(deliveries), "next_after": next_after})


async def delivery_body(request: web.Request) -> web.Response:
    try:
        delivery_id = int(request.match_info["id"])
    except ValueError:
        raise DeliveryNotFound() from None
    if not 0 < delivery_id <= MAX_CURSOR:
        raise DeliveryNotFound()
    delivery = await request.app[HUB].get_delivery(delivery_id, caller(request).owner)
    # The exact bytes and type received; never rendered by a browser as a page of ours: a
    # sender's HTML or SVG opened from the inspector runs no script and loads nothing.
    response = web.Response(body=delivery.raw, headers=RAW_BODY_HEADERS)
    response.headers["Content-Type"] = _sendable_header(delivery.content_type) or "application/octet-stream"
    return response


def _sendable_header(value: str | None) -> str | None:
    """`value` if it can go back out as a header as it is (printable ISO-8859-1), else None."""
    if not value or not value.isprintable():
        return None
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return None
    return value


async def group_status(request: web.Request) -> web.Response:
    group = request.match_info["group"]
    summary = await request.app[HUB].group_summary(group, caller(request).owner)
    return json_response(_group_json(group, summary))


async def wait_group(request: web.Request) -> web.StreamResponse:
    group = request.match_info["group"]
    query = transient_query(request)
    timeout = TIMEOUT.parse(query, request.app[CONFIG].callbacks.max_wait)
    until = UNTIL.parse(query) or UNTIL_ALL
    del query
    held(request)
    summary = await request.app[HUB].wait_for_group(group, timeout, caller(request).owner, until)
    if summary is None:
        return web.Response(status=204)
    return json_response(_group_json(group, summary))


def _group_json(group: str, summary: GroupSummary) -> dict[str, Any]:
    counts = summary.counts
    return {
        "group": group,
        "total": sum(counts.values()),
        **counts,
        "outcomes": summary.outcomes,
        "errors": [error.to_json() for error in summary.errors],
        "pending_tokens": summary.pending_tokens,
        "overdue": summary.overdue,
    }


# A token is never "batch" (tokens are 43 characters): /v1/callbacks/batch is the batch route's
# alone. aiohttp answers a wrong method on a path with the methods of every resource matching it,
# so a {token} resource matching "batch" too would make it advertise GET and DELETE, and would
# answer GET /v1/callbacks/batch as a callback lookup instead of 405.
CALLBACK_PATH = r"/v1/callbacks/{token:(?!batch\Z)[^{}/]+}"


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_post("/v1/callbacks", create_callback)
    router.add_get("/v1/callbacks", list_callbacks, allow_head=False)
    router.add_post("/v1/callbacks/batch", create_batch)
    router.add_get(CALLBACK_PATH, get_callback, allow_head=False)
    router.add_delete(CALLBACK_PATH, cancel_callback)
    router.add_get("/v1/callbacks/{token}/wait", wait_callback, allow_head=False)
    router.add_get("/v1/callbacks/{token}/missing", missing_ids, allow_head=False)
    router.add_get("/v1/wait", wait_many, allow_head=False)
    router.add_get("/v1/deliveries", list_deliveries, allow_head=False)
    router.add_get("/v1/deliveries/{id}/body", delivery_body, allow_head=False)
    router.add_get("/v1/groups/{group}", group_status, allow_head=False)
    router.add_get("/v1/groups/{group}/wait", wait_group, allow_head=False)
