"""The inspector's delivery view shows what the sender was answered, in a real browser against a
real `cbhub serve`."""

from __future__ import annotations

import urllib.request

import test_inspector_browser as inspector
from browser import mint, post_raw

# The browser, the served hub and the page come from the inspector's browser tests.
browser, hub, open_page = inspector.browser, inspector.hub, inspector.open_page
pytestmark = inspector.pytestmark
row, screenshot = inspector.row, inspector.screenshot

if inspector.HAVE_CHROMIUM:
    from playwright.sync_api import expect

WITHIN = 2000


def _post(url: str, body: bytes, content_type: str) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read().decode()


def test_the_delivery_view_shows_the_answer_a_response_spec_gave(hub, open_page):
    spec = {"status": 202, "content_type": "application/xml", "body": "<ack>thanks</ack>", "headers": {"X-Ack": "1"}}
    fixed = mint(hub, label="fixed-answer", response=spec)
    echo = mint(hub, label="slack-echo", response={"echo": "json:challenge"})
    plain = mint(hub, label="plain-receipt")
    assert _post(fixed["callback_url"], b"a=1", "application/x-www-form-urlencoded") == (202, "<ack>thanks</ack>")
    challenge = b'{"type": "url_verification", "challenge": "3eZbrw1aBm2rZgRN"}'
    assert _post(echo["callback_url"], challenge, "application/json") == (200, "3eZbrw1aBm2rZgRN")
    post_raw(plain["callback_url"], b"{}", "application/json")

    watched = open_page(hub)
    page = watched.page
    row(page, "fixed-answer").click()
    answered = page.locator("#detail article.delivery .answered")
    expect(answered.locator(".answered-status")).to_have_text("202", timeout=WITHIN)
    expect(answered.locator(".answered-type")).to_have_text("application/xml")
    expect(answered.locator("pre.answered-body")).to_have_text("<ack>thanks</ack>")
    expect(answered.locator("table.headers")).to_contain_text("X-Ack")
    screenshot(page, "inspector-answered.png")

    row(page, "slack-echo").click()
    expect(answered.locator(".answered-status")).to_have_text("200", timeout=WITHIN)
    expect(answered.locator(".answered-type")).to_have_text("text/plain; charset=utf-8")
    expect(answered.locator("pre.answered-body")).to_have_text("3eZbrw1aBm2rZgRN")

    row(page, "plain-receipt").click()
    expect(page.locator("#detail article.delivery p.answered")).to_have_text("Answered 200 with cbhub's JSON receipt.")
    assert watched.errors == [] and watched.foreign == []
