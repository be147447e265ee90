"""Configuration: defaults < TOML file < environment (CBHUB_SECTION_KEY) < command-line flags.

Every key is declared once, in the dataclasses below, with its type and default; the loader
derives file parsing, environment names and validation from those declarations, so a new key
needs one line here and one in config.example.toml.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

ENV_PREFIX = "CBHUB_"
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
DAY = 86400
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key and the value."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # Base of every callback_url, e.g. "https://hooks.example.com"; empty means "from the request".
    public_url: str = ""
    # "auto": uvloop when installed (cbhub[fast]), else asyncio's loop; or "asyncio", "uvloop".
    event_loop: str = "auto"
    shutdown_timeout: float = 10.0


@dataclass(frozen=True)
class StorageConfig:
    path: str = "cbhub.db"
    synchronous: str = "FULL"


@dataclass(frozen=True)
class CallbacksConfig:
    default_ttl: int = DAY
    max_ttl: int = 30 * DAY
    max_wait: float = 300.0
    correlation_fields: tuple[str, ...] = (
        "RequestID",
        "requestId",
        "request_id",
        "correlationId",
        "correlation_id",
    )


@dataclass(frozen=True)
class LimitsConfig:
    max_body_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class RetentionConfig:
    # Callbacks and their deliveries are deleted this many days after they expire; 0 keeps all.
    days: int = 30


@dataclass(frozen=True)
class MetricsConfig:
    # When set, GET /metrics needs "Authorization: Bearer <token>".
    token: str = ""


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True)
class RealtimeConfig:
    # Subscriptions one websocket connection may hold at once.
    max_subscriptions: int = 1000
    # Live messages queued for one connection but not yet sent; past it the consumer is too
    # slow and is closed (1013), to resume with `after`.
    max_backlog: int = 10_000
    # Seconds between websocket pings (a peer silent for half of it more is dropped) and
    # between SSE keep-alive comments.
    heartbeat: float = 15.0


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)


def _positive(value: Any) -> bool:
    return value > 0


def _port(value: int) -> bool:
    return 0 <= value <= 65535


def _public_url(value: str) -> bool:
    if not value:
        return True
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.query


# Checks beyond the type; a failing check names the key, the value and this hint.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "server.port": (_port, "a port number from 0 to 65535"),
    "server.public_url": (_public_url, "an absolute http(s) URL such as https://hooks.example.com"),
    "server.shutdown_timeout": (_positive, "a number of seconds greater than 0"),
    "server.event_loop": (lambda v: v in EVENT_LOOPS, "one of " + ", ".join(EVENT_LOOPS)),
    "storage.path": (bool, "a file path"),
    "storage.synchronous": (lambda v: v in SYNCHRONOUS_MODES, "one of " + ", ".join(SYNCHRONOUS_MODES)),
    "callbacks.default_ttl": (_positive, "a whole number of seconds greater than 0"),
    "callbacks.max_ttl": (_positive, "a whole number of seconds greater than 0"),
    "callbacks.max_wait": (_positive, "a number of seconds greater than 0"),
    "callbacks.correlation_fields": (lambda v: all(v), "a list of field names"),
    "limits.max_body_bytes": (_positive, "a number of bytes greater than 0"),
    "retention.days": (lambda v: v >= 0, "a whole number of days, 0 or more (0 keeps everything)"),
    "log.level": (lambda v: v in LOG_LEVELS, "one of " + ", ".join(LOG_LEVELS)),
    "log.format": (lambda v: v in LOG_FORMATS, "one of " + ", ".join(LOG_FORMATS)),
    "realtime.max_subscriptions": (_positive, "a whole number greater than 0"),
    "realtime.max_backlog": (_positive, "a whole number greater than 0"),
    "realtime.heartbeat": (_positive, "a number of seconds greater than 0"),
}

_NORMALISE: dict[str, Callable[[Any], Any]] = {
    "storage.synchronous": lambda v: v.upper(),
    "server.event_loop": lambda v: v.lower(),
    "server.public_url": lambda v: v.rstrip("/"),
    "log.level": lambda v: v.lower(),
    "log.format": lambda v: v.lower(),
}


def env_name(dotted: str) -> str:
    return ENV_PREFIX + dotted.replace(".", "_").upper()


def _convert(dotted: str, kind: Any, raw: Any, from_text: bool) -> Any:
    """Turn a raw value (TOML value, or text from the environment or a flag) into `kind`."""

    def bad(hint: str) -> ConfigError:
        return ConfigError(f"invalid value for {dotted}: {raw!r} (expected {hint})")

    if kind == "int":
        if isinstance(raw, bool):
            raise bad("a whole number")
        if from_text:
            try:
                return int(str(raw).strip())
            except ValueError:
                raise bad("a whole number") from None
        if not isinstance(raw, int):
            raise bad("a whole number")
        return raw
    if kind == "float":
        if isinstance(raw, bool):
            raise bad("a number")
        if from_text:
            try:
                return float(str(raw).strip())
            except ValueError:
                raise bad("a number") from None
        if not isinstance(raw, (int, float)):
            raise bad("a number")
        return float(raw)
    if kind == "str":
        if not isinstance(raw, str):
            raise bad("a string")
        return raw
    if kind == "tuple[str, ...]":
        if from_text and isinstance(raw, str):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            raise bad("a list of strings")
        return tuple(raw)
    raise AssertionError(f"no converter for {kind}")


def _section_fields(section_cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(section_cls)}


def load_config(
    path: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective Config; `overrides` maps "section.key" to flag values (text or typed)."""
    env = os.environ if env is None else env
    file_values: dict[str, Any] = {}
    if path is not None:
        file_values = _read_toml(Path(path))

    sections: dict[str, Any] = {}
    for section in dataclasses.fields(Config):
        section_cls = section.default_factory  # type: ignore[misc]
        values: dict[str, Any] = {}
        file_section = file_values.get(section.name, {})
        if not isinstance(file_section, dict):
            raise ConfigError(f"invalid value for {section.name}: {file_section!r} (expected a table)")
        for key in file_section:
            if key not in _section_fields(section_cls):
                raise ConfigError(f"unknown key {section.name}.{key} in {path}")
        for name, fld in _section_fields(section_cls).items():
            dotted = f"{section.name}.{name}"
            kind = fld.type
            if overrides and overrides.get(dotted) is not None:
                value = _convert(dotted, kind, overrides[dotted], from_text=isinstance(overrides[dotted], str))
            elif env_name(dotted) in env:
                value = _convert(dotted, kind, env[env_name(dotted)], from_text=True)
            elif name in file_section:
                value = _convert(dotted, kind, file_section[name], from_text=False)
            else:
                continue
            value = _NORMALISE.get(dotted, lambda v: v)(value)
            values[name] = value
        sections[section.name] = section_cls(**values)
    for key in file_values:
        if key not in sections:
            raise ConfigError(f"unknown section [{key}] in {path}")

    config = Config(**sections)
    _validate(config)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _validate(config: Config) -> None:
    for dotted, (check, hint) in _CHECKS.items():
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if not check(value):
            raise ConfigError(f"invalid value for {dotted}: {value!r} (expected {hint})")
    if config.callbacks.default_ttl > config.callbacks.max_ttl:
        raise ConfigError(
            f"invalid value for callbacks.default_ttl: {config.callbacks.default_ttl!r} "
            f"(expected at most callbacks.max_ttl = {config.callbacks.max_ttl})"
        )
