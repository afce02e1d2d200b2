"""Fixtures for whole-stack tests: a Stack on the test's own database and nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.runtime.natsserver import NatsServerProcess, start_nats_server
from tests.e2e.support import Client, seed_catalog
from tests.support.stack import Stack


@dataclass
class Nats:
    """A nats-server the test may kill and start again on the same port and store."""

    process: NatsServerProcess

    @property
    def url(self) -> str:
        return self.process.url

    def kill(self) -> None:
        self.process.kill()

    def restart(self) -> None:
        self.process = start_nats_server(self.process.store_dir, self.process.port)


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[Nats]:
    server = Nats(start_nats_server(tmp_path / "nats"))
    try:
        yield server
    finally:
        server.process.stop()


@pytest.fixture
def stack(pg_url: str, nats: Nats, tmp_path: Path) -> Iterator[Stack]:
    seed_catalog(pg_url)
    s = Stack(
        db_url=pg_url,
        nats_url=nats.url,
        data_dir=tmp_path / "loom",
        extra_env={
            "LOOM_AGENT__HEARTBEAT_INTERVAL": "1",
            "LOOM_CONDUCTOR__MAX_BUILD_ATTEMPTS": "3",
        },
    )
    try:
        yield s
    finally:
        s.stop_all()


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[Client]:
    c = Client.connect(stack.conductor_target)
    try:
        yield c
    finally:
        await c.close()
