"""Never lost, never doubled: crashes of an agent, the conductor and NATS, and failing builds."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from loom.compute.v1 import agent_bus_pb2, compute_pb2, compute_pb2_grpc
from loom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

from controlplane.config import AgentConfig
from tests.e2e.support import Client, Status, db_scalar, eventually, settle, start_boot_path
from tests.support import polling
from tests.support.nats import RestartableNats
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

SPAWNING_SQL = "SELECT count(*) FROM instances WHERE task_state = 'spawning'"


async def _create_many(client: Client, n: int, prefix: str) -> set[str]:
    ids = await asyncio.gather(*(client.create(f"{prefix}-{i}") for i in range(n)))
    return {sid for (sid,) in ids}


async def _running_on_hosts(stack: Stack) -> dict[str, int]:
    """instance id → power state, as the agents' libvirt connections report them."""
    async with grpc.aio.insecure_channel(stack.scheduler_target) as channel:
        hosts = await scheduler_pb2_grpc.SchedulerServiceStub(channel).ListHosts(
            scheduler_pb2.ListHostsRequest(), timeout=10
        )
    found: dict[str, int] = {}
    for h in hosts.hosts:
        async with grpc.aio.insecure_channel(h.compute_endpoint) as channel:
            resp = await compute_pb2_grpc.ComputeServiceStub(channel).ListHostInstances(
                compute_pb2.ListHostInstancesRequest(host=h.name), timeout=10
            )
        found.update({i.instance_id: i.power_state for i in resp.instances})
    return found


async def test_an_agent_killed_mid_build_finishes_every_build_it_held_after_restart(
    stack: Stack, client: Client
) -> None:
    await start_boot_path(stack, client, 4, "crash")

    ids = await _create_many(client, 80, "agentcrash")

    async def builds_under_way() -> bool:
        return db_scalar(stack.db_url, SPAWNING_SQL) > 0

    # Killed while it holds builds: some are placed and sent to it, not all done.
    await eventually(builds_under_way, polling.boot_s(), "builds under way")
    stack.kill("agent")
    stack.start("agent", "--simulate", "4", "--host-prefix", "crash")

    servers = await settle(client, ids, within=120)
    assert {s.status for s in servers.values()} == {Status.SERVER_STATUS_ACTIVE}
    on_hosts = await _running_on_hosts(stack)
    assert {i for i in ids if on_hosts.get(i) == agent_bus_pb2.POWER_STATE_RUNNING} == ids


async def test_a_conductor_killed_after_commit_and_before_publish_loses_no_build(
    stack: Stack, client: Client, nats: RestartableNats
) -> None:
    await start_boot_path(stack, client, 3, "outbox")

    # With NATS down the creates commit (instance + outbox row) but nothing can be
    # published; then the conductor dies before it ever could.
    nats.kill()
    ids = await _create_many(client, 20, "outbox")
    assert db_scalar(stack.db_url, "SELECT count(*) FROM outbox") >= 20
    stack.kill("conductor")
    nats.restart()
    stack.start("conductor")

    # Agents replace the pull requests lost with the old server as soon as they reconnect
    # (theirs last 30 s), so the wave settles in seconds (it took about 20 s when they
    # waited out a 20 s pull).
    servers = await settle(client, ids, within=AgentConfig().command_pull_expiry)
    assert {s.status for s in servers.values()} == {Status.SERVER_STATUS_ACTIVE}
    assert db_scalar(stack.db_url, "SELECT count(*) FROM outbox") == 0
    assert db_scalar(stack.db_url, "SELECT count(*) FROM allocations") == 20


async def test_a_nats_restart_in_the_middle_of_a_boot_wave_loses_no_command(
    stack: Stack, client: Client, nats: RestartableNats
) -> None:
    await start_boot_path(stack, client, 4, "natsdown")

    first = await _create_many(client, 60, "wave1")
    nats.kill()
    second = await _create_many(client, 20, "wave2")
    # Part of the scenario: NATS stays down a moment while the relay and agents retry.
    await asyncio.sleep(1.0)
    nats.restart()

    # Recovery is prompt: agents replace the pull requests lost with the server as soon as
    # they reconnect, and the relay gives back a batch stranded on the dropped connection at
    # once (this took about 20 s before).
    servers = await settle(client, first | second, within=AgentConfig().command_pull_expiry)
    assert {s.status for s in servers.values()} == {Status.SERVER_STATUS_ACTIVE}
    assert db_scalar(stack.db_url, "SELECT count(*) FROM allocations") == 80
    on_hosts = await _running_on_hosts(stack)
    assert (first | second) <= set(on_hosts)


def _break_host(stack: Stack, host: str) -> None:
    """A regular file where the host's instance folders go: every build there fails for
    real (the driver cannot create the instance folder), as a broken disk would."""
    path = stack.data_dir / "agent" / "instances" / host
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a folder")


async def test_a_build_that_fails_on_every_host_is_rescheduled_then_ends_in_error(
    stack: Stack, client: Client
) -> None:
    for i in range(3):
        _break_host(stack, f"broken-{i:04d}")
    await start_boot_path(stack, client, 3, "broken", unlimited=False)

    (sid,) = await client.create("doomed")
    servers = await settle(client, {sid}, within=60)
    server = servers[sid]
    assert server.status == Status.SERVER_STATUS_ERROR
    assert server.attempts == 3
    assert server.fault.code == 500
    assert server.fault.message
    assert db_scalar(stack.db_url, "SELECT count(*) FROM allocations") == 0
    assert (
        db_scalar(stack.db_url, "SELECT coalesce(sum(vcpu_used), 0) FROM resource_providers") == 0
    )


async def test_a_build_that_fails_on_two_hosts_lands_on_the_third(
    stack: Stack, client: Client
) -> None:
    _break_host(stack, "mixed-0000")
    _break_host(stack, "mixed-0001")
    await start_boot_path(stack, client, 3, "mixed")

    ids = await _create_many(client, 6, "mixed")
    servers = await settle(client, ids, within=60)
    assert {s.status for s in servers.values()} == {Status.SERVER_STATUS_ACTIVE}
    assert {s.host for s in servers.values()} == {"mixed-0002"}
    assert db_scalar(stack.db_url, "SELECT count(*) FROM allocations") == 6
