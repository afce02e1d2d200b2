"""Two scheduler processes, 500 concurrent placements, room for exactly 300."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
from loom.common.v1 import common_pb2
from loom.compute.v1 import agent_bus_pb2
from loom.scheduler.v1 import scheduler_pb2 as pb
from loom.scheduler.v1 import scheduler_pb2_grpc
from nats.aio.client import Client as NATS

from controlplane.config import LoomConfig
from controlplane.db.engine import make_engine
from controlplane.runtime import bus
from tests.scheduler.dbcheck import assert_consistent
from tests.scheduler.processes import SchedulerProcess, start_scheduler
from tests.support import polling

HOSTS = 6
PER_HOST = 50  # 6 x 50 = 300 placements fit
REQUESTS = 500
FLAVOR = common_pb2.Resources(vcpus=1, memory_mb=100, disk_gb=1)


def stub_for(channel: grpc.aio.Channel) -> scheduler_pb2_grpc.SchedulerServiceAsyncStub:
    return scheduler_pb2_grpc.SchedulerServiceStub(channel)  # type: ignore[return-value]


async def wait_all_up(stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub) -> None:
    async def all_up() -> list[tuple[str, bool]] | None:
        hosts = (await stub.ListHosts(pb.ListHostsRequest(), timeout=5)).hosts
        return (
            None
            if len(hosts) < HOSTS or not all(h.up for h in hosts)
            else [(h.name, h.up) for h in hosts]
        )

    # Only one replica received each heartbeat; the other reads it from the database.
    within = polling.other_replica_sees_heartbeat_s(LoomConfig())
    await polling.eventually(all_up, within, f"{HOSTS} hosts up")


async def test_two_scheduler_processes_place_exactly_what_fits(
    pg_url: str, nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    procs: list[SchedulerProcess] = []
    channels: list[grpc.aio.Channel] = []
    try:
        for name in ("sched-a", "sched-b"):
            procs.append(await asyncio.to_thread(start_scheduler, pg_url, nats_url, tmp_path, name))
        channels = [grpc.aio.insecure_channel(p.address) for p in procs]
        stubs = [stub_for(c) for c in channels]

        hosts = [f"storm-{i}" for i in range(HOSTS)]
        for host in hosts:
            await stubs[0].ReportInventory(
                pb.ReportInventoryRequest(
                    host=host,
                    vcpu=pb.ResourceUsage(total=64, allocation_ratio=1.0),
                    memory_mb=pb.ResourceUsage(total=PER_HOST * 100, allocation_ratio=1.0),
                    disk_gb=pb.ResourceUsage(total=1000, allocation_ratio=1.0),
                ),
                timeout=10,
            )
            beat = agent_bus_pb2.Heartbeat(host=host, binary="loom-compute")
            await nc.publish(bus.heartbeat_subject(host), beat.SerializeToString())
        await nc.flush()
        for stub in stubs:
            await wait_all_up(stub)

        async def place(i: int) -> str:
            resp = await stubs[i % 2].SelectDestinations(
                pb.SelectDestinationsRequest(
                    request_id=f"r-{i}", consumer_id=f"vm-{i}", resources=FLAVOR
                ),
                timeout=60,
            )
            return resp.WhichOneof("outcome") or ""

        started = time.monotonic()
        outcomes = await asyncio.gather(*(place(i) for i in range(REQUESTS)))
        elapsed = time.monotonic() - started

        assert outcomes.count("placement") == HOSTS * PER_HOST
        assert outcomes.count("no_valid_host") == REQUESTS - HOSTS * PER_HOST
        engine = make_engine(pg_url)
        try:
            usage = await assert_consistent(engine)
        finally:
            await engine.dispose()
        assert {h: u.allocations for h, u in usage.items()} == dict.fromkeys(hosts, PER_HOST)
        print(f"storm: {REQUESTS} decisions in {elapsed:.2f}s ({REQUESTS / elapsed:.0f}/s)")

        # SIGTERM ends each scheduler cleanly.
        for proc in procs:
            proc.stop()
            assert proc.process.returncode == 0, proc.log.read_text()
            assert '"msg": "stopped"' in proc.log.read_text()
    finally:
        for channel in channels:
            await channel.close()
        for proc in procs:
            proc.stop()
