"""Shared by every test package: hypothesis settings and the real reference model.

The model (all-MiniLM-L6-v2 from the model extra) loads once per session, a
few seconds on CPU; `model_server` serves it on loopback like
`modeshift backend` does.
"""

from __future__ import annotations

import threading

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import settings

from backends.embedder import Embedder
from backends.model_server import ModelService, build_app
from tests.servers.postgres import PostgresServer
from tests.servers.redis import RedisServer

# Shared CI machines are slow and noisy: a property may take longer than
# hypothesis' 200 ms default deadline without anything being wrong.
settings.register_profile("modeshift", deadline=None, print_blob=True)
settings.load_profile("modeshift")


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder(device="cpu")


class Wrapped:
    """The real embedder, with a poison text that fails a pass and an optional gate to hold passes."""

    def __init__(self, embedder, gate: threading.Event | None = None):
        self.inner = embedder
        self.gate = gate
        self.name, self.device, self.dimension = embedder.name, embedder.device, embedder.dimension

    def embed(self, texts):
        if self.gate is not None:
            self.gate.wait(timeout=10)
        if "poison" in texts:
            raise ValueError("this input poisons the pass")
        return self.inner.embed(texts)


@pytest.fixture
async def model_server():
    """`await model_server(embedder, mode=...)`: the reference server on loopback; (url, service)."""
    servers: list[TestServer] = []

    async def start(embedder, **options) -> tuple[str, ModelService]:
        service = ModelService(embedder, **options)
        server = TestServer(build_app(service), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/"), service

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free loopback port (tests/servers/redis.py); `.stop()` and `.start()` at will."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL for the session (tests/servers/postgres.py); each test makes its own database in it."""
    server = PostgresServer()
    server.start()
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgres"])
def job_database(request, tmp_path) -> str:
    """`jobs.database` for a test both stores must pass: a SQLite file, then a fresh Postgres database."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.sqlite3")
    return request.getfixturevalue("postgres_server").new_database()
