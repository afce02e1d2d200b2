"""Heartbeats never wait behind hypervisor calls: while a build blocks in the hypervisor
(as a define did for 30-40 s when /dev/kvm was root-only), the host keeps beating and the
build still finishes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from loom.compute.v1 import agent_bus_pb2
from nats.aio.client import Client as NATS

from controlplane.runtime import bus
from nodeagent.driver.base import PowerState
from nodeagent.driver.libvirt_driver import LibvirtDriver, write_simulated_node
from tests.nodeagent.conftest import AgentFactory
from tests.nodeagent.support import EventReader, build_command, make_spec, send

HEARTBEAT_S = 0.1
BLOCK_S = 2.0


class BlockingDriver(LibvirtDriver):
    """libvirt's test driver, made to behave like a real hypervisor whose define blocks:
    calls go to a thread (as for qemu), and create holds its thread for BLOCK_S."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.blocking = threading.Event()

    @property
    def runs_inline(self) -> bool:
        return False

    def create(
        self,
        spec: agent_bus_pb2.InstanceSpec,
        *,
        power_on: bool = True,
        dhcp: Sequence[agent_bus_pb2.NetworkDhcp] = (),
    ) -> PowerState:
        self.blocking.set()
        time.sleep(BLOCK_S)  # a hypervisor call that does not return for a while
        return super().create(spec, power_on=power_on, dhcp=dhcp)


async def test_a_host_keeps_beating_while_a_build_blocks_in_the_hypervisor(
    make_agent: AgentFactory, bus_nc: NATS, tmp_path: Path
) -> None:
    uri = write_simulated_node(tmp_path / "h1.xml", vcpus=8, memory_mb=16384)
    driver = BlockingDriver(uri, host="h1", instances_dir=tmp_path / "inst", disk_gb=100)
    beats: list[float] = []

    async def on_beat(_msg: object) -> None:
        beats.append(time.monotonic())

    await bus_nc.subscribe(bus.heartbeat_subject("h1"), cb=on_beat)
    agent = make_agent(driver=driver, heartbeat_interval=HEARTBEAT_S)
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    spec = make_spec()
    await send(bus_nc.jetstream(), "h1", "build", build_command(spec))
    # The driver's thread sets the event: wait for it off the loop.
    assert await asyncio.to_thread(driver.blocking.wait, 30)
    blocked_at = time.monotonic()
    event = await events.next()
    finished_at = time.monotonic()
    assert event.kind == agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED
    assert finished_at - blocked_at >= BLOCK_S
    # Beats went on while the hypervisor held the build (about BLOCK_S / HEARTBEAT_S of
    # them; a heartbeat that waited behind the call would give none).
    during = [t for t in beats if blocked_at <= t <= finished_at]
    assert len(during) >= 2, len(during)


async def test_a_host_keeps_beating_when_a_power_sync_comes_due_during_a_blocked_build(
    make_agent: AgentFactory, bus_nc: NATS, tmp_path: Path
) -> None:
    """The power sync waits for the host's lock, which the blocked build holds; the beats
    must not wait with it."""
    uri = write_simulated_node(tmp_path / "h1.xml", vcpus=8, memory_mb=16384)
    driver = BlockingDriver(uri, host="h1", instances_dir=tmp_path / "inst", disk_gb=100)
    beats: list[float] = []

    async def on_beat(_msg: object) -> None:
        beats.append(time.monotonic())

    await bus_nc.subscribe(bus.heartbeat_subject("h1"), cb=on_beat)
    agent = make_agent(driver=driver, heartbeat_interval=HEARTBEAT_S, power_sync_interval=0.2)
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    await send(bus_nc.jetstream(), "h1", "build", build_command(make_spec()))
    assert await asyncio.to_thread(driver.blocking.wait, 30)
    blocked_at = time.monotonic()
    event = await events.next()
    assert event.kind == agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED
    # By the second half of the block a power sync has come due (every 0.2 s) and waits
    # for the lock; beats there show that the heartbeat does not wait behind it.
    second_half = [t for t in beats if blocked_at + BLOCK_S / 2 <= t <= blocked_at + BLOCK_S]
    assert len(second_half) >= 2, len(second_half)
