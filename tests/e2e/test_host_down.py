"""Hosts that go down: servers there can still be deleted, and builds stranded there settle.

Services are separate processes; the conductor and scheduler call a host down after a short
service_down_time (3 s) without heartbeats (agents beat every second here).
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from loom.compute.v1 import compute_pb2, compute_pb2_grpc
from loom.conductor.v1 import fleet_pb2, fleet_pb2_grpc
from loom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from nats.aio.client import Client as NATS

from controlplane.config import NatsConfig
from controlplane.runtime import bus
from tests.e2e.support import (
    USAGE_MISMATCH_SQL,
    Client,
    Status,
    db_scalar,
    eventually,
    settle,
    wait_for_hosts,
)
from tests.support.nats import RestartableNats
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

DOWN_AFTER_S = 3


def _short_service_down_time(stack: Stack) -> None:
    stack.extra_env["LOOM_CONDUCTOR__SERVICE_DOWN_TIME"] = str(DOWN_AFTER_S)
    stack.extra_env["LOOM_SCHEDULER__SERVICE_DOWN_TIME"] = str(DOWN_AFTER_S)


async def _compute_service_up(stack: Stack, host: str) -> bool | None:
    async with grpc.aio.insecure_channel(stack.conductor_target) as channel:
        resp = await fleet_pb2_grpc.FleetServiceStub(channel).ListServices(
            fleet_pb2.ListServicesRequest(host=host, binary="loom-compute"), timeout=10
        )
    return resp.services[0].up if resp.services else None


async def _domains_on(stack: Stack, host: str) -> set[str] | None:
    """The host's domains as its agent's ComputeService lists them; None when unreachable."""
    async with grpc.aio.insecure_channel(stack.scheduler_target) as channel:
        found = await scheduler_pb2_grpc.SchedulerServiceStub(channel).GetHost(
            scheduler_pb2.GetHostRequest(name=host), timeout=10
        )
    try:
        async with grpc.aio.insecure_channel(found.host.compute_endpoint) as channel:
            resp = await compute_pb2_grpc.ComputeServiceStub(channel).ListHostInstances(
                compute_pb2.ListHostInstancesRequest(host=host), timeout=5
            )
    except grpc.aio.AioRpcError:
        return None
    return {i.instance_id for i in resp.instances}


async def _commands_waiting(nats: RestartableNats, host: str) -> int:
    cfg = NatsConfig()
    nc: NATS = await bus.connect(nats.url, cfg, f"test-{uuid.uuid4().hex[:6]}")
    try:
        info = await nc.jetstream().consumer_info(bus.COMPUTE_STREAM, f"agent-{host}")
        return int(info.num_pending + info.num_ack_pending)
    finally:
        await nc.close()


async def test_a_server_on_a_host_that_is_down_is_deleted_at_once_and_its_domain_goes_later(
    stack: Stack, client: Client, nats: RestartableNats
) -> None:
    _short_service_down_time(stack)
    stack.start("scheduler")
    stack.start("conductor")
    agent = ("agent", "--simulate", "1", "--host-prefix", "lost")
    stack.start(*agent)
    await wait_for_hosts(stack, 1)
    host = "lost-0000"
    (sid,) = await client.create("on-a-lost-host")
    assert (await settle(client, {sid}, within=30))[sid].status == Status.SERVER_STATUS_ACTIVE

    stack.stop("agent")

    async def down() -> bool:
        return await _compute_service_up(stack, host) is False

    await eventually(down, 30, f"{host} down")
    await client.delete(sid)

    # Deleted at once, with the host still down: the claim is gone and usage is back to 0.
    gone = await client.all_servers(include_deleted=True)
    (server,) = [s for s in gone if s.id == sid]
    assert server.status == Status.SERVER_STATUS_DELETED
    assert db_scalar(stack.db_url, "SELECT count(*) FROM allocations") == 0
    assert db_scalar(stack.db_url, USAGE_MISMATCH_SQL) == 0
    assert (
        db_scalar(stack.db_url, "SELECT coalesce(sum(vcpu_used), 0) FROM resource_providers") == 0
    )
    # The delete command waits on the host's subject for its agent.
    assert await _commands_waiting(nats, host) == 1

    stack.start(*agent)

    async def domain_gone() -> bool:
        domains = await _domains_on(stack, host)
        return domains is not None and sid not in domains

    await eventually(domain_gone, 30, f"the domain of {sid} gone from {host}")

    async def command_taken() -> bool:
        return await _commands_waiting(nats, host) == 0

    await eventually(command_taken, 30, f"the delete command taken by {host}'s agent")
    assert db_scalar(stack.db_url, "SELECT count(*) FROM allocations") == 0
    assert db_scalar(stack.db_url, "SELECT count(*) FROM outbox") == 0


async def test_builds_stranded_on_a_host_that_died_mid_wave_all_settle_elsewhere_or_in_error(
    stack: Stack, client: Client
) -> None:
    _short_service_down_time(stack)
    stack.start("scheduler")
    stack.start("conductor")
    stack.start("agent#survivor", "--simulate", "1", "--host-prefix", "survivor")
    stack.start("agent#doomed", "--simulate", "1", "--host-prefix", "doomed")
    await wait_for_hosts(stack, 2)
    await client.unlimited_quota()

    ids = {sid for (sid,) in await asyncio.gather(*(client.create(f"wave-{i}") for i in range(40)))}
    stack.kill("agent#doomed")  # for good: it never comes back

    servers = await settle(client, ids, within=60)
    dead = "doomed-0000"
    on_dead = [s for s in servers.values() if s.host == dead]
    # What had finished there before the kill stays ACTIVE (its host is down, not its
    # guest); everything else is ACTIVE on the survivor or in ERROR naming the dead host.
    assert all(s.status == Status.SERVER_STATUS_ACTIVE for s in on_dead)
    for s in servers.values():
        if s.host != dead:
            assert s.status in {Status.SERVER_STATUS_ACTIVE, Status.SERVER_STATUS_ERROR}
            if s.status == Status.SERVER_STATUS_ACTIVE:
                assert s.host == "survivor-0000"
            else:
                assert dead in s.fault.message
    # Builds in hand on the dead host were retried on the survivor.
    assert any(s.attempts >= 2 and s.host == "survivor-0000" for s in servers.values())
    assert db_scalar(stack.db_url, USAGE_MISMATCH_SQL) == 0
    live = sum(1 for s in servers.values() if s.status == Status.SERVER_STATUS_ACTIVE)
    assert db_scalar(stack.db_url, "SELECT count(*) FROM allocations") == live
