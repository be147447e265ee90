"""Typed keys for what the app carries, shared by every route module."""

from aiohttp import web

from cbhub.config import Config
from cbhub.hub import Hub
from cbhub.ratelimit import RateLimiter

CONFIG = web.AppKey("config", Config)
HUB = web.AppKey("hub", Hub)
# The per-address limit on /cb; absent when ingest.rate_per_ip is 0.
LIMITER = web.AppKey("limiter", RateLimiter)


def base_url(request: web.Request) -> str:
    """Where callback URLs point: server.public_url, else the address this request came to."""
    configured = request.app[CONFIG].server.public_url
    return configured or f"{request.scheme}://{request.host}"
