"""Select-and-claim decisions per second against H hosts, with one or more scheduler replicas.

Hosts are created through the scheduler's own ReportInventory RPC and kept up by heartbeats
on NATS, as agents would. At the end the database is checked: no host over capacity, and
each host's usage equals the sum of its allocations.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import psycopg
import uvloop
from google.protobuf.timestamp_pb2 import Timestamp
from loom.common.v1 import common_pb2
from loom.compute.v1 import agent_bus_pb2
from loom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

from bench.stats import percentile, postgres_cpu_s, read_process
from controlplane.config import NatsConfig
from controlplane.db import migrate
from controlplane.runtime import bus
from controlplane.runtime.natsserver import free_port, start_nats_server
from tests.support import postgres
from tests.support.invariants import OVERCOMMITTED_HOSTS_SQL, USAGE_MISMATCH_SQL
from tests.support.stack import Stack


def _usage(total: int, reserved: int = 0) -> scheduler_pb2.ResourceUsage:
    return scheduler_pb2.ResourceUsage(total=total, reserved=reserved)


async def _create_hosts(target: str, nats_url: str, hosts: int) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        sem = asyncio.Semaphore(64)

        async def report(i: int) -> None:
            async with sem:
                await stub.ReportInventory(
                    scheduler_pb2.ReportInventoryRequest(
                        host=f"sb-{i:05d}",
                        vcpu=_usage(32),
                        memory_mb=_usage(131072, 512),
                        disk_gb=_usage(2048),
                        hypervisor_type="test",
                    ),
                    timeout=30,
                )

        await asyncio.gather(*(report(i) for i in range(hosts)))
    await _heartbeat_all(nats_url, hosts)


async def _heartbeat_all(nats_url: str, hosts: int) -> None:
    nc = await bus.connect(nats_url, NatsConfig(), "bench-heartbeats")
    now = Timestamp()
    now.GetCurrentTime()
    for i in range(hosts):
        host = f"sb-{i:05d}"
        beat = agent_bus_pb2.Heartbeat(host=host, sent_at=now, binary="loom-compute")
        await nc.publish(bus.heartbeat_subject(host), beat.SerializeToString())
    await nc.flush()
    await nc.drain()


async def _wait_up(targets: list[str], hosts: int, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    for target in targets:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            while True:
                resp = await stub.ListHosts(scheduler_pb2.ListHostsRequest(), timeout=60)
                if sum(1 for h in resp.hosts if h.up) >= hosts:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{target}: hosts not up within {limit_s}s")
                await asyncio.sleep(0.5)


async def _decide(
    targets: list[str], decisions: int, concurrency: int, batch: int = 1
) -> dict[str, Any]:
    """`concurrency` clients ask for `decisions` placements in all, each call carrying
    `batch` of them: SelectDestinations when 1, else SelectDestinationsBatch (what the
    conductor's scheduling worker sends). Latency is per call."""
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    stubs = [scheduler_pb2_grpc.SchedulerServiceStub(c) for c in channels]
    latencies: list[float] = []
    placed = 0
    no_host = 0
    counter = iter(range(decisions))
    resources = common_pb2.Resources(vcpus=1, memory_mb=512, disk_gb=1)

    def request() -> scheduler_pb2.SelectDestinationsRequest:
        return scheduler_pb2.SelectDestinationsRequest(
            request_id=uuid.uuid4().hex,
            consumer_id=str(uuid.uuid4()),
            project_id="bench",
            resources=resources,
            num_alternates=2,
        )

    async def worker(w: int) -> None:
        nonlocal placed, no_host
        stub = stubs[w % len(stubs)]
        while True:
            size = sum(1 for _ in zip(range(batch), counter, strict=False))
            if size == 0:
                return
            t = time.perf_counter()
            if batch == 1:
                answers = [await stub.SelectDestinations(request(), timeout=30)]
            else:
                resp = await stub.SelectDestinationsBatch(
                    scheduler_pb2.SelectDestinationsBatchRequest(
                        requests=[request() for _ in range(size)]
                    ),
                    timeout=30,
                )
                answers = [r.response for r in resp.results]
            latencies.append((time.perf_counter() - t) * 1000)
            for answer in answers:
                if answer.WhichOneof("outcome") == "placement":
                    placed += 1
                else:
                    no_host += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - t0
    for c in channels:
        await c.close()
    return {
        "decisions": decisions,
        "batch": batch,
        "placed": placed,
        "no_valid_host": no_host,
        "decisions_per_s": decisions / wall,
        "latency_ms_p50": percentile(latencies, 50),
        "latency_ms_p99": percentile(latencies, 99),
        "wall_s": wall,
    }


def _cpu_s(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of the scheduler processes, PostgreSQL and this process."""
    schedulers = [
        read_process(name, svc.process.pid)
        for name, svc in stack.services.items()
        if svc.process is not None
    ]
    own = os.times()
    return {
        "scheduler": sum(r.cpu_s for r in schedulers if r is not None),
        "postgres": postgres_cpu_s(),
        "client": own.user + own.system,
    }


def run_scheduler_bench(
    hosts: int, replicas: int, decisions: int, concurrency: int = 32, batch: int = 1
) -> dict[str, Any]:
    postgres.ensure_postgres_running()
    db_name = postgres.create_database(prefix="loom_schedbench")
    data_dir = Path(tempfile.mkdtemp(prefix="loom-schedbench-"))
    nats = start_nats_server(data_dir / "nats")
    stack = Stack(db_url=postgres.url_for(db_name), nats_url=nats.url, data_dir=data_dir)
    try:
        migrate.upgrade(stack.db_url)
        targets = []
        for r in range(replicas):
            port = stack.scheduler_port if r == 0 else free_port()
            stack.extra_env["LOOM_SCHEDULER__LISTEN"] = f"127.0.0.1:{port}"
            stack.start(f"scheduler#{r}", timeout=120)
            targets.append(f"127.0.0.1:{port}")
        asyncio.run(_create_hosts(targets[0], nats.url, hosts))
        asyncio.run(_wait_up(targets, hosts))
        cpu_before = _cpu_s(stack)
        # The load generator shares the machine's two cores with what it measures; uvloop
        # keeps its own share of the CPU small (it plays 32 conductors).
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(_decide(targets, decisions, concurrency, batch))
        cpu_after = _cpu_s(stack)
        # CPU per decision, by process group: steadier than decisions/s on a shared machine.
        for part in ("scheduler", "postgres", "client"):
            spent = cpu_after[part] - cpu_before[part]
            result[f"{part}_cpu_ms_per_decision"] = 1000 * spent / decisions
        with psycopg.connect(stack.db_url) as conn:
            over = conn.execute(OVERCOMMITTED_HOSTS_SQL).fetchone()
            mismatch = conn.execute(USAGE_MISMATCH_SQL).fetchone()
            allocs = conn.execute("SELECT count(*) FROM allocations").fetchone()
        readings = [
            read_process(name, svc.process.pid)
            for name, svc in stack.services.items()
            if svc.process is not None
        ]
        result.update(
            {
                "hosts": hosts,
                "replicas": replicas,
                "overcommitted_hosts": over[0] if over else -1,
                "usage_mismatches": mismatch[0] if mismatch else -1,
                "allocations": allocs[0] if allocs else -1,
                "scheduler_peak_rss_mib": max(
                    (r.peak_rss_mib for r in readings if r is not None), default=float("nan")
                ),
            }
        )
        return result
    finally:
        stack.stop_all()
        nats.stop()
        postgres.drop_database(db_name)
        shutil.rmtree(data_dir, ignore_errors=True)
