"""Fixtures for the node agent: simulated libvirt hosts and agents on a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from controlplane.config import AgentConfig, NatsConfig
from controlplane.runtime import bus
from controlplane.runtime.natsserver import NatsServerProcess
from nodeagent.agent import HostAgent
from nodeagent.driver.libvirt_driver import LibvirtDriver
from nodeagent.fleet import FleetView
from tests.nodeagent.support import make_test_driver
from tests.support.nats import RestartableNats


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[LibvirtDriver]:
    d = make_test_driver(tmp_path, "h1")
    d.open()
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def restartable_nats(fresh_nats: NatsServerProcess) -> Iterator[RestartableNats]:
    """This test's nats-server, which the test may kill and start again. Name it before
    bus_nc and make_agent, so the server outlives their teardown."""
    server = RestartableNats(fresh_nats)
    try:
        yield server
    finally:
        server.process.stop()


@pytest.fixture
async def bus_nc(fresh_nats: NatsServerProcess) -> AsyncIterator[NATS]:
    """A NATS connection to this test's own nats-server, with Loom's streams."""
    cfg = NatsConfig(duplicate_window_s=120)
    client = await bus.connect(fresh_nats.url, cfg, "agent-test")
    await bus.ensure_streams(client.jetstream(), cfg)
    try:
        yield client
    finally:
        await client.close()


AgentFactory = Callable[..., HostAgent]


@pytest.fixture
async def make_agent(bus_nc: NATS, tmp_path: Path) -> AsyncIterator[AgentFactory]:
    """Builds HostAgents (not started); every one is stopped at the end of the test."""
    made: list[HostAgent] = []

    def factory(
        host: str = "h1",
        *,
        fleet: FleetView | None = None,
        ack_wait: float = 30.0,
        driver: LibvirtDriver | None = None,
        nc: NATS | None = None,
        watch: bus.ConnectionWatch | None = None,
        **cfg: Any,
    ) -> HostAgent:
        settings: dict[str, Any] = {
            "heartbeat_interval": 3600.0,
            "power_sync_interval": 3600.0,
            "shutdown_timeout": 1,
            "availability_zone": "az-test",
        }
        settings.update(cfg)
        agent = HostAgent(
            host=host,
            driver=driver or make_test_driver(tmp_path, host),
            nc=nc or bus_nc,
            cfg=AgentConfig(**settings),
            compute_endpoint="127.0.0.1:1",
            host_ip="127.0.0.1",
            fleet=fleet,
            ack_wait=ack_wait,
            watch=watch,
        )
        made.append(agent)
        return agent

    try:
        yield factory
    finally:
        for agent in made:
            await agent.stop()
