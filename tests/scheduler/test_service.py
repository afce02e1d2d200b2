"""`serve`: refuses a bad pipeline before serving, beats as loom-scheduler, stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from loom.compute.v1 import agent_bus_pb2
from loom.scheduler.v1 import scheduler_pb2 as pb
from loom.scheduler.v1 import scheduler_pb2_grpc
from nats.aio.msg import Msg

from controlplane.config import LoomConfig, NatsConfig, SchedulerConfig
from controlplane.runtime import bus
from controlplane.runtime.natsserver import NatsServerProcess
from controlplane.scheduler.filters import UnknownFilterError
from controlplane.scheduler.service import serve
from tests.scheduler.processes import free_port
from tests.support import polling


async def test_an_unknown_filter_name_stops_the_scheduler_before_it_serves(
    pg_url: str, nats_url: str
) -> None:
    cfg = LoomConfig.model_validate(
        {
            "database": {"url": pg_url},
            "nats": {"url": nats_url},
            "scheduler": SchedulerConfig(filters=("capacity", "typo")).model_dump(),
        }
    )
    with pytest.raises(UnknownFilterError, match="'typo'"):
        await serve(cfg, asyncio.Event())


async def test_the_scheduler_serves_beats_as_loom_scheduler_and_stops_when_asked(
    pg_url: str, fresh_nats: NatsServerProcess, nats_config: NatsConfig
) -> None:
    port = free_port()
    cfg = LoomConfig.model_validate(
        {
            "database": {"url": pg_url},
            "nats": {"url": fresh_nats.url},
            "scheduler": {"listen": f"127.0.0.1:{port}"},
        }
    )
    nc = await bus.connect(fresh_nats.url, nats_config, "test-service")
    await bus.ensure_streams(nc.jetstream(), nats_config)
    # Reported before the scheduler starts: it must read it from the stream.
    report = agent_bus_pb2.HostInventoryReport(
        host="reported-early",
        vcpu=agent_bus_pb2.Inventory(total=4),
        memory_mb=agent_bus_pb2.Inventory(total=2048),
        disk_gb=agent_bus_pb2.Inventory(total=20),
    )
    await nc.jetstream().publish(
        bus.inventory_subject("reported-early"), report.SerializeToString()
    )
    beats: asyncio.Queue[agent_bus_pb2.Heartbeat] = asyncio.Queue()

    async def on_beat(msg: Msg) -> None:
        beat = agent_bus_pb2.Heartbeat()
        beat.ParseFromString(msg.data)
        if beat.binary == "loom-scheduler":
            beats.put_nowait(beat)

    sub = await nc.subscribe(bus.HEARTBEAT_WILDCARD, cb=on_beat)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(cfg, stop))
    try:
        # Its first heartbeat goes out once it serves.
        beat = await asyncio.wait_for(beats.get(), polling.SERVICE_READY_S)
        assert beat.host
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)

            async def names() -> list[str]:
                listed = await stub.ListHosts(pb.ListHostsRequest(), timeout=5)
                return [h.name for h in listed.hosts]

            listed = await polling.eventually(
                names, polling.SCHEDULER_SEES_S, "the host reported before the start"
            )
            assert listed == ["reported-early"]
        stop.set()
        await asyncio.wait_for(task, 20)
        assert task.exception() is None
    finally:
        stop.set()
        await sub.unsubscribe()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await nc.drain()
