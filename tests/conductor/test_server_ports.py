"""Servers' ports: the conductor asks the network service it hosts (over gRPC) for a
server's ports once the scheduler chose the host, the build carries them with the DHCP
services of their networks, and they go with the server. The relay, the scheduling worker
and the event consumer really run; the agent is played on NATS."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import servers_pb2
from loom.network.v1 import network_pb2 as npb

from tests.conductor.conftest import Agent, Harness
from tests.conductor.factories import PROJECT
from tests.conductor.test_create import create_request
from tests.conductor.test_flow import active_server, server, wait_for

K = agent_bus_pb2.InstanceEventKind
S = servers_pb2.ServerStatus
TENANT = npb.Scope(project_id=PROJECT)
ADMIN = npb.Scope(project_id="admin", is_admin=True)


async def network_with_subnet(
    h: Harness, name: str = "n1", cidr: str = "10.9.0.0/24", pool: tuple[str, str] | None = None
) -> str:
    assert h.network is not None
    net = await h.network.CreateNetwork(
        npb.CreateNetworkRequest(
            request_id=uuid.uuid4().hex, scope=TENANT, network=npb.Network(name=name)
        )
    )
    subnet: dict[str, Any] = {"network_id": net.network.id, "cidr": cidr, "ip_version": 4}
    if pool:
        subnet["allocation_pools"] = [npb.AllocationPool(start=pool[0], end=pool[1])]
    await h.network.CreateSubnet(
        npb.CreateSubnetRequest(
            request_id=uuid.uuid4().hex, scope=TENANT, subnet=npb.Subnet(**subnet)
        )
    )
    return str(net.network.id)


def on_network(network_id: str, **kw: Any) -> servers_pb2.CreateServersRequest:
    return create_request(
        networks="",
        requested_networks=[npb.RequestedPort(network_id=network_id)],
        **kw,
    )


async def ports_of(h: Harness, device_id: str) -> list[npb.Port]:
    assert h.network is not None
    reply = await h.network.ListPorts(npb.ListPortsRequest(scope=ADMIN, device_id=device_id))
    return list(reply.ports)


async def placed_build(
    h: Harness, request: servers_pb2.CreateServersRequest
) -> tuple[str, Agent, agent_bus_pb2.BuildInstanceCommand]:
    assert h.js is not None
    sid = (await h.servers.CreateServers(request)).servers[0].id
    placed = await wait_for(h, sid, lambda s: s.task_state == servers_pb2.TASK_STATE_SPAWNING)
    agent = Agent(h.js, placed.host)
    return sid, agent, await agent.build_command()


async def test_a_server_with_no_network_asks_the_network_service_nothing(
    stack: Harness,
) -> None:
    assert stack.ports is not None
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    await stack.servers.DeleteServer(
        servers_pb2.DeleteServerRequest(request_id="del", id=sid, project_id=PROJECT, user_id="u")
    )
    verb, _ = await agent.next_command()
    assert verb == "delete"
    await agent.report(sid, K.INSTANCE_EVENT_KIND_DELETED)
    await wait_for(stack, sid, lambda s: s.vm_state == servers_pb2.VM_STATE_DELETED)
    assert stack.ports.calls == []


async def test_the_build_carries_the_servers_port_bound_to_its_host_and_the_dhcp_service(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    net = await network_with_subnet(stack)
    sid, agent, cmd = await placed_build(stack, on_network(net, request_id="req-net"))
    (binding,) = cmd.spec.ports
    (port,) = await ports_of(stack, sid)
    assert (port.binding_host_id, port.status, port.device_owner) == (
        "host-a",
        "ACTIVE",
        "compute:nova",
    )
    assert binding.port_id == port.id
    assert binding.mac_address == port.mac_address
    assert binding.segmentation_id > 0
    (fixed,) = binding.fixed_ips
    assert (fixed.prefixlen, fixed.gateway_ip) == (24, "10.9.0.1")
    assert fixed.ip_address == port.fixed_ips[0].ip_address
    # The default group: egress anywhere, ingress from its members (this server among them).
    assert binding.port_security_enabled
    remote = [r for r in binding.security_group_rules if r.remote_group_id]
    assert remote
    assert all(fixed.ip_address in r.remote_group_member_ips for r in remote)
    (dhcp,) = cmd.dhcp
    assert (dhcp.network_id, dhcp.vni) == (net, binding.segmentation_id)
    (served,) = dhcp.subnets
    assert served.dhcp_server_ip.startswith("10.9.0.")
    assert served.dhcp_server_ip != fixed.ip_address
    assert [(lease.mac_address, lease.ip_address) for lease in dhcp.leases] == [
        (port.mac_address, fixed.ip_address)
    ]
    shown = await server(stack, sid)
    assert [(a.network, a.address, a.mac_address, a.type) for a in shown.addresses] == [
        ("n1", fixed.ip_address, port.mac_address, "fixed")
    ]

    await agent.report(
        sid,
        K.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED,
        attempt=1,
        power_state=agent_bus_pb2.POWER_STATE_RUNNING,
    )
    await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_ACTIVE)
    await stack.servers.DeleteServer(
        servers_pb2.DeleteServerRequest(request_id="del", id=sid, project_id=PROJECT, user_id="u")
    )
    assert (await agent.next_command())[0] == "delete"
    await agent.report(sid, K.INSTANCE_EVENT_KIND_DELETED)
    await wait_for(stack, sid, lambda s: s.vm_state == servers_pb2.VM_STATE_DELETED)
    assert await ports_of(stack, sid) == []


async def test_a_fixed_ip_asked_for_is_the_one_the_port_gets(stack: Harness) -> None:
    await stack.scheduler.add_host("host-a")
    net = await network_with_subnet(stack)
    request = create_request(
        request_id="req-fixed",
        networks="",
        requested_networks=[npb.RequestedPort(network_id=net, fixed_ip="10.9.0.77")],
    )
    sid, _, cmd = await placed_build(stack, request)
    assert [f.ip_address for f in cmd.spec.ports[0].fixed_ips] == ["10.9.0.77"]
    assert [a.address for a in (await server(stack, sid)).addresses] == ["10.9.0.77"]


async def test_servers_created_together_never_share_an_address(stack: Harness) -> None:
    await stack.scheduler.add_host("host-a")
    net = await network_with_subnet(stack)
    resp = await stack.servers.CreateServers(
        on_network(net, request_id="req-many", min_count=6, max_count=6)
    )
    ids = [s.id for s in resp.servers]
    for sid in ids:
        await wait_for(stack, sid, lambda s: s.task_state == servers_pb2.TASK_STATE_SPAWNING)
    addresses = [p.fixed_ips[0].ip_address for sid in ids for p in await ports_of(stack, sid)]
    assert len(addresses) == 6
    assert len(set(addresses)) == 6


async def test_a_server_whose_port_cannot_be_made_ends_in_error_with_no_port_left(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    # Two addresses: the first server's port and the network's DHCP port take both.
    net = await network_with_subnet(stack, pool=("10.9.0.10", "10.9.0.11"))
    first, _, _ = await placed_build(stack, on_network(net, request_id="req-1st", name="a"))
    resp = await stack.servers.CreateServers(on_network(net, request_id="req-2nd", name="b"))
    sid = resp.servers[0].id
    failed = await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_ERROR)
    assert "No more IP addresses available" in failed.fault.message
    assert await ports_of(stack, sid) == []
    assert await stack.conductor.scheduler.allocations(sid) == []
    assert len(await ports_of(stack, first)) == 1
    # An ERROR server that never got a host is deleted at once, nothing left behind.
    await stack.servers.DeleteServer(
        servers_pb2.DeleteServerRequest(request_id="del", id=sid, project_id=PROJECT, user_id="u")
    )
    assert await ports_of(stack, sid) == []


async def test_a_port_the_user_handed_in_is_kept_unbound_when_its_server_goes(
    stack: Harness,
) -> None:
    assert stack.network is not None
    await stack.scheduler.add_host("host-a")
    net = await network_with_subnet(stack)
    own = await stack.network.CreatePort(
        npb.CreatePortRequest(request_id="p1", scope=TENANT, port=npb.Port(network_id=net))
    )
    request = create_request(
        request_id="req-port",
        networks="",
        requested_networks=[npb.RequestedPort(port_id=own.port.id)],
    )
    sid, agent, cmd = await placed_build(stack, request)
    assert [p.port_id for p in cmd.spec.ports] == [own.port.id]
    await agent.report(
        sid,
        K.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED,
        attempt=1,
        power_state=agent_bus_pb2.POWER_STATE_RUNNING,
    )
    await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_ACTIVE)
    await stack.servers.DeleteServer(
        servers_pb2.DeleteServerRequest(request_id="del", id=sid, project_id=PROJECT, user_id="u")
    )
    assert (await agent.next_command())[0] == "delete"
    await agent.report(sid, K.INSTANCE_EVENT_KIND_DELETED)
    await wait_for(stack, sid, lambda s: s.vm_state == servers_pb2.VM_STATE_DELETED)
    kept = (await stack.network.GetPort(npb.GetPortRequest(scope=TENANT, id=own.port.id))).port
    assert (kept.device_id, kept.binding_host_id, kept.status) == ("", "", "DOWN")
    assert [f.ip_address for f in kept.fixed_ips] == [f.ip_address for f in own.port.fixed_ips]


async def test_binding_a_servers_ports_again_returns_the_same_ports(pg: Harness) -> None:
    """A redelivered schedule message (or a reschedule) asks again: nothing is doubled."""
    assert pg.ports is not None
    assert pg.ports.inner is not None
    net = await network_with_subnet(pg)
    from controlplane.network.client import RequestedNic

    device = str(uuid.uuid4())
    asked = dict(project_id=PROJECT, device_id=device, requested=[RequestedNic(network_id=net)])
    first = await pg.ports.inner.bind_server_ports(request_id="a", host="host-a", **asked)  # type: ignore[arg-type]
    again = await pg.ports.inner.bind_server_ports(request_id="b", host="host-b", **asked)  # type: ignore[arg-type]
    assert [p.id for p in again.ports] == [p.id for p in first.ports]
    assert [p.fixed_ips for p in again.ports] == [p.fixed_ips for p in first.ports]
    (port,) = await ports_of(pg, device)
    assert port.binding_host_id == "host-b"


async def test_concurrent_first_autos_make_the_project_one_network(pg: Harness) -> None:
    assert pg.network is not None
    assert pg.ports is not None
    assert pg.ports.inner is not None
    inner = pg.ports.inner
    got = await asyncio.gather(
        *(inner.auto_allocated_network(request_id=f"r{i}", project_id=PROJECT) for i in range(6))
    )
    assert len(set(got)) == 1
    listed = await pg.network.ListNetworks(npb.ListNetworksRequest(scope=TENANT))
    assert [n.name for n in listed.networks] == ["auto_allocated_network"]
    (subnet_id,) = listed.networks[0].subnet_ids
    subnet = (await pg.network.GetSubnet(npb.GetSubnetRequest(scope=TENANT, id=subnet_id))).subnet
    assert subnet.cidr == "10.128.0.0/24"
    assert await inner.auto_allocated_network(request_id="later", project_id=PROJECT) == got[0]


async def test_an_auto_network_keeps_clear_of_the_projects_other_subnets(pg: Harness) -> None:
    assert pg.network is not None
    assert pg.ports is not None
    assert pg.ports.inner is not None
    await network_with_subnet(pg, cidr="10.128.0.0/23")
    made = await pg.ports.inner.auto_allocated_network(request_id="r", project_id=PROJECT)
    got = await pg.network.GetNetwork(npb.GetNetworkRequest(scope=TENANT, id=made))
    (subnet_id,) = got.network.subnet_ids
    subnet = (await pg.network.GetSubnet(npb.GetSubnetRequest(scope=TENANT, id=subnet_id))).subnet
    assert subnet.cidr == "10.128.2.0/24"


async def test_the_conductor_refuses_an_unresolved_auto(pg: Harness) -> None:
    import grpc
    import pytest

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pg.servers.CreateServers(create_request(networks="auto"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
