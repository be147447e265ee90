"""Who is calling the client API: API keys on every /v1 route.

With no key configured the API is open and every caller is anonymous (and sees everything).
With keys, a request names its key as `Authorization: Bearer <key>`; a browser cannot set that
header on a websocket or an EventSource, so those two may send `?access_token=<key>` instead.
Keys are compared in constant time; only a key's name is ever logged or stored.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Container, Mapping

from aiohttp import web
from aiohttp.typedefs import Middleware

from cbhub.errors import InvalidApiKey, MissingApiKey
from cbhub.http.errors import Handler, error_answer
from cbhub.http.keys import ANONYMOUS, CALLER, Caller
from cbhub.observe.logs import loggable_path

log = logging.getLogger("cbhub.http")

API_PREFIX = "/v1"
ACCESS_TOKEN = "access_token"


def _digest(key: str) -> bytes:
    # Equal-length digests: compare_digest then takes the same time whatever the key's length.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _accepts_query_token(request: web.Request) -> bool:
    """Websocket upgrades and EventSource requests: the two a browser cannot add headers to."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return True
    return "text/event-stream" in request.headers.get("Accept", "").lower()


def _presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, key = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise InvalidApiKey("the Authorization header must be 'Bearer <API key>'")
        return key.strip()
    if ACCESS_TOKEN in request.query:
        if not _accepts_query_token(request):
            raise InvalidApiKey(
                f"{ACCESS_TOKEN} is taken on websocket and event-stream requests only; "
                "send the key as 'Authorization: Bearer <API key>'"
            )
        return request.query[ACCESS_TOKEN]
    return None


class Authenticator:
    def __init__(self, api_keys: Mapping[str, str], admin: tuple[str, ...]) -> None:
        self._keys = [(_digest(key), Caller(name, admin=name in admin)) for name, key in api_keys.items()]

    def identify(self, presented: str) -> Caller | None:
        digest = _digest(presented)
        found: Caller | None = None
        # Every key is compared, found or not: the time taken tells nothing about which matched.
        for known, who in self._keys:
            if hmac.compare_digest(known, digest):
                found = who
        return found

    def caller_for(self, request: web.Request) -> Caller:
        if not self._keys:
            return ANONYMOUS
        presented = _presented_key(request)
        if presented is None:
            raise MissingApiKey()
        who = self.identify(presented)
        if who is None:
            log.info("refused %s %s: unknown API key", request.method, loggable_path(request))
            raise InvalidApiKey()
        return who


def _under_api(request: web.Request) -> bool:
    """By path (unknown routes too: they are not told apart from known ones without a key) and
    by the route matched, whatever spelling of the path reached it."""
    path = request.path
    if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
        return True
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical.startswith(API_PREFIX + "/")


def app_middleware(authenticator: Authenticator, public: Container[Handler]) -> Middleware:
    """The error middleware around the auth middleware, as one; a handler in `public` (the
    callback route, which renders its own errors with error_answer and takes no API key) is
    called as it is, paying for neither."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if handler in public:
            return await handler(request)
        try:
            if _under_api(request):
                request[CALLER] = authenticator.caller_for(request)
            return await handler(request)
        except Exception as exc:  # asyncio.CancelledError is not an Exception: it goes on up
            return error_answer(request, exc)

    return middleware
