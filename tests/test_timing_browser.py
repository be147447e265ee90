"""The inspector shows a callback's timers, in a real browser against a real `cbhub serve`:
"Settling" then "Final" for a callback minted with a settle window, and "Overdue"."""

from __future__ import annotations

from browser import HAVE_CHROMIUM, NEEDS_CHROMIUM, mint, post_form
from test_inspector_browser import WITHIN, browser, hub, open_page, row, screenshot  # noqa: F401 (fixtures)

pytestmark = NEEDS_CHROMIUM

if HAVE_CHROMIUM:
    from playwright.sync_api import expect


def test_a_settling_callback_shows_settling_then_final_and_a_hung_one_overdue(hub, open_page):  # noqa: F811
    hung = mint(hub, label="Hung", ttl=3600, expect_within=1)
    enrich = mint(hub, label="Enrich", ttl=3600, settle=1)
    # A window too long to pass during the test: it shows "Settling" as long as the test looks.
    slow = mint(hub, label="Slow", ttl=3600, settle=300)
    watched = open_page(hub)
    page = watched.page
    row(page, "Enrich").click()
    expect(page.locator("#detail .waiting")).to_contain_text("Awaiting callback")
    # Told by the sweep's event: no reload.
    expect(row(page, "Hung").locator(".status .badge.overdue")).to_have_text("Overdue", timeout=5000)
    expect(row(page, "Hung").locator(".status")).to_contain_text("Awaiting callback")

    post_form(slow["callback_url"], {"status": "partial"})
    expect(row(page, "Slow").locator(".status .badge.settling")).to_have_text("Settling", timeout=WITHIN)
    post_form(enrich["callback_url"], {"status": "partial"})
    post_form(enrich["callback_url"], {"status": "complete"})
    status = row(page, "Enrich").locator(".status")
    expect(status).to_contain_text("Received", timeout=WITHIN)
    expect(page.locator("#detail article.delivery")).to_have_count(2)
    # Final once the provider stopped sending for the window, as the server's event says.
    expect(status.locator(".badge.final")).to_have_text("Final", timeout=5000)
    expect(page.locator("#detail .title-row .badge.final")).to_be_visible()
    expect(page.locator("#detail .settle-note")).to_contain_text("Final")
    expect(row(page, "Slow").locator(".status .badge.settling")).to_have_text("Settling")
    screenshot(page, "inspector-timing.png")
    row(page, "Slow").click()
    expect(page.locator("#detail .settle-note")).to_contain_text("Settling")
    screenshot(page, "inspector-settling.png")
    assert hung["token"] and watched.errors == []


def test_a_group_view_counts_and_marks_its_overdue_callbacks(hub, open_page):  # noqa: F811
    hung = mint(hub, label="Hung", group="ops", ttl=3600, expect_within=1)
    answered = mint(hub, label="Answered", group="ops", ttl=3600, expect_within=1)
    post_form(answered["callback_url"], {"status": "done"})
    watched = open_page(hub, "/#/groups/ops")
    page = watched.page
    expect(page.locator(".count.s-overdue .n")).to_have_text("1", timeout=5000)
    expect(page.locator(f'.cell.overdue[data-token="{hung["token"]}"]')).to_have_count(1)
    expect(page.locator(".cell.overdue")).to_have_count(1)
    screenshot(page, "inspector-group-overdue.png")
    assert watched.errors == []
