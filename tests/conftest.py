"""Session-wide real services: PostgreSQL, nats-server with JetStream, libvirt test:///."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from controlplane.config import NatsConfig
from controlplane.db import migrate
from controlplane.runtime import bus
from controlplane.runtime.natsserver import NatsServerProcess
from tests.support import postgres
from tests.support.nats import nats_server


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database used as the template for per-test databases."""
    postgres.ensure_postgres_running()
    name = postgres.create_database(prefix="loom_template")
    try:
        migrate.upgrade(postgres.url_for(name))
        yield name
    finally:
        postgres.drop_database(name)


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database of this test's own."""
    with postgres.temporary_database(template=pg_template) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite database file."""
    url = f"sqlite:///{tmp_path / 'loom.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session")
def nats_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServerProcess | None]:
    with nats_server(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture(scope="session")
def nats_url(nats_process: NatsServerProcess | None) -> str:
    return os.environ.get("LOOM_TEST_NATS_URL") or (nats_process.url if nats_process else "")


@pytest.fixture
def nats_config() -> NatsConfig:
    return NatsConfig(duplicate_window_s=120)


@pytest.fixture
async def nc(nats_url: str, nats_config: NatsConfig) -> AsyncIterator[NATS]:
    """A connected NATS client with Loom's streams in place."""
    client = await bus.connect(nats_url, nats_config, f"test-{uuid.uuid4().hex[:6]}")
    await bus.ensure_streams(client.jetstream(), nats_config)
    try:
        yield client
    finally:
        await client.drain()


@pytest.fixture
def fresh_nats(tmp_path: Path) -> Iterator[NatsServerProcess]:
    """A nats-server of this test's own (for whole-stack tests that must not share streams)."""
    from controlplane.runtime.natsserver import start_nats_server

    server = start_nats_server(tmp_path / "nats-fresh")
    try:
        yield server
    finally:
        server.stop()
