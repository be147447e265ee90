"""Fixtures: a real cbhub app on a real port over a real SQLite file in tmp_path (or a fresh
PostgreSQL database). The helpers the tests share are in helpers.py."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, settings

from cbhub.app import create_app
from cbhub.config import Config, load_config
from helpers import ServerProcess, bearer

# A run started in the background (nohup, some CI runners) inherits SIGINT ignored, and so would
# every program the tests start: the tests that press Ctrl-C need it to reach them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Property tests: their outcome must not depend on how fast the machine is, nor on how large
# a random draw happens to come out. No deadline per example and no health check about slow
# or oversized generation (a busy 2-core machine trips them); each test sets the number of
# examples it can afford.
settings.register_profile(
    "cbhub",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.load_profile("cbhub")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "cbhub.db"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test module with `ALL_BACKENDS = True` runs each of its tests on every backend."""
    if metafunc.definition.get_closest_marker("sqlite_only"):
        return
    if getattr(metafunc.module, "ALL_BACKENDS", False) and "backend" in metafunc.fixturenames:
        only_postgres = metafunc.definition.get_closest_marker("postgres_only") is not None
        metafunc.parametrize("backend", ["postgres"] if only_postgres else ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture
def storage(backend: str, db_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """The storage settings of the backend under test (a fresh database each test)."""
    values = {"storage.backend": backend, "storage.path": str(db_path)}
    if backend == "postgres":
        values["storage.dsn"] = request.getfixturevalue("pg_dsn")
    return values


@pytest.fixture
def make_config(storage: dict[str, str]) -> Callable[..., Config]:
    def make(**overrides: Any) -> Config:
        # The defaults, as a user starts with them: every test request comes from 127.0.0.1,
        # and nothing but a refused one may be refused for a rate.
        return load_config(env={}, overrides={**storage, **overrides})

    return make


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config()


@pytest.fixture
def start_hub(aiohttp_client: Any) -> Callable[[Config], Awaitable[TestClient]]:
    """Start a cbhub app on a real port; several may run one after another on one file."""

    async def start(config: Config) -> TestClient:
        return await aiohttp_client(create_app(config))

    return start


@pytest.fixture
async def client(start_hub: Callable[[Config], Awaitable[TestClient]], config: Config) -> TestClient:
    return await start_hub(config)


@pytest.fixture
async def session_as():
    """A client session against a running hub that sends an API key with every request, as a
    program configured with that key does; `mint` and `post_callback` take it like a client."""
    sessions: list[aiohttp.ClientSession] = []

    def make(client: TestClient, key: str | None = None) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(base_url=client.make_url("/"), headers=bearer(key) if key else None)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        await session.close()


@pytest.fixture
def serve_process(tmp_path: Path):
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> ServerProcess:
        server = ServerProcess(list(args), cwd or tmp_path, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


# PostgreSQL: one throwaway server per test session, a fresh database per test.


@pytest.fixture(scope="session")
def postgres_server():
    import os

    from pg_server import REQUIRE_ENV, PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        reason = "PostgreSQL binaries (initdb, pg_ctl) not found; install them (apt-get install postgresql)"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{reason}; {REQUIRE_ENV} is set, so the PostgreSQL tests must run")
        pytest.skip(reason)
    server = PostgresServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg_dsn(postgres_server):
    """A DSN of a new, empty database on the session's server, dropped after the test (a few
    hundred tests would otherwise leave gigabytes behind)."""
    import subprocess
    import uuid

    name = f"cbhub_{uuid.uuid4().hex[:12]}"

    def psql(sql: str) -> None:
        subprocess.run(
            [str(postgres_server.bindir / "psql"), "-q", postgres_server.dsn(), "-c", sql],
            check=True,
            capture_output=True,
            timeout=60,
        )

    psql(f"CREATE DATABASE {name}")
    yield postgres_server.dsn(name)
    # FORCE: a killed instance's connections may not be gone yet.
    psql(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
async def make_store(storage: dict[str, str]):
    """Opens stores of the backend under test over one database (several are several
    instances sharing it)."""
    from cbhub.store import create_store

    opened: list[Any] = []

    async def open_store(publish: Callable[[Any], None] | None = None):
        store = create_store(load_config(env={}, overrides=storage))
        if publish is not None:
            store.announce_to(publish)
        await store.open()
        opened.append(store)
        return store

    yield open_store
    for store in reversed(opened):
        await store.close()
