"""Inventory reports and heartbeats over a real nats-server reach the scheduler."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
from loom.compute.v1 import agent_bus_pb2
from nats.aio.client import Client as NATS
from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.config import SchedulerConfig
from controlplane.db.engine import make_engine
from controlplane.runtime import bus
from controlplane.scheduler.events import subscribe_heartbeats, subscribe_inventory
from controlplane.scheduler.hostcache import HostCache
from controlplane.scheduler.hoststate import HostState, Resources
from controlplane.scheduler.pipeline import build_pipeline
from controlplane.scheduler.placement import PlacementService
from controlplane.scheduler.store import ProviderStore
from tests.scheduler.dbcheck import add_host
from tests.support import polling


@pytest.fixture
async def placement(pg_url: str) -> AsyncIterator[PlacementService]:
    engine: AsyncEngine = make_engine(pg_url)
    cfg = SchedulerConfig()
    store = ProviderStore(engine)
    try:
        yield PlacementService(store, HostCache(store), build_pipeline(cfg), cfg)
    finally:
        await engine.dispose()


T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T | None]]) -> T:
    """What an agent published on NATS, as the scheduler holds it once it has it."""
    return await polling.eventually(probe, polling.SCHEDULER_SEES_S, "the scheduler sees it")


def report(host: str, memory_mb: int, ratio: float = 0.0) -> bytes:
    return agent_bus_pb2.HostInventoryReport(
        host=host,
        vcpu=agent_bus_pb2.Inventory(total=8),
        memory_mb=agent_bus_pb2.Inventory(total=memory_mb, reserved=512, allocation_ratio=ratio),
        disk_gb=agent_bus_pb2.Inventory(total=100, allocation_ratio=1.0),
        hypervisor_type="test",
        compute_endpoint="127.0.0.1:7000",
        availability_zone="zone-a",
    ).SerializeToString()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_an_inventory_report_creates_then_updates_the_provider(
    nc: NATS, placement: PlacementService
) -> None:
    host = unique("inv")
    js = nc.jetstream()
    sub = await subscribe_inventory(nc, placement, placement.cfg)
    try:
        await js.publish(bus.inventory_subject(host), report(host, 8192))
        created = await eventually(lambda: placement.store.load_host(host))
        assert created.memory_mb.total == 8192
        # A ratio of 0 means the configured default.
        assert created.memory_mb.ratio == placement.cfg.ram_allocation_ratio
        assert created.memory_mb.reserved == 512
        assert created.availability_zone == "zone-a"
        assert created.compute_endpoint == "127.0.0.1:7000"

        await js.publish(bus.inventory_subject(host), report(host, 16384, ratio=1.0))

        async def updated() -> HostState | None:
            h = await placement.store.load_host(host)
            return h if h is not None and h.memory_mb.total == 16384 else None

        assert (await eventually(updated)).memory_mb.ratio == 1.0
    finally:
        await sub.unsubscribe()


async def test_a_new_replica_reads_the_last_inventory_of_every_host_already_reported(
    nc: NATS, placement: PlacementService
) -> None:
    host = unique("early")
    js = nc.jetstream()
    await js.publish(bus.inventory_subject(host), report(host, 1024))
    await js.publish(bus.inventory_subject(host), report(host, 2048))

    sub = await subscribe_inventory(nc, placement, placement.cfg)
    try:

        async def latest() -> HostState | None:
            h = await placement.store.load_host(host)
            return h if h is not None and h.memory_mb.total == 2048 else None

        assert (await eventually(latest)).name == host
    finally:
        await sub.unsubscribe()


async def test_an_inventory_below_current_usage_is_refused_and_later_reports_still_apply(
    nc: NATS, placement: PlacementService
) -> None:
    host, marker = unique("shrink"), unique("marker")
    js = nc.jetstream()
    sub = await subscribe_inventory(nc, placement, placement.cfg)
    try:
        await js.publish(bus.inventory_subject(host), report(host, 4096, ratio=1.0))
        created = await eventually(lambda: placement.store.load_host(host))
        await placement.store.claim(created.id, "c-1", "p", Resources(1, 3000, 1))

        await js.publish(bus.inventory_subject(host), report(host, 2048, ratio=1.0))
        await js.publish(bus.inventory_subject(marker), report(marker, 1024))
        await eventually(lambda: placement.store.load_host(marker))

        kept = await placement.store.load_host(host)
        assert kept is not None
        assert kept.memory_mb.total == 4096
    finally:
        await sub.unsubscribe()


async def test_a_compute_heartbeat_makes_its_host_up(nc: NATS, placement: PlacementService) -> None:
    host = unique("beat")
    sub = await subscribe_heartbeats(nc, placement.cache)
    try:
        await add_host(placement.store, host)
        await placement.cache.refresh_all()
        cached = placement.cache.get(host)
        assert cached is not None
        assert not placement.is_up(cached)

        beat = agent_bus_pb2.Heartbeat(host=host, binary="loom-compute")
        await nc.publish(bus.heartbeat_subject(host), beat.SerializeToString())

        async def up() -> bool | None:
            h = placement.cache.get(host)
            return True if h is not None and placement.is_up(h) else None

        assert await eventually(up)
        await placement.cache.flush_heartbeats()
        stored = await placement.store.load_host(host)
        assert stored is not None
        assert stored.last_heartbeat_at is not None
    finally:
        await sub.unsubscribe()


async def test_heartbeats_of_other_services_do_not_make_a_compute_host_up(
    nc: NATS, placement: PlacementService
) -> None:
    host, witness = unique("sched"), unique("witness")
    sub = await subscribe_heartbeats(nc, placement.cache)
    try:
        for name in (host, witness):
            await add_host(placement.store, name)
        await placement.cache.refresh_all()

        other = agent_bus_pb2.Heartbeat(host=host, binary="loom-scheduler")
        await nc.publish(bus.heartbeat_subject(host), other.SerializeToString())
        # An agent's heartbeat sent after it proves the first one was processed.
        agent = agent_bus_pb2.Heartbeat(host=witness)
        await nc.publish(bus.heartbeat_subject(witness), agent.SerializeToString())

        async def witness_up() -> bool | None:
            h = placement.cache.get(witness)
            return True if h is not None and placement.is_up(h) else None

        await eventually(witness_up)
        cached = placement.cache.get(host)
        assert cached is not None
        assert not placement.is_up(cached)
    finally:
        await sub.unsubscribe()
