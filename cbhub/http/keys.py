"""Typed keys for what the app carries, shared by every route module."""

from aiohttp import web

from cbhub.config import Config
from cbhub.hub import Hub
from cbhub.metrics import Metrics
from cbhub.subscriptions import Streams

CONFIG = web.AppKey("config", Config)
HUB = web.AppKey("hub", Hub)
METRICS = web.AppKey("metrics", Metrics)
STREAMS = web.AppKey("streams", Streams)


def base_url(request: web.Request) -> str:
    """Where callback URLs point: server.public_url, else the address this request came to."""
    configured = request.app[CONFIG].server.public_url
    return configured or f"{request.scheme}://{request.host}"
