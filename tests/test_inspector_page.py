"""The inspector page over HTTP: served from the package, with a strict Content-Security-Policy."""

from __future__ import annotations

import re

from cbhub.http.inspector import load_static


async def test_the_page_and_its_files_are_served_with_a_strict_policy(client):
    page = await client.get("/")
    assert page.status == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    html = await page.text()
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    # Every file the page names is served, and none is fetched from elsewhere.
    named = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert named and all(path.startswith("/static/") for path in named)
    for path in named:
        response = await client.get(path)
        assert response.status == 200, path
        assert response.headers["Content-Security-Policy"] == policy
    script = await client.get("/static/main.js")
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    # Modules import each other by relative path: every import resolves to a shipped file.
    shipped = load_static()
    for name, item in shipped.items():
        if name.endswith(".js"):
            for imported in re.findall(r'from "\./([\w.]+)"', item.body.decode()):
                assert imported in shipped, (name, imported)


async def test_the_page_is_revalidated_cheaply_and_unknown_files_are_json_404(client):
    first = await client.get("/static/inspector.css")
    again = await client.get("/static/inspector.css", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 304 and await again.read() == b""
    for path in ("/static/nope.js", "/static/..%2Fhttp%2Fapi.py", "/static/"):
        response = await client.get(path)
        assert response.status == 404, path
        assert (await response.json())["error"]["code"] == "not_found", path


async def test_the_page_uses_no_markup_sink_for_what_callbacks_carry():
    # Bodies and headers are attacker-controlled: the page builds text nodes only.
    for name, item in load_static().items():
        if name.endswith(".js"):
            text = item.body.decode()
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
                assert sink not in text, (name, sink)
