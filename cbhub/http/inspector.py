"""The inspector: a web page at / where callbacks are seen arriving, served from the package.

The page is static (HTML, CSS, ES modules in cbhub/static); it talks to the client API like
any other client. Files are read once at start, so a request never touches the disk.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from cbhub.errors import NotFound

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Nothing but this server's own files; callback bodies are shown as text, never as markup.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load (answered 304 while unchanged), so an upgrade shows at once.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_static() -> dict[str, StaticFile]:
    """Every file shipped in cbhub/static, by name."""
    files: dict[str, StaticFile] = {}
    for entry in (resources.files("cbhub") / "static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            files[entry.name] = StaticFile(body, TYPES[suffix], etag)
    return files


STATIC = web.AppKey("static", dict[str, StaticFile])


def _serve(request: web.Request, name: str) -> web.Response:
    found = request.app[STATIC].get(name)
    if found is None:
        raise NotFound("no such file")
    headers = {**SECURITY_HEADERS, "ETag": found.etag}
    if request.headers.get("If-None-Match") == found.etag:
        return web.Response(status=304, headers=headers)
    response = web.Response(body=found.body, headers=headers)
    response.headers["Content-Type"] = found.content_type
    return response


async def page(request: web.Request) -> web.Response:
    return _serve(request, "index.html")


async def static_file(request: web.Request) -> web.Response:
    return _serve(request, request.match_info["name"])


def add_routes(app: web.Application) -> None:
    app[STATIC] = load_static()
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static_file)
