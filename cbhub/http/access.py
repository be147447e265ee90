"""The access log: one line per request, with the real client and tokens shortened."""

from __future__ import annotations

import logging
from typing import cast

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from cbhub.http.forwarded import client_address
from cbhub.http.keys import CLIENT_ADDRESS, CONFIG
from cbhub.observe.logs import AccessLine, access_message, path_token


class AccessLogger(AbstractAccessLogger):
    """One line per request, token shortened; nothing is formatted when nobody reads it.

    The line goes straight to the log handler when that is all logging would do with it (see
    AccessLine): making a LogRecord for each request cost more than the rest of the line. There
    it is held as the request's fields and formatted with its batch."""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._direct = AccessLine(logger)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # aiohttp gives its access logger the web.Request it served, typed as its base.
        request = cast(web.Request, request)
        # The callback route found it already.
        remote = request.get(CLIENT_ADDRESS, "")
        if remote == "":
            remote = client_address(request, request.app[CONFIG].server.trusted_proxies)
        fields = (request.method, request.path, path_token(request), response.status, time, remote, response.body_length)
        handler = self._direct.target()
        if handler is not None:
            self._direct.write(handler, fields)
            return
        message, extra = access_message(fields)
        self.logger.info("%s", message, extra=extra)
