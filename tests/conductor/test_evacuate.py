"""Evacuation on the whole path: a server of a down host rebuilt on another host. Real
PostgreSQL, Loom's real scheduler, real NATS and real node agents on libvirt's test:///
driver, one per host; the source agent stops taking commands (the host is down) and the
scheduler holds its host forced down."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from loom.conductor.v1 import fleet_pb2, migrations_pb2, servers_pb2
from loom.conductor.v1.fleet_pb2_grpc import FleetServiceStub

from controlplane.config import AgentConfig
from controlplane.db.models import ServerGroup
from controlplane.runtime.natsserver import NatsServerProcess
from nodeagent.agent import HostAgent
from nodeagent.driver.base import InstanceNotFound, PowerState
from nodeagent.fleet import ExpectedInstance
from nodeagent.messages import power_from_pb
from tests.conductor.conftest import eventually
from tests.conductor.factories import add
from tests.conductor.test_create import PROJECT, USER, create_request
from tests.conductor.test_moves import (
    MOVE_S,
    Fleet,
    assert_usage_is_the_sum_of_allocations,
    boot,
    claims,
    fleet,
    server,
    wait_status,
)
from tests.nodeagent.support import make_test_driver

S = servers_pb2.ServerStatus
GROUP = "77777777-7777-7777-7777-777777777777"


@pytest.fixture
async def two_hosts(
    pg_url: str, fresh_nats: NatsServerProcess, tmp_path: Path
) -> AsyncIterator[Fleet]:
    async with fleet(pg_url, fresh_nats, tmp_path) as f:
        yield f


@pytest.fixture
async def three_hosts(
    pg_url: str, fresh_nats: NatsServerProcess, tmp_path: Path
) -> AsyncIterator[Fleet]:
    async with fleet(
        pg_url,
        fresh_nats,
        tmp_path,
        agents=("h1", "h2", "h3"),
        hosts={"h1": {}, "h2": {}, "h3": {}},
    ) as f:
        yield f


async def host_goes_down(f: Fleet, host: str) -> None:
    """The host's agent takes no more commands (they wait in JetStream) and the scheduler
    holds the host down (an operator's forced_down)."""
    await f.agents[host].stop_consuming()
    await f.h.conductor.scheduler.set_host_forced_down(f"req-down-{host}", host, True)


async def evacuate(
    f: Fleet, sid: str, *, host: str = "", force: bool = False, stopped: bool = False
) -> migrations_pb2.Migration:
    resp = await f.migrations.EvacuateServer(
        migrations_pb2.EvacuateServerRequest(
            request_id=f"req-{uuid.uuid4()}",
            id=sid,
            user_id=USER,
            host=host,
            force=force,
            stop_at_destination=stopped,
        )
    )
    return resp.migration


async def migration_of(f: Fleet, mig: migrations_pb2.Migration) -> migrations_pb2.Migration:
    resp = await f.migrations.GetMigration(migrations_pb2.GetMigrationRequest(id=mig.id))
    return resp.migration


async def wait_migration(f: Fleet, mig: migrations_pb2.Migration, status: str) -> None:
    async def probe() -> bool:
        return (await migration_of(f, mig)).status == status

    await eventually(probe, MOVE_S, f"migration {status}")


class StubFleetView:
    """The agent's view of its host, read through the test's FleetService stub."""

    def __init__(self, stub: FleetServiceStub) -> None:
        self._stub = stub

    async def expected_instances(self, host: str) -> list[ExpectedInstance]:
        resp = await self._stub.ListHostInstances(fleet_pb2.ListHostInstancesRequest(host=host))
        return [
            ExpectedInstance(
                spec=i.spec,
                vm_state=i.vm_state,
                task_state=i.task_state,
                power_state=power_from_pb(i.power_state),
            )
            for i in resp.instances
        ]


async def host_returns(f: Fleet, host: str, tmp_path: Path) -> HostAgent:
    """The host is up again: a new agent (over the same simulated hypervisor state, which
    the old agent's open connection kept) reconciles against the control plane and takes
    the commands that waited for it."""
    await f.h.conductor.scheduler.set_host_forced_down(f"req-up-{host}", host, False)
    assert f.h.nc is not None
    agent = HostAgent(
        host=host,
        driver=make_test_driver(tmp_path, host),
        nc=f.h.nc,
        cfg=AgentConfig(heartbeat_interval=3600.0, power_sync_interval=3600.0, shutdown_timeout=1),
        compute_endpoint="127.0.0.1:1",
        host_ip="127.0.0.1",
        fleet=StubFleetView(f.h.fleet),
    )
    await agent.start()
    old = f.agents[host]
    f.agents[host] = agent
    await old.stop()
    return agent


async def group_members(f: Fleet) -> tuple[servers_pb2.Server, servers_pb2.Server]:
    """Two members of one anti-affinity group: a on h1, b on h2."""
    await add(
        f.h.sessions,
        ServerGroup(
            id=GROUP,
            name="g",
            project_id=PROJECT,
            user_id=USER,
            policy="anti-affinity",
            rules={},
            created_at=datetime.now(UTC),
        ),
    )
    members = []
    for name, host in (("a", "h1"), ("b", "h2")):
        resp = await f.h.servers.CreateServers(
            create_request(
                request_id=f"req-{name}", name=name, force_host=host, server_group_id=GROUP
            )
        )
        members.append(await wait_status(f, resp.servers[0].id, S.SERVER_STATUS_ACTIVE))
    return members[0], members[1]


async def test_a_server_of_a_forced_down_host_is_rebuilt_active_on_another_host(
    two_hosts: Fleet,
) -> None:
    f = two_hosts
    s = await boot(f)
    await host_goes_down(f, "h1")

    mig = await evacuate(f, s.id)
    assert (mig.migration_type, mig.source_compute, mig.dest_compute) == (
        "evacuation",
        "h1",
        "h2",
    )
    moved = await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
    assert moved.host == "h2"
    assert f.driver("h2").describe(s.id) == PowerState.RUNNING
    # The destination is the instance's; the down source's allocation is the migration's
    # until that host returns and drops its copy.
    assert await claims(f) == {s.id: "h2", mig.uuid: "h1"}
    await assert_usage_is_the_sum_of_allocations(f)
    assert (await migration_of(f, mig)).status == "done"
    actions = await f.h.servers.ListInstanceActions(servers_pb2.ListInstanceActionsRequest(id=s.id))
    assert actions.actions[0].action == "evacuate"
    # The down source no longer lists the server: a reconcile there destroys its copy.
    listed = await f.h.fleet.ListHostInstances(fleet_pb2.ListHostInstancesRequest(host="h1"))
    assert list(listed.instances) == []


async def test_the_source_host_returning_destroys_its_copy_and_keeps_its_other_servers(
    two_hosts: Fleet, tmp_path: Path
) -> None:
    f = two_hosts
    s = await boot(f)
    other = await boot(f, "other")
    await host_goes_down(f, "h1")
    mig = await evacuate(f, s.id, host="h2")
    await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
    # Only the evacuated server moved; the other stays recorded on the down host.
    assert (await server(f, other.id)).host == "h1"

    agent = await host_returns(f, "h1", tmp_path)
    await wait_migration(f, mig, "completed")
    await eventually(lambda: _reconciled(agent), MOVE_S, "reconciled")

    with pytest.raises(InstanceNotFound):
        agent.driver.describe(s.id)
    assert agent.driver.describe(other.id) == PowerState.RUNNING
    assert f.driver("h2").describe(s.id) == PowerState.RUNNING
    assert await claims(f) == {s.id: "h2", other.id: "h1"}
    await assert_usage_is_the_sum_of_allocations(f)
    assert (await server(f, other.id)).status == S.SERVER_STATUS_ACTIVE


async def _reconciled(agent: HostAgent) -> bool:
    return agent.reconciled.is_set()


async def test_evacuating_a_server_whose_host_is_up_is_refused_and_changes_nothing(
    two_hosts: Fleet,
) -> None:
    f = two_hosts
    s = await boot(f)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await evacuate(f, s.id)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "Compute service of h1 is still in use."
    after = await server(f, s.id)
    assert (after.status, after.host, after.task_state) == (S.SERVER_STATUS_ACTIVE, "h1", 0)
    assert await claims(f) == {s.id: "h1"}
    listed = await f.migrations.ListMigrations(
        migrations_pb2.ListMigrationsRequest(instance_uuid=s.id)
    )
    assert list(listed.migrations) == []


@pytest.mark.parametrize(
    ("host", "code", "words"),
    [
        ("h1", grpc.StatusCode.INVALID_ARGUMENT, "The target host can't be the same one."),
        ("nowhere", grpc.StatusCode.NOT_FOUND, "Compute host nowhere not found."),
    ],
)
async def test_evacuating_to_the_source_or_an_unknown_host_is_refused(
    two_hosts: Fleet, host: str, code: grpc.StatusCode, words: str
) -> None:
    f = two_hosts
    s = await boot(f)
    await host_goes_down(f, "h1")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await evacuate(f, s.id, host=host)
    assert (info.value.code(), info.value.details()) == (code, words)
    assert await claims(f) == {s.id: "h1"}


async def test_no_other_host_fitting_puts_the_server_in_error_with_a_fault_where_it_was(
    two_hosts: Fleet,
) -> None:
    f = two_hosts
    s = await boot(f)
    await host_goes_down(f, "h1")
    await f.h.scheduler.set_enabled("h2", False)

    mig = await evacuate(f, s.id)

    assert mig.status == "error"
    after = await server(f, s.id)
    assert (after.status, after.host, after.task_state) == (S.SERVER_STATUS_ERROR, "h1", 0)
    assert after.fault.message.startswith("No valid host was found.")
    assert after.fault.code == 500
    # The source allocation is the instance's again; nothing else is held.
    assert await claims(f) == {s.id: "h1"}
    await assert_usage_is_the_sum_of_allocations(f)
    assert (await migration_of(f, mig)).status == "error"


@pytest.mark.parametrize(
    ("stop_first", "at_2_95", "status", "power"),
    [
        (True, False, S.SERVER_STATUS_SHUTOFF, PowerState.SHUTDOWN),
        (False, False, S.SERVER_STATUS_ACTIVE, PowerState.RUNNING),
        (False, True, S.SERVER_STATUS_SHUTOFF, PowerState.SHUTDOWN),
        (True, True, S.SERVER_STATUS_SHUTOFF, PowerState.SHUTDOWN),
    ],
    ids=[
        "stopped-keeps-its-state-before-2.95",
        "active-keeps-its-state-before-2.95",
        "active-ends-stopped-from-2.95",
        "stopped-ends-stopped-from-2.95",
    ],
)
async def test_an_evacuated_server_rests_as_the_microversion_says(
    two_hosts: Fleet, stop_first: bool, at_2_95: bool, status: int, power: PowerState
) -> None:
    f = two_hosts
    s = await boot(f)
    if stop_first:
        await f.h.servers.StopServer(servers_pb2.StopServerRequest(request_id="req-stop", id=s.id))
        await wait_status(f, s.id, S.SERVER_STATUS_SHUTOFF)
    await host_goes_down(f, "h1")

    await evacuate(f, s.id, stopped=at_2_95)

    moved = await wait_status(f, s.id, status)
    assert moved.host == "h2"
    assert f.driver("h2").describe(s.id) == power


async def test_an_anti_affinity_member_is_not_evacuated_onto_a_host_holding_another_member(
    three_hosts: Fleet,
) -> None:
    f = three_hosts
    a, b = await group_members(f)
    await host_goes_down(f, "h1")
    await f.h.scheduler.set_enabled("h3", False)

    # h2 has room but holds the other member: no valid host.
    first = await evacuate(f, a.id)
    assert first.status == "error"
    assert (await server(f, a.id)).status == S.SERVER_STATUS_ERROR

    # With h3 back in service the member (in ERROR, which may be evacuated) goes there.
    await f.h.scheduler.set_enabled("h3", True)
    second = await evacuate(f, a.id)
    assert second.dest_compute == "h3"
    moved = await wait_status(f, a.id, S.SERVER_STATUS_ACTIVE)
    assert moved.host == "h3"
    assert await claims(f) == {a.id: "h3", b.id: "h2", second.uuid: "h1"}
    await assert_usage_is_the_sum_of_allocations(f)


async def test_a_forced_destination_skips_the_filters_that_a_requested_one_must_pass(
    three_hosts: Fleet,
) -> None:
    f = three_hosts
    a, b = await group_members(f)
    await host_goes_down(f, "h1")

    # Requested, h2 is checked by the anti-affinity filter: it holds the other member.
    requested = await evacuate(f, a.id, host="h2")
    assert requested.status == "error"
    assert (await server(f, a.id)).status == S.SERVER_STATUS_ERROR

    # Forced (2.29 to 2.67), only h2's capacity is claimed.
    forced = await evacuate(f, a.id, host="h2", force=True)
    assert forced.dest_compute == "h2"
    moved = await wait_status(f, a.id, S.SERVER_STATUS_ACTIVE)
    assert moved.host == "h2"
    assert await claims(f) == {a.id: "h2", b.id: "h2", forced.uuid: "h1"}
    await assert_usage_is_the_sum_of_allocations(f)


async def test_an_evacuated_servers_ports_are_bound_to_its_new_host(two_hosts: Fleet) -> None:
    """Its port follows it (binding:host_id), so security changes and DHCP reach the host
    that runs it, and the build there carries the network's DHCP service."""
    from tests.conductor.test_server_ports import network_with_subnet, on_network, ports_of

    f = two_hosts
    net = await network_with_subnet(f.h)
    resp = await f.h.servers.CreateServers(
        on_network(net, request_id="req-net", name="net", force_host="h1")
    )
    s = await wait_status(f, resp.servers[0].id, S.SERVER_STATUS_ACTIVE)
    (before,) = await ports_of(f.h, s.id)
    assert before.binding_host_id == "h1"
    await host_goes_down(f, "h1")

    await evacuate(f, s.id)
    moved = await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
    assert moved.host == "h2"
    (after,) = await ports_of(f.h, s.id)
    assert (after.id, after.binding_host_id) == (before.id, "h2")
    assert [a.address for a in moved.addresses] == [before.fixed_ips[0].ip_address]
