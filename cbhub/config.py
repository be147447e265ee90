"""Configuration: defaults < TOML file < environment (CBHUB_SECTION_KEY) < command-line flags.

Every key is declared once, in the dataclasses below, with its type and default; the loader
derives file parsing, environment names and validation from those declarations, so a new key
needs one line here and one in config.example.toml.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from cbhub.domain import networks
from cbhub.domain.responses import ResponseSpec, ResponseSpecError, fixed_spec
from cbhub.domain.signatures import SpecError, VerifySpec, parse_spec

ENV_PREFIX = "CBHUB_"
# Keys whose environment variable is not the derived CBHUB_SECTION_KEY.
_ENV_NAMES = {"auth.api_keys": "CBHUB_API_KEYS"}
# Keys whose values are secrets: an error message names them but never shows the value.
_SECRET_KEYS = frozenset({"auth.api_keys", "ingest.verify.secret", "storage.dsn"})
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MIN_API_KEY_LENGTH = 16
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
DAY = 86400
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
BACKENDS = ("sqlite", "postgres")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key and the value."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # Base of every callback_url, e.g. "https://hooks.example.com"; empty means "from the request".
    public_url: str = ""
    # "auto": uvloop when installed (a default dependency on CPython off Windows), else asyncio's loop.
    event_loop: str = "auto"
    shutdown_timeout: float = 10.0
    # Seconds from a request's first byte (a new connection's: from its accept) until its
    # headers and body must all have arrived; past it the connection is closed (Slowloris).
    read_timeout: float = 60.0
    # Proxies (CIDRs) whose X-Forwarded-For / Forwarded headers are believed.
    trusted_proxies: tuple[str, ...] = ()
    # PEM files: both set, cbhub serves HTTPS itself.
    tls_cert: str = ""
    tls_key: str = ""


@dataclass(frozen=True)
class StorageConfig:
    backend: str = "sqlite"
    path: str = "cbhub.db"
    synchronous: str = "FULL"
    # PostgreSQL: a libpq URL (postgresql://user:password@host:5432/cbhub) and the number of
    # pooled connections for reads (each instance also holds one writer and one listener).
    dsn: str = field(default="", repr=False)  # may hold a password
    pool_size: int = 10


@dataclass(frozen=True)
class CallbacksConfig:
    default_ttl: int = DAY
    max_ttl: int = 30 * DAY
    max_wait: float = 300.0
    # Keep a delivery that comes after its callback closed (flagged "late") instead of
    # answering 410: a sender that never retries would lose it.
    keep_late: bool = True
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
    # One line per request at info (logger cbhub.access); false leaves it out, and its cost
    # (about a tenth of a callback's CPU under load) with it. Warnings and errors stay.
    access: bool = True


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
class AuthConfig:
    # API key name -> key; with any key set, every /v1 route needs one.
    api_keys: dict[str, str] = field(default_factory=dict, repr=False)
    # Key names that see every callback, not only their own.
    admin: tuple[str, ...] = ()
    # Serve the client API without keys on an address other hosts can reach.
    allow_anonymous: bool = False


@dataclass(frozen=True)
class VerifyConfig:
    """The [ingest.verify] table: the signature scheme of callbacks minted without one."""

    scheme: str = ""
    secret: str = field(default="", repr=False)
    header: str = ""
    encoding: str = "hex"
    prefix: str = ""

    def spec(self) -> VerifySpec | None:
        # "hex" is the default, not a choice: Standard Webhooks takes no encoding.
        given = {k: v for k, v in dataclasses.asdict(self).items() if v and (k, v) != ("encoding", "hex")}
        if not self.scheme:
            if given:
                # A secret with no scheme would look like protection and be none.
                raise SpecError(f"ingest.verify.scheme: required when ingest.verify.{next(iter(given))} is set")
            return None
        return parse_spec(given, "ingest.verify")


@dataclass(frozen=True)
class ResponseConfig:
    """The [ingest.response] table: what a callback URL answers a stored delivery when its mint
    set no "response"; every key at its default: cbhub's JSON receipt."""

    status: int = 200
    content_type: str = ""
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def spec(self) -> ResponseSpec | None:
        return fixed_spec(self.status, self.content_type, self.body, self.headers, "ingest.response")


@dataclass(frozen=True)
class IngestConfig:
    # Networks (CIDRs) every callback POST must come from; empty: anywhere.
    allow_ips: tuple[str, ...] = ()
    # Seconds a Standard Webhooks timestamp may be away from now.
    verify_tolerance: int = 300
    # Requests a second per source address on /cb; 0 (the default) turns the limit off. A limit
    # on every request refuses real callbacks in a burst, and some senders never retry.
    rate_per_ip: float = 0.0
    # The largest burst per source address; 0: twice rate_per_ip.
    rate_burst: int = 0
    # Refused requests (unknown token, closed, bad signature, address not allowed) a second per
    # source address on /cb, in bursts of up to refusal_burst; past it, further refusals are
    # answered 429. It slows token probing and never refuses a request to an open callback.
    refusal_rate_per_ip: float = 5.0
    refusal_burst: int = 50
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    response: ResponseConfig = field(default_factory=ResponseConfig)

    @property
    def burst(self) -> float:
        return float(self.rate_burst) if self.rate_burst else max(1.0, 2 * self.rate_per_ip)


@dataclass(frozen=True)
class OutcomesConfig:
    # Decide a delivery's outcome by the built-in rules (Marketing Cloud's form, a JSON
    # status/state/error) when its callback's own rule does not; false: only own rules.
    builtin: bool = True


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
    auth: AuthConfig = field(default_factory=AuthConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    outcomes: OutcomesConfig = field(default_factory=OutcomesConfig)


def _positive(value: Any) -> bool:
    return bool(value > 0)


def _port(value: int) -> bool:
    return 0 <= value <= 65535


def _dsn(value: str) -> bool:
    return not value or urlsplit(value).scheme in ("postgres", "postgresql")


def _cidrs(value: tuple[str, ...]) -> bool:
    try:
        networks.normalise(value)
    except ValueError:
        return False
    return True


def _non_negative(value: Any) -> bool:
    return bool(value >= 0)


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
    "server.read_timeout": (_positive, "a number of seconds greater than 0"),
    "storage.backend": (lambda v: v in BACKENDS, "one of " + ", ".join(BACKENDS)),
    "server.event_loop": (lambda v: v in EVENT_LOOPS, "one of " + ", ".join(EVENT_LOOPS)),
    "storage.path": (bool, "a file path"),
    "storage.dsn": (_dsn, "a PostgreSQL URL such as postgresql://cbhub@db.internal:5432/cbhub"),
    "storage.pool_size": (_positive, "a whole number of connections greater than 0"),
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
    "server.trusted_proxies": (_cidrs, "a list of IP addresses or CIDRs such as 10.0.0.0/8"),
    "ingest.allow_ips": (_cidrs, "a list of IP addresses or CIDRs such as 203.0.113.0/24 or 2001:db8::/32"),
    "ingest.verify_tolerance": (_positive, "a whole number of seconds greater than 0"),
    "ingest.rate_per_ip": (_non_negative, "a number of requests per second, 0 to turn the limit off"),
    "ingest.rate_burst": (_non_negative, "a number of requests, 0 for twice ingest.rate_per_ip"),
    "ingest.refusal_rate_per_ip": (_non_negative, "a number of refused requests per second, 0 to turn the limit off"),
    "ingest.refusal_burst": (_positive, "a number of refused requests greater than 0"),
}

_NORMALISE: dict[str, Callable[[Any], Any]] = {
    "storage.synchronous": lambda v: v.upper(),
    "storage.backend": lambda v: v.lower(),
    "server.event_loop": lambda v: v.lower(),
    "server.public_url": lambda v: v.rstrip("/"),
    "log.level": lambda v: v.lower(),
    "log.format": lambda v: v.lower(),
    "server.trusted_proxies": lambda v: _canonical_cidrs(v),
    "ingest.allow_ips": lambda v: _canonical_cidrs(v),
}


def _canonical_cidrs(values: tuple[str, ...]) -> tuple[str, ...]:
    # A bad entry is kept as written, for the check to name it.
    try:
        return networks.normalise(values)
    except ValueError:
        return values


def env_name(dotted: str) -> str:
    return _ENV_NAMES.get(dotted) or ENV_PREFIX + dotted.replace(".", "_").upper()


def _api_keys_from_text(text: str) -> dict[str, str]:
    """CBHUB_API_KEYS: "name1:key1,name2:key2"."""
    keys: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, key = item.partition(":")
        if not sep:
            raise ConfigError("invalid value for auth.api_keys: an item has no ':' (expected name:key, ...)")
        keys[name.strip()] = key.strip()
    return keys


def _convert(dotted: str, kind: Any, raw: Any, from_text: bool) -> Any:
    """Turn a raw value (TOML value, or text from the environment or a flag) into `kind`."""

    def bad(hint: str) -> ConfigError:
        shown = "(hidden)" if dotted in _SECRET_KEYS else repr(raw)
        return ConfigError(f"invalid value for {dotted}: {shown} (expected {hint})")

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
    if kind == "bool":
        if from_text:
            word = str(raw).strip().lower()
            if word in TRUE_WORDS + FALSE_WORDS:
                return word in TRUE_WORDS
        elif isinstance(raw, bool):
            return raw
        raise bad("true or false")
    if kind == "dict[str, str]":
        if from_text and isinstance(raw, str):
            return _api_keys_from_text(raw)
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise bad("a table of name = \"string\" lines")
        return dict(raw)
    if kind == "tuple[str, ...]":
        if from_text and isinstance(raw, str):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            raise bad("a list of strings")
        return tuple(raw)
    raise AssertionError(f"no converter for {kind}")


def _nested(fld: dataclasses.Field[Any]) -> type | None:
    """The dataclass a field holds as a nested table ([section] or [section.table]), if any."""
    factory = fld.default_factory
    return factory if isinstance(factory, type) and dataclasses.is_dataclass(factory) else None


def _load_table(
    cls: type,
    prefix: str,
    file_table: Any,
    path: Any,
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None,
) -> Any:
    """An instance of `cls` from its file table, the environment and flags; `prefix` is its
    dotted name ("server", "ingest.verify")."""
    if not isinstance(file_table, dict):
        raise ConfigError(f"invalid value for {prefix}: {file_table!r} (expected a table)")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in file_table:
        if key not in fields:
            raise ConfigError(f"unknown key {prefix}.{key} in {path}")
    values: dict[str, Any] = {}
    for name, fld in fields.items():
        dotted = f"{prefix}.{name}"
        nested = _nested(fld)
        if nested is not None:
            values[name] = _load_table(nested, dotted, file_table.get(name, {}), path, env, overrides)
            continue
        if overrides and overrides.get(dotted) is not None:
            value = _convert(dotted, fld.type, overrides[dotted], from_text=isinstance(overrides[dotted], str))
        elif env_name(dotted) in env:
            value = _convert(dotted, fld.type, env[env_name(dotted)], from_text=True)
        elif name in file_table:
            value = _convert(dotted, fld.type, file_table[name], from_text=False)
        else:
            continue
        values[name] = _NORMALISE.get(dotted, lambda v: v)(value)
    return cls(**values)


def load_config(
    path: str | os.PathLike[str] | None = None,
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
        section_cls = _nested(section)
        assert section_cls is not None
        sections[section.name] = _load_table(
            section_cls, section.name, file_values.get(section.name, {}), path, env, overrides
        )
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


def _value(config: Config, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _validate(config: Config) -> None:
    for dotted, (check, hint) in _CHECKS.items():
        value = _value(config, dotted)
        if not check(value):
            shown = "(hidden)" if dotted in _SECRET_KEYS else repr(value)
            raise ConfigError(f"invalid value for {dotted}: {shown} (expected {hint})")
    if config.storage.backend == "postgres" and not config.storage.dsn:
        raise ConfigError(
            f"storage.dsn is required with storage.backend = \"postgres\" (or set {env_name('storage.dsn')})"
        )
    _validate_auth(config.auth)
    try:
        config.ingest.verify.spec()
    except SpecError as exc:
        raise ConfigError(f"invalid value for {exc}") from None
    try:
        config.ingest.response.spec()
    except ResponseSpecError as exc:
        raise ConfigError(f"invalid value for {exc}") from None
    server = config.server
    if bool(server.tls_cert) != bool(server.tls_key):
        raise ConfigError("server.tls_cert and server.tls_key: set both (PEM files) to serve HTTPS, or neither")
    if config.callbacks.default_ttl > config.callbacks.max_ttl:
        raise ConfigError(
            f"invalid value for callbacks.default_ttl: {config.callbacks.default_ttl!r} "
            f"(expected at most callbacks.max_ttl = {config.callbacks.max_ttl})"
        )


def _validate_auth(auth: AuthConfig) -> None:
    # The messages name keys by their names only: a key is a secret.
    seen: dict[str, str] = {}
    for name, key in auth.api_keys.items():
        if not KEY_NAME.fullmatch(name):
            raise ConfigError(
                f"invalid value for auth.api_keys: the name {name[:64]!r} (expected letters, digits, '_', '.', '-')"
            )
        if len(key) < MIN_API_KEY_LENGTH:
            raise ConfigError(
                f"invalid value for auth.api_keys: the key named {name!r} is shorter than {MIN_API_KEY_LENGTH}"
                " characters (expected a long random string, e.g. from `openssl rand -hex 32`)"
            )
        if key in seen:
            raise ConfigError(f"invalid value for auth.api_keys: {seen[key]!r} and {name!r} have the same key")
        seen[key] = name
    for name in auth.admin:
        if name not in auth.api_keys:
            raise ConfigError(f"invalid value for auth.admin: {name!r} (expected names from auth.api_keys)")


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`; a name other than localhost counts as not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_problem(config: Config) -> str | None:
    """Why `config` must not be served, if it must not: an open client API on a reachable address."""
    if config.auth.api_keys or config.auth.allow_anonymous or is_loopback(config.server.host):
        return None
    return (
        f"server.host {config.server.host!r} can be reached from other hosts and no API key is set: "
        "anyone could read every callback. Set keys in [auth.api_keys] or CBHUB_API_KEYS=\"name:key,...\", "
        "or set auth.allow_anonymous = true (CBHUB_AUTH_ALLOW_ANONYMOUS=true) to serve without keys."
    )
