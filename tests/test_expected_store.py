"""The store's side of expected sets and contracts, run against every backend."""

from __future__ import annotations

from dataclasses import replace

from helpers import incoming, spec

from cbhub.domain.expectations import Expect, parse_contract
from cbhub.domain.model import now_ms
from cbhub.store.base import IDEMPOTENCY_WINDOW_MS

# Every test here runs on SQLite and on PostgreSQL.
ALL_BACKENDS = True


async def test_an_expected_set_is_counted_in_the_ingest_decision_and_paged_in_mint_order(make_store):
    store = await make_store()
    ids = tuple(f"id-{n}" for n in range(300, 0, -1))
    [callback], _ = await store.mint([replace(spec(), expect=Expect(correlation_ids=ids))], now_ms())
    assert callback.expected is not None and callback.expected.missing == list(ids[:100])
    token = callback.token
    for correlation_id in (*ids[:150], ids[0], "stranger", None):
        result = await store.ingest(incoming(token, correlation_id=correlation_id))
        assert result.callback.status == "pending"
    found = await store.get_callback(token)
    assert (found.expected.arrived, found.expected.unexpected, found.deliveries) == (150, 2, 153)
    assert found.expected.missing == list(ids[150:250])
    assert await store.missing(token, None, 1000) == list(ids[150:])
    assert await store.missing(token, ids[200], 10) == list(ids[201:211])
    assert await store.missing(token, "not-in-the-set", 10) is None
    for correlation_id in ids[150:]:
        result = await store.ingest(incoming(token, correlation_id=correlation_id))
    assert result.callback.status == "received" and result.callback.result.id == result.delivery.id
    assert await store.missing(token, None, 10) == []


async def test_an_invalid_delivery_is_stored_with_its_problems_and_never_the_result(make_store):
    store = await make_store()
    contract = parse_contract({"form_fields": ["RequestID"]})
    [callback], _ = await store.mint([replace(spec(), contract=contract)], now_ms())
    assert (await store.get_callback(callback.token)).contract == contract

    def check(contract_seen):
        return contract_seen.problems(b"a=1", "application/x-www-form-urlencoded", None)

    result = await store.ingest(incoming(callback.token), check=check)
    assert result.delivery.problems == ("field 'RequestID' is missing or empty",)
    assert (result.callback.status, result.callback.result) == ("pending", None)
    stored = await store.get_delivery(result.delivery.id)
    assert stored.problems == result.delivery.problems
    fit = await store.ingest(incoming(callback.token, raw=b"RequestID=r"), check=lambda c: ())
    found = await store.get_callback(callback.token)
    assert (found.status, found.result.id, found.deliveries) == ("received", fit.delivery.id, 2)
    # A callback without a contract is never asked.
    [plain], _ = await store.mint([spec()], now_ms())
    asked = []
    await store.ingest(incoming(plain.token), check=lambda c: asked.append(c) or ("no",))
    assert asked == [] and (await store.get_callback(plain.token)).status == "received"


async def test_retention_deletes_an_expected_set_with_its_callback(make_store):
    store = await make_store()
    now = now_ms()
    [callback], _ = await store.mint([replace(spec(ttl=1), expect=Expect(correlation_ids=("a", "b")))], now)
    await store.ingest(incoming(callback.token, correlation_id="a"))
    while await store.purge(now + 10_000, now + IDEMPOTENCY_WINDOW_MS * 2):
        pass
    # A callback goes only once its expected ids went: none is left behind.
    assert await store.get_callback(callback.token) is None
    assert await store.missing(callback.token, None, 10) == []
