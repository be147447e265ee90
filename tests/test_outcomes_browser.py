"""The inspector shows how callbacks went: a group's grid coloured by outcome with its summary
line and its errors, the error in the list and the delivery view, and the filters by outcome.
In Chromium, as tests/test_inspector_browser.py."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from browser import call, mint, post_form, post_raw
from helpers import MARKETING_CLOUD_FIELDS
from test_inspector_browser import (  # noqa: F401  (the fixtures are used by name)
    HAVE_CHROMIUM,
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


def failed(request_id: str, code: str, message: str) -> dict[str, str]:
    return {
        **MARKETING_CLOUD_FIELDS,
        "RequestID": request_id,
        "OverallStatusCode": "Error",
        "StatusCode": "Error",
        "ErrorCode": code,
        "StatusMessage": message,
    }


def test_a_groups_grid_is_coloured_by_outcome_with_a_summary_and_its_errors(hub, open_page):  # noqa: F811
    status, batch = call(f"{hub}/v1/callbacks/batch", "POST", {"count": 40, "group": "upsert-40", "label": "UpsertDE"})
    assert status == 201
    urls = [callback["callback_url"] for callback in batch["callbacks"]]
    watched = open_page(hub, "/#/groups/upsert-40")
    page = watched.page
    expect(page.locator("#grid .cell.o-pending")).to_have_count(40)
    expect(page.locator("#group-summary")).to_have_text("40 pending")

    # 36 OK, 2 errors, 1 that nobody can read, 1 that never answers.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: post_form(urls[n], {**MARKETING_CLOUD_FIELDS, "RequestID": f"r-{n}"}), range(36)))
    post_form(urls[36], failed("r-36", "12014", "Invalid data extension"))
    post_form(urls[37], failed("r-37", "310007", "Row already exists"))
    post_raw(urls[38], b"<done/>", "application/xml")

    expect(page.locator("#group-summary")).to_have_text("36 ok · 2 error · 1 unknown · 1 pending", timeout=WITHIN)
    expect(page.locator("#grid .cell.o-ok")).to_have_count(36)
    expect(page.locator("#grid .cell.o-error")).to_have_count(2)
    expect(page.locator("#grid .cell.o-unknown")).to_have_count(1)
    errors = page.locator("#group-errors tbody tr")
    expect(errors).to_have_count(2)
    expect(errors.nth(0)).to_contain_text("12014")
    expect(page.locator("#group-errors")).to_contain_text("Row already exists")

    # Only the errors.
    page.select_option("#group-show", "error")
    expect(page.locator("#grid .cell:visible")).to_have_count(2)
    screenshot(page, "inspector-group-outcomes.png")
    page.select_option("#group-show", "")
    expect(page.locator("#grid .cell:visible")).to_have_count(40)

    # An error opens with its code and message.
    errors.nth(0).click()
    expect(page.locator("#detail .title-row .badge.o-error")).to_have_text("Error")
    expect(page.locator("#detail article.delivery .error-box")).to_contain_text("12014")
    expect(page.locator("#detail article.delivery .error-box")).to_contain_text("Invalid data extension")
    screenshot(page, "inspector-outcome-detail.png")
    assert watched.errors == []


def test_the_list_shows_each_outcome_and_filters_by_it(hub, open_page):  # noqa: F811
    good = mint(hub, label="went-well")
    bad = mint(hub, label="went-wrong")
    mint(hub, label="still-waiting")
    post_form(good["callback_url"], MARKETING_CLOUD_FIELDS)
    watched = open_page(hub)
    page = watched.page
    expect(row(page, "went-well").locator(".outcome .badge")).to_have_text("OK")
    expect(row(page, "still-waiting").locator(".outcome")).to_have_text("")

    # Live: the error comes in while the page is open.
    post_form(bad["callback_url"], failed("r-bad", "E42", "Quota exceeded"))
    expect(row(page, "went-wrong").locator(".outcome")).to_contain_text("E42: Quota exceeded", timeout=WITHIN)

    page.select_option("#filters select[name=outcome]", "error")
    expect(page.locator("#rows tr")).to_have_count(1)
    expect(row(page, "went-wrong")).to_have_count(1)
    screenshot(page, "inspector-list-outcomes.png")
    page.select_option("#filters select[name=outcome]", "")
    expect(page.locator("#rows tr")).to_have_count(3)
    assert watched.errors == []
