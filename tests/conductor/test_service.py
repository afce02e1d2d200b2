"""`serve()`: the conductor process comes up, serves gRPC with health, boots a server end to
end against the scheduler peer, and stops cleanly."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import servers_pb2, servers_pb2_grpc
from sqlalchemy import func, select

from controlplane.conductor.service import serve
from controlplane.config import LoomConfig
from controlplane.db.engine import count_statements, make_engine, session_factory
from controlplane.db.models import Instance
from controlplane.runtime import bus
from controlplane.runtime.natsserver import NatsServerProcess, free_port
from tests.conductor.conftest import IMAGE_ID, Agent, eventually, harness, running_workers
from tests.conductor.factories import add, make_flavor, make_image
from tests.conductor.scheduler_peer import SchedulerPeer, start_scheduler_peer
from tests.conductor.test_create import create_request


async def test_serve_runs_the_whole_conductor_until_stopped(
    pg_url: str, fresh_nats: NatsServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    peer = SchedulerPeer()
    peer.add_host("svc-host")
    sched = await start_scheduler_peer(peer)
    engine = make_engine(pg_url)
    await add(session_factory(engine), make_flavor("1"), make_image(IMAGE_ID))
    port = free_port()
    cfg = LoomConfig.model_validate(
        {
            "database": {"url": pg_url},
            "nats": {"url": fresh_nats.url, "duplicate_window_s": 120},
            "conductor": {"listen": f"127.0.0.1:{port}"},
            "scheduler": {"listen": f"127.0.0.1:{sched.port}"},
        }
    )
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="controlplane.conductor.service")
    task = asyncio.create_task(serve(cfg, stop))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    nc = await bus.connect(fresh_nats.url, cfg.nats, "test-agent")
    try:

        async def ready() -> bool:
            return any(r.getMessage() == "ready" for r in caplog.records)

        assert await eventually(ready)
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="loom.conductor.v1.ServersService")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING

        servers = servers_pb2_grpc.ServersServiceStub(channel)
        resp = await servers.CreateServers(create_request())
        sid = resp.servers[0].id
        agent = Agent(nc.jetstream(), "svc-host")
        cmd = await agent.build_command()
        await agent.report(
            sid, agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED, attempt=cmd.attempt
        )

        async def active() -> bool:
            got = await servers.GetServer(servers_pb2.GetServerRequest(id=sid))
            return got.server.status == servers_pb2.SERVER_STATUS_ACTIVE

        assert await eventually(active)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await channel.close()
        await nc.close()
        await sched.stop(0)
        await engine.dispose()
    assert task.exception() is None


async def test_a_boot_costs_few_sql_statements_in_total(
    pg_url: str, fresh_nats: NatsServerProcess
) -> None:
    """Counts every statement from CreateServers to ACTIVE: create, relay, scheduling,
    build event."""
    # The relay polls rarely: its idle polls would count among the boots' statements.
    async with harness(pg_url) as h, running_workers(h, fresh_nats.url, relay_poll_s=5):
        assert h.js is not None
        js = h.js
        h.peer.add_host("count-host")
        await asyncio.sleep(0.3)  # workers subscribed and idle
        counter = count_statements(h.engine)
        n = 10
        for i in range(n):  # one request per server, as a benchmark's clients send them
            await h.servers.CreateServers(create_request(request_id=f"boot-{i}"))
        agent = Agent(js, "count-host")
        for _ in range(n):
            cmd = await agent.build_command()
            await agent.report(
                cmd.spec.instance_id,
                agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED,
                attempt=cmd.attempt,
            )

        # Probed through an engine of its own, so the probes are not counted.
        probe_engine = make_engine(pg_url)
        probe = session_factory(probe_engine)

        async def all_active() -> bool:
            async with probe() as s:
                active = await s.execute(
                    select(func.count(Instance.id)).where(Instance.vm_state == "active")
                )
                return active.scalar_one() == n

        try:
            assert await eventually(all_active)
        finally:
            await probe_engine.dispose()
        per_boot = counter.count / n
        print(f"SQL statements per boot: {per_boot:.1f}")
        # About 7 (controlplane/conductor/README.md); 8 when no two boots share a batch.
        assert per_boot <= 9


async def test_several_scheduling_lanes_place_every_instance_exactly_once(
    pg_url: str, fresh_nats: NatsServerProcess
) -> None:
    async with (
        harness(pg_url) as h,
        running_workers(h, fresh_nats.url, lanes=3, events=False),
    ):
        assert h.js is not None
        js = h.js
        h.peer.add_host("lanes-host")
        n = 10  # the project's default instance quota
        created = await asyncio.gather(
            *(h.servers.CreateServers(create_request(request_id=f"lane-{i}")) for i in range(n))
        )
        ids = {r.servers[0].id for r in created}
        agent = Agent(js, "lanes-host")
        built = [(await agent.build_command()).spec.instance_id for _ in range(n)]
        assert sorted(built) == sorted(ids)  # each once, none missing
        with pytest.raises(TimeoutError):  # and no second build for any of them
            await agent.next_command(within=1.0)
        assert set(h.peer.claims) == ids
        probe_engine = make_engine(pg_url)
        try:
            async with session_factory(probe_engine)() as s:
                spawning = await s.execute(
                    select(func.count(Instance.id)).where(
                        Instance.task_state == "spawning", Instance.attempts == 1
                    )
                )
                assert spawning.scalar_one() == n
        finally:
            await probe_engine.dispose()
