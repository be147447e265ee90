"""The inspector in a real browser: an expected set's progress and missing ids, and invalid
deliveries marked with their problems."""

from __future__ import annotations

import re

from browser import HAVE_CHROMIUM, mint, post_form
from helpers import MARKETING_CLOUD_FIELDS

# The fixtures (a browser, a served hub, a watched page) and the skip without chromium.
from test_inspector_browser import (  # noqa: F401
    WITHIN,
    browser,
    hub,
    open_page,
    pytestmark,
    row,
    screenshot,
)

if HAVE_CHROMIUM:
    from playwright.sync_api import expect


def test_an_expected_set_shows_its_progress_its_missing_ids_and_invalid_deliveries(hub, open_page):  # noqa: F811
    ids = [f"mc-{n:02d}" for n in range(12)]
    callback = mint(
        hub, label="one-url-run", ttl=3600, expect={"correlation_ids": ids}, contract={"form_fields": ["OverallStatusCode"]}
    )
    watched = open_page(hub)
    page = watched.page
    row(page, "one-url-run").click()
    progress = page.locator("#detail .expected")
    expect(progress).to_contain_text("Expected: 0 of 12 arrived")

    for request_id in ids[:9]:
        post_form(callback["callback_url"], {**MARKETING_CLOUD_FIELDS, "RequestID": request_id})
    # One that does not fit the contract: stored, shown invalid, and not counted.
    post_form(callback["callback_url"], {"RequestID": ids[9]})
    expect(page.locator("#detail article.delivery")).to_have_count(10, timeout=WITHIN)
    expect(progress).to_contain_text("Expected: 9 of 12 arrived", timeout=WITHIN)
    expect(progress.locator("progress")).to_have_attribute("value", "9")
    expect(progress.locator(".missing summary")).to_have_text("Missing (3)")
    expect(progress.locator(".missing li")).to_have_text(ids[9:])
    invalid = page.locator("#detail article.delivery", has=page.locator(".badge.invalid"))
    expect(invalid).to_have_count(1)
    expect(invalid.locator(".badge.invalid")).to_have_attribute("title", re.compile("does not fit the callback's contract"))
    expect(invalid.locator(".problems li")).to_have_text(["field 'OverallStatusCode' is missing or empty"])
    expect(row(page, "one-url-run").locator(".status")).to_have_text("Awaiting callback")
    screenshot(page, "inspector-expected.png")

    for request_id in ids[9:]:
        post_form(callback["callback_url"], {**MARKETING_CLOUD_FIELDS, "RequestID": request_id})
    expect(progress).to_contain_text("Expected: 12 of 12 arrived", timeout=WITHIN)
    expect(progress.locator(".missing")).to_have_count(0)
    expect(page.locator("#detail .title-row .badge[class*=\"s-\"]")).to_have_text(re.compile("Received"))
    assert watched.errors == []
