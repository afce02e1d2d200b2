"""Fixtures for whole-stack tests: a Stack on the test's own database and nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.client import resolve_cloud
from controlplane.runtime.natsserver import start_nats_server
from tests.e2e.support import Client, seed_catalog
from tests.support.nats import RestartableNats
from tests.support.stack import Stack


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[RestartableNats]:
    server = RestartableNats(start_nats_server(tmp_path / "nats"))
    try:
        yield server
    finally:
        server.process.stop()


def _stack(pg_url: str, nats: RestartableNats, tmp_path: Path) -> Stack:
    return Stack(
        db_url=pg_url,
        nats_url=nats.url,
        data_dir=tmp_path / "loom",
        extra_env={
            "LOOM_AGENT__HEARTBEAT_INTERVAL": "1",
            "LOOM_CONDUCTOR__MAX_BUILD_ATTEMPTS": "3",
            # The first simulated host of the `cloud` fixture serves routers (it has no data
            # plane: the API and the router feed are what these tests see).
            "LOOM_NETWORK__L3_HOST": "cloud-0000",
        },
    )


@pytest.fixture
def stack(pg_url: str, nats: RestartableNats, tmp_path: Path) -> Iterator[Stack]:
    """The services (started by the test) over a catalog with flavor "1" and one image."""
    seed_catalog(pg_url)
    s = _stack(pg_url, nats, tmp_path)
    try:
        yield s
    finally:
        s.stop_all()


@pytest.fixture
def cloud(pg_url: str, nats: RestartableNats, tmp_path: Path) -> Iterator[Stack]:
    """Every service running, the gateway included, over the catalog Loom seeds itself
    (roles, admin and demo users, m1.* flavors); clouds.yaml is in the data directory."""
    s = _stack(pg_url, nats, tmp_path)
    try:
        s.start("scheduler")
        s.start("conductor")
        s.start("gateway")
        # The agent reaches the Image API as loom up's does (snapshots are uploaded there),
        # with the admin's token in place of the service user's.
        token_file = tmp_path / "image-token"
        token_file.write_text(resolve_cloud("loom-admin", s.data_dir / "clouds.yaml").token)
        s.start(
            "agent",
            "--simulate",
            "3",
            "--host-prefix",
            "cloud",
            env={
                "LOOM_AGENT__IMAGE_URL": f"{s.gateway_url}/image",
                "LOOM_AGENT__IMAGE_TOKEN_FILE": str(token_file),
            },
        )
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
