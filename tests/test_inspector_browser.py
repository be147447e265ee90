"""The inspector page in a real browser (Debian's chromium, driven by Playwright) against a real
`cbhub serve`, with callbacks minted and posted by plain HTTP clients."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import pytest
from browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_FLAGS,
    HAVE_CHROMIUM,
    NEEDS_CHROMIUM,
    REQUIRE_BROWSER_ENV,
    Relay,
    call,
    mint,
    post_form,
    post_raw,
)
from helpers import MARKETING_CLOUD_FIELDS

pytestmark = NEEDS_CHROMIUM

if HAVE_CHROMIUM:
    from playwright.sync_api import Browser, Page, expect, sync_playwright

# The bound for a row to appear or change; elsewhere Playwright's waits are generous.
WITHIN = 2000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # launch() gives every run a fresh, temporary profile.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def hub(serve_process) -> str:
    """A real `cbhub serve` on a free port; its base URL."""
    return serve_process("--port", "0").wait_until_serving(timeout=60)


class Watched:
    """A page with what went wrong on it: console errors, page errors, requests elsewhere."""

    def __init__(self, page: Page, origin: str) -> None:
        self.page = page
        self.errors: list[str] = []
        self.foreign: list[str] = []
        page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("request", lambda r: None if r.url.startswith((origin, "blob:", "data:")) else self.foreign.append(r.url))


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., Watched]]:
    contexts = []

    def open_(base: str, path: str = "/", wait_live: bool = True) -> Watched:
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        context.set_default_timeout(15000)
        contexts.append(context)
        watched = Watched(context.new_page(), base)
        watched.page.goto(base + path)
        if wait_live:
            expect(watched.page.locator("#connection")).to_have_text("Live")
        return watched

    yield open_
    for context in contexts:
        context.close()


def row(page: Page, text: str):
    return page.locator("#rows tr", has_text=text)


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_the_page_loads_with_no_console_error_and_nothing_from_another_host(hub, open_page):
    status, _ = call(f"{hub}/v1/callbacks")
    assert status == 200
    watched = open_page(hub)
    page = watched.page
    expect(page).to_have_title("cbhub inspector")
    expect(page.get_by_role("button", name="Create callback")).to_be_visible()
    expect(page.get_by_label("TTL", exact=True)).to_be_visible()
    for label in ("Label", "Group"):  # in the form and in the filters
        expect(page.get_by_label(label, exact=True).first).to_be_visible()
    expect(page.locator("#empty")).to_be_visible()
    response = page.request.get(hub + "/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert watched.errors == [] and watched.foreign == []


def test_a_callback_minted_by_the_api_appears_awaiting_callback(hub, open_page):
    watched = open_page(hub)
    mint(hub, label="UpsertDE", group="nightly-import", ttl=3600)
    found = row(watched.page, "UpsertDE")
    expect(found).to_have_count(1, timeout=WITHIN)
    expect(found.locator(".status")).to_have_text("Awaiting callback")
    expect(found.locator(".group")).to_have_text("nightly-import")
    expect(found.locator(".left")).to_have_text(re.compile(r"^(59m|1h)$"))
    unlabelled = mint(hub)
    expect(row(watched.page, unlabelled["token"][:8])).to_have_count(1, timeout=WITHIN)
    assert watched.errors == []


def test_a_marketing_cloud_post_turns_the_row_received_and_shows_its_fields_as_a_table(hub, open_page):
    older = mint(hub, label="older")
    callback = mint(hub, label="UpsertDE")
    watched = open_page(hub)
    page = watched.page
    expect(row(page, "older").locator(".status")).to_have_text("Awaiting callback")
    row(page, "UpsertDE").click()
    expect(page.locator("#detail .waiting")).to_contain_text("Awaiting callback")

    post_form(callback["callback_url"], MARKETING_CLOUD_FIELDS)  # a plain HTTP client, not the page
    expect(row(page, "UpsertDE").locator(".status")).to_have_text("Received", timeout=WITHIN)
    expect(row(page, "older").locator(".status")).to_have_text("Awaiting callback")

    delivery = page.locator("#detail article.delivery")
    expect(delivery).to_have_count(1)
    expect(delivery.locator(".method")).to_have_text("POST")
    # Nothing stray between the parts of the view (an absent part once showed as "null").
    expect(page.locator("#detail > *")).to_have_count(3)
    expect(page.locator("#detail")).not_to_contain_text("null")
    expect(delivery.locator(".from")).to_have_text("from 127.0.0.1")
    fields = delivery.locator("table.form-fields tbody tr")
    expect(fields).to_have_count(len(MARKETING_CLOUD_FIELDS))
    for name, value in MARKETING_CLOUD_FIELDS.items():
        field = fields.filter(has=page.locator("th", has_text=re.compile(f"^{name}$")))
        expect(field).to_have_count(1)
        if name != "ResultDetailXML":
            expect(field.locator("td")).to_have_text(value)
    # The XML inside a form field, indented.
    xml = fields.filter(has_text="ResultDetailXML").locator("pre")
    expect(xml).to_contain_text('<Result xmlns="http://exacttarget.com/wsdl/partnerAPI">\n  <StatusCode>OK</StatusCode>')
    expect(delivery.locator("table.headers")).to_contain_text("application/x-www-form-urlencoded")
    screenshot(page, "inspector-delivery.png")
    page.locator("#detail .close").click()
    expect(page.locator("#detail")).to_be_hidden()
    screenshot(page, "inspector-list.png")
    assert older["token"] != callback["token"]
    assert watched.errors == []


def test_creating_a_callback_from_the_form_shows_a_url_that_accepts_a_post(hub, open_page):
    watched = open_page(hub)
    page = watched.page
    # Named "TTL" and nothing more, as a screen reader says it; its unit shows beside it and
    # is read as its description.
    ttl = page.get_by_label("TTL", exact=True)
    expect(ttl).to_have_accessible_name("TTL")
    expect(ttl).to_have_accessible_description("seconds")
    expect(page.locator("#create").get_by_text("seconds", exact=True)).to_be_visible()
    # The API's refusal is shown as it words it.
    ttl.fill("99999999")
    page.get_by_role("button", name="Create callback").click()
    expect(page.locator("#toast")).to_contain_text("ttl: must be from 1 to 2592000")
    ttl.fill("600")
    page.get_by_label("Label", exact=True).first.fill("from-the-form")
    page.locator("#create").get_by_label("Group").fill("manual")
    page.get_by_role("button", name="Create callback").click()
    url_box = page.locator("#created-url")
    expect(url_box).to_have_value(re.compile(r"^http://127\.0\.0\.1:\d+/cb/[\w-]{40,}$"))
    expect(page.locator("#created").get_by_role("button", name="Copy")).to_be_visible()
    expect(row(page, "from-the-form").locator(".status")).to_have_text("Awaiting callback")
    expect(row(page, "from-the-form").locator(".left")).to_have_text(re.compile(r"^(9|10)m$"))

    post_raw(url_box.input_value(), b'{"companyName": "Acme Logistics", "employees": 400}', "application/json")
    expect(row(page, "from-the-form").locator(".status")).to_have_text("Received", timeout=WITHIN)
    # The one refused request above is the only console error.
    assert [e for e in watched.errors if "status of 400" not in e] == []
    watched.errors.clear()
    body = page.locator("#detail article.delivery pre.json")
    expect(body).to_have_text('{\n  "companyName": "Acme Logistics",\n  "employees": 400\n}')
    # The raw body: the exact bytes, in a tab of its own.
    with page.expect_popup() as popup:
        page.get_by_role("link", name="Raw body").click()
    raw = popup.value
    expect(raw.locator("body")).to_contain_text('{"companyName": "Acme Logistics", "employees": 400}')
    raw.close()
    assert watched.errors == []


def test_older_callbacks_are_read_page_by_page(hub, open_page):
    status, _ = call(f"{hub}/v1/callbacks/batch", "POST", {"count": 60, "label": "bulk"})
    assert status == 201
    mint(hub, label="newest")
    watched = open_page(hub)
    page = watched.page
    rows = page.locator("#rows tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_contain_text("newest")
    page.get_by_role("button", name="Show older").click()
    expect(rows).to_have_count(61)
    expect(page.get_by_role("button", name="Show older")).to_be_hidden()
    assert watched.errors == []


def test_cancel_on_a_pending_row_and_the_filters(hub, open_page):
    mint(hub, label="keep", group="a")
    mint(hub, label="drop", group="b")
    received = mint(hub, label="done", group="a")
    post_form(received["callback_url"], {"RequestID": "req-77"})
    watched = open_page(hub)
    page = watched.page
    expect(row(page, "done").locator("button", has_text="Cancel")).to_have_count(0)
    row(page, "drop").get_by_role("button", name="Cancel").click()
    expect(row(page, "drop").locator(".status")).to_have_text("Cancelled")
    expect(row(page, "drop").locator(".left")).to_have_text("—")

    filters = page.locator("#filters")
    filters.get_by_label("Status").select_option("pending")
    expect(page.locator("#rows tr")).to_have_count(1)
    expect(row(page, "keep")).to_have_count(1)
    filters.get_by_label("Status").select_option("")
    filters.get_by_label("Group").fill("a")
    filters.get_by_role("button", name="Filter").click()
    expect(page.locator("#rows tr")).to_have_count(2)
    filters.get_by_label("Group").fill("")
    filters.get_by_label("Correlation id").fill("req-77")
    filters.get_by_role("button", name="Filter").click()
    expect(page.locator("#rows tr")).to_have_count(1)
    expect(row(page, "done")).to_have_count(1)
    # Live within the filter: a pending one that receives the correlation id joins the list.
    late = mint(hub, label="late")
    post_form(late["callback_url"], {"RequestID": "req-77"})
    expect(row(page, "late")).to_have_count(1, timeout=WITHIN)
    assert watched.errors == []


def test_a_pending_callback_turns_expired_at_its_expiry(hub, open_page):
    watched = open_page(hub)
    mint(hub, label="short-lived", ttl=1)
    found = row(watched.page, "short-lived")
    expect(found.locator(".status")).to_have_text("Awaiting callback", timeout=WITHIN)
    expect(found.locator(".status")).to_have_text("Expired", timeout=5000)
    expect(found.locator(".left")).to_have_text("—")
    expect(found.get_by_role("button", name="Cancel")).to_have_count(0)
    assert watched.errors == []


def test_a_group_of_50_fills_its_grid(hub, open_page):
    status, batch = call(f"{hub}/v1/callbacks/batch", "POST", {"count": 50, "group": "import-50", "label": "row"})
    assert status == 201
    watched = open_page(hub, "/#/groups/import-50")
    page = watched.page
    cells = page.locator("#grid .cell")
    expect(cells).to_have_count(50)
    expect(page.locator("#grid .cell.s-pending")).to_have_count(50)
    expect(page.locator("#group-counts .s-total .n")).to_have_text("50")
    expect(page.locator("#group-counts .s-pending .n")).to_have_text("50")

    urls = [callback["callback_url"] for callback in batch["callbacks"]]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: post_form(urls[n], {"RequestID": f"r-{n}", "StatusCode": "OK"}), range(40)))
    expect(page.locator("#grid .cell.s-received")).to_have_count(40, timeout=WITHIN)
    expect(page.locator("#group-counts .s-received .n")).to_have_text("40")
    expect(page.locator("#group-counts .s-pending .n")).to_have_text("10")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda url: post_form(url, {"StatusCode": "OK"}), urls[40:]))
    expect(page.locator("#grid .cell.s-received")).to_have_count(50, timeout=WITHIN)
    expect(page.locator("#group-counts .s-received .n")).to_have_text("50")
    # One more minted into the group appears as a new cell.
    mint(hub, group="import-50")
    expect(cells).to_have_count(51, timeout=WITHIN)
    screenshot(page, "inspector-group.png")
    page.locator("#grid .cell").first.click()
    expect(page.locator("#detail article.delivery")).to_have_count(1)
    # A hand-typed address is no error: an unknown group is an empty grid.
    page.goto(hub + "/#/groups/%E0%A4%A")
    expect(page.locator("#group-counts .s-total .n")).to_have_text("0")
    assert watched.errors == []


def test_bodies_and_headers_from_a_sender_are_shown_as_text_never_as_markup(hub, open_page):
    callback = mint(hub, label="hostile")
    watched = open_page(hub, "/#/callbacks/" + callback["token"])
    page = watched.page
    expect(page.locator("#detail .waiting")).to_be_visible()
    attack = '<img src=x onerror="document.title=\'owned\'"><script>document.title="owned"</script>'
    post_raw(callback["callback_url"] + "?q=<b>x</b>", attack.encode(), "text/html", {"X-Note": "<i>hi</i>"})
    post_raw(callback["callback_url"], ('{"x": "%s"}' % attack.replace('"', '\\"')).encode(), "application/json")
    post_raw(callback["callback_url"], b"\x89PNG\r\n\x1a\n\x00\x00binary", "image/png")
    post_raw(callback["callback_url"], b"{broken", "application/json")
    articles = page.locator("#detail article.delivery")
    expect(articles).to_have_count(4)
    expect(articles.nth(3).locator("section.body pre")).to_have_text(attack)
    expect(articles.nth(3).locator("table.headers")).to_contain_text("<i>hi</i>")
    expect(articles.nth(3)).to_contain_text("<b>x</b>")
    expect(articles.nth(2).locator("pre.json")).to_contain_text("<img src=x")
    expect(articles.nth(1)).to_contain_text("Binary body, 16 bytes")
    expect(articles.nth(0).locator(".parse-error")).to_contain_text("Parse error")
    assert page.locator("#detail img, #detail script, #detail i, #detail b").count() == 0
    assert page.title() == "cbhub inspector"
    # The raw body of the HTML one is served sandboxed: no script of the sender's runs here.
    raw = page.request.get(f"{hub}/v1/deliveries/{articles.nth(3).get_attribute('data-id')}/body")
    assert raw.body() == attack.encode() and "sandbox" in raw.headers["content-security-policy"]
    assert watched.errors == []


@pytest.mark.skipif(
    shutil.which("curl") is None and not os.environ.get(REQUIRE_BROWSER_ENV),
    reason="no curl to run the copied command: apt-get install curl (CI installs it and runs this)",
)
def test_copy_as_curl_reproduces_the_request(hub, open_page):
    callback = mint(hub, label="replay")
    post_form(callback["callback_url"] + "?source=mc", MARKETING_CLOUD_FIELDS)
    watched = open_page(hub, "/#/callbacks/" + callback["token"])
    page = watched.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=hub)
    page.get_by_role("button", name="Copy as curl").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    command = page.evaluate("navigator.clipboard.readText()")
    assert command.startswith("curl -X POST '") and "?source=mc" in command
    subprocess.run(["sh", "-c", command + " --silent --show-error --fail"], check=True, capture_output=True, timeout=30)
    articles = page.locator("#detail article.delivery")
    expect(articles).to_have_count(2, timeout=WITHIN)
    status, page_ = call(f"{hub}/v1/deliveries?token={callback['token']}")
    first, second = page_["deliveries"]
    assert (first["body"], first["query"], first["content_type"]) == (second["body"], second["query"], second["content_type"])
    assert watched.errors == []


def test_after_a_network_drop_the_page_resumes_without_losing_or_doubling_a_row(hub, open_page):
    relay = Relay(int(hub.rsplit(":", 1)[1]))
    try:
        waiting = mint(hub, label="waits-through-the-drop")
        watched = open_page(relay.url, "/#/callbacks/" + waiting["token"])
        page = watched.page
        expect(row(page, "waits-through-the-drop")).to_have_count(1)

        relay.cut()
        expect(page.locator("#connection")).to_have_text("Reconnecting…")
        # While the page is cut off: a delivery lands, a callback is minted, another cancelled.
        post_form(waiting["callback_url"], {"RequestID": "during-the-drop"})
        minted = mint(hub, label="minted-during-the-drop")
        cancelled = mint(hub, label="cancelled-during-the-drop")
        call(f"{hub}/v1/callbacks/{cancelled['token']}", "DELETE")
        relay.restore()

        expect(page.locator("#connection")).to_have_text("Live")
        expect(row(page, "waits-through-the-drop").locator(".status")).to_have_text("Received")
        expect(row(page, "minted-during-the-drop").locator(".status")).to_have_text("Awaiting callback")
        expect(row(page, "cancelled-during-the-drop").locator(".status")).to_have_text("Cancelled")
        expect(page.locator("#detail article.delivery")).to_have_count(1)
        # And live again, each row once.
        post_form(minted["callback_url"], {"RequestID": "after"})
        expect(row(page, "minted-during-the-drop").locator(".status")).to_have_text("Received", timeout=WITHIN)
        post_form(waiting["callback_url"], {"RequestID": "after-the-drop"})
        expect(page.locator("#detail article.delivery")).to_have_count(2, timeout=WITHIN)
        for label in ("waits-through-the-drop", "minted-during-the-drop", "cancelled-during-the-drop"):
            expect(row(page, label)).to_have_count(1)
        expect(page.locator("#rows tr")).to_have_count(3)
        # The only errors are the refused connections while the relay was cut.
        assert all("ERR_CONNECTION" in e or "Failed to load" in e for e in watched.errors), watched.errors
    finally:
        relay.close()


def test_with_keys_set_a_wrong_key_sees_nothing(serve_process, open_page):
    keys = {"alice": "alice-key-7f3e9a1c5b", "bob": "bob-key-4d8c2e6a0f91"}
    server = serve_process("--port", "0", env={"CBHUB_API_KEYS": ",".join(f"{n}:{k}" for n, k in keys.items())})
    hub = server.wait_until_serving(timeout=60)
    secret = mint(hub, key=keys["alice"], label="alice-secret")

    def enter_key(page: Page, key: str) -> None:
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()
        dialog.get_by_label("API key").fill(key)
        dialog.get_by_role("button", name="Use key").click()

    watched = open_page(hub, wait_live=False)
    page = watched.page
    expect(page.locator("#connection")).to_have_text("API key needed")
    # Asked once; a key the server refuses is asked again, and nothing is shown meanwhile.
    enter_key(page, "not-a-key-at-all")
    expect(page.locator("#key-error")).to_have_text(re.compile("refused"))
    expect(page.locator("#rows tr")).to_have_count(0)
    # Another real key: it sees nothing of alice's, neither listed nor live.
    enter_key(page, keys["bob"])
    expect(page.locator("#key-dialog")).to_be_hidden()
    expect(page.locator("#connection")).to_have_text("Live")
    expect(page.locator("#empty")).to_be_visible()
    post_form(secret["callback_url"], {"RequestID": "for-alice-only"})
    mint(hub, key=keys["alice"], label="alice-later")
    mint(hub, key=keys["bob"], label="bob-own")
    expect(row(page, "bob-own")).to_have_count(1, timeout=WITHIN)  # events come in order: alice's came first
    expect(page.locator("#rows tr")).to_have_count(1)
    page.goto(f"{hub}/#/callbacks/{secret['token']}")
    expect(page.locator("#detail")).to_contain_text("No callback has this token.")
    # The key stays in this tab's session storage: not in the address bar, not in a cookie.
    assert page.evaluate("sessionStorage.getItem('cbhub.apiKey')") == keys["bob"]
    assert keys["bob"] not in page.url and page.context.cookies() == []

    alices = open_page(hub, wait_live=False).page
    enter_key(alices, keys["alice"])
    expect(row(alices, "alice-secret").locator(".status")).to_have_text("Received")
    expect(row(alices, "alice-later").locator(".status")).to_have_text("Awaiting callback")
    expect(alices.locator("#rows tr")).to_have_count(2)
    # With a key, the raw body is fetched with it and saved, byte for byte.
    row(alices, "alice-secret").locator("td.name").click()
    with alices.expect_download() as download:
        alices.get_by_role("link", name="Raw body").click()
    assert Path(download.value.path()).read_bytes() == b"RequestID=for-alice-only"
    later = call(f"{hub}/v1/callbacks?label=alice-later", key=keys["alice"])[1]["callbacks"][0]
    post_form(later["callback_url"], {"RequestID": "later"})
    expect(row(alices, "alice-later").locator(".status")).to_have_text("Received", timeout=WITHIN)
    expect(row(page, "alice-later")).to_have_count(0)
    # The only console errors are the refused requests that asked for a key, and alice's token.
    assert all("status of 401" in e or "status of 404" in e for e in watched.errors), watched.errors


def test_a_late_delivery_is_shown_marked_late_and_leaves_the_status_alone(hub, open_page):
    callback = mint(hub, label="too-late", ttl=1)
    watched = open_page(hub)
    page = watched.page
    found = row(page, "too-late")
    expect(found.locator(".status")).to_have_text("Expired", timeout=5000)
    found.click()
    expect(page.locator("#detail .waiting")).to_contain_text("Nothing was received")

    post_form(callback["callback_url"], {"RequestID": "req-late", "StatusCode": "OK"})
    delivery = page.locator("#detail article.delivery")
    expect(delivery).to_have_count(1, timeout=WITHIN)
    expect(delivery.locator(".badge.late")).to_have_text("Late")
    expect(delivery.locator(".badge.late")).to_have_attribute("title", re.compile("after the callback closed"))
    expect(found.locator(".status")).to_have_text("Expired")
    screenshot(page, "inspector-late.png")
    assert watched.errors == []
