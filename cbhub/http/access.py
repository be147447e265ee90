"""The access log: one line per request, with the real client and tokens shortened."""

from __future__ import annotations

import logging
from typing import cast

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from cbhub.http.forwarded import client_address
from cbhub.http.keys import CONFIG
from cbhub.observe.logs import loggable_path


class AccessLogger(AbstractAccessLogger):
    """One line per request, token shortened; nothing is formatted when nobody reads it."""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = loggable_path(request)
        # aiohttp gives its access logger the web.Request it served, typed as its base.
        request = cast(web.Request, request)
        remote = client_address(request, request.app[CONFIG].server.trusted_proxies)
        self.logger.info(
            "%s %s %d %.1fms %s",
            request.method,
            path,
            response.status,
            time * 1000,
            remote,
            extra={
                "method": request.method,
                "path": path,
                "status": response.status,
                "duration_ms": round(time * 1000, 2),
                "remote": remote,
                "bytes": response.body_length,
            },
        )
