"""The access log: one line per request, with the real client and tokens shortened."""

from __future__ import annotations

import logging
from typing import cast

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from cbhub.http.forwarded import client_address
from cbhub.http.keys import CLIENT_ADDRESS, CONFIG
from cbhub.observe.logs import AccessLine, loggable_path


class AccessLogger(AbstractAccessLogger):
    """One line per request, token shortened; nothing is formatted when nobody reads it.

    The line goes straight to the log handler when that is all logging would do with it (see
    AccessLine): making a LogRecord for each request cost more than the rest of the line."""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._direct = AccessLine(logger)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = loggable_path(request)
        # aiohttp gives its access logger the web.Request it served, typed as its base.
        request = cast(web.Request, request)
        # The callback route found it already.
        remote = request.get(CLIENT_ADDRESS, "")
        if remote == "":
            remote = client_address(request, request.app[CONFIG].server.trusted_proxies)
        extra = {
            "method": request.method,
            "path": path,
            "status": response.status,
            "duration_ms": round(time * 1000, 2),
            "remote": remote,
            "bytes": response.body_length,
        }
        handler = self._direct.target()
        if handler is not None:
            message = f"{request.method} {path} {response.status} {time * 1000:.1f}ms {remote}"
            self._direct.write(handler, message, extra)
        else:
            self.logger.info("%s %s %d %.1fms %s", request.method, path, response.status, time * 1000, remote, extra=extra)
