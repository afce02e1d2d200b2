"""Router changes wait in the network domain until the compute service takes them to the
host that serves routers (network.l3_host): each take gives the changed routers' whole
bindings (gateway and interface legs, floating IPs) at a revision newer than any before,
and acknowledging them makes the floating IPs they serve, and the routers' own ports,
ACTIVE."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest
from loom.compute.v1 import agent_bus_pb2 as agent
from loom.network.v1 import network_pb2 as pb
from loom.network.v1 import network_pb2_grpc

from controlplane.config import load_config
from controlplane.db.outage import DatabaseOutage
from controlplane.network.service import NetworkDomain
from controlplane.runtime.grpcserver import start_grpc_server
from tests.network.conftest import L3_HOST, Net
from tests.network.test_port_security_feed import _bind


async def _external(net: Net, cidr: str = "198.51.100.0/24") -> tuple[str, str]:
    admin = net.scope(admin=True)
    ext = await net.stub.CreateNetwork(
        pb.CreateNetworkRequest(
            scope=admin, network=pb.Network(name="public", router_external=True)
        )
    )
    sub = await net.stub.CreateSubnet(
        pb.CreateSubnetRequest(
            scope=admin,
            subnet=pb.Subnet(network_id=ext.network.id, ip_version=4, cidr=cidr, enable_dhcp=False),
        )
    )
    return ext.network.id, sub.subnet.id


async def _take_all(net: Net) -> dict[str, dict[str, agent.RouterBinding]]:
    """Takes and acknowledges every waiting change: host -> router id -> binding."""
    taken = await net.stub.TakeRouterChanges(pb.TakeRouterChangesRequest())
    await net.stub.AckRouterChanges(pb.AckRouterChangesRequest(change_ids=taken.change_ids))
    return {h.host: {r.router_id: r for r in h.routers} for h in taken.hosts}


@dataclass
class Routed:
    """A router with a gateway on an external network and an interface on a tenant
    subnet, and a server's port on that subnet (bound to h1) with a floating IP."""

    ext_id: str
    network_id: str
    subnet_id: str
    router: pb.Router
    bound: pb.BindDevicePortsResponse
    fip: pb.FloatingIp


async def _routed(net: Net, cidr: str) -> Routed:
    ext_id, _ = await _external(net)
    network_id, subnet_id = await net.network_with_subnet(cidr)
    router = (
        await net.stub.CreateRouter(
            pb.CreateRouterRequest(
                scope=net.scope(),
                router=pb.Router(name="r"),
                gateway=pb.GatewayRequest(network_id=ext_id),
            )
        )
    ).router
    await net.stub.AddRouterInterface(
        pb.AddRouterInterfaceRequest(scope=net.scope(), router_id=router.id, subnet_id=subnet_id)
    )
    bound = await _bind(net, network_id, "h1")
    fip = (
        await net.stub.CreateFloatingIp(
            pb.CreateFloatingIpRequest(
                scope=net.scope(),
                floating_ip=pb.FloatingIp(floating_network_id=ext_id, port_id=bound.ports[0].id),
            )
        )
    ).floating_ip
    return Routed(ext_id, network_id, subnet_id, router, bound, fip)


async def test_a_router_its_legs_and_a_floating_ip_reach_the_l3_host_and_the_ip_goes_active(
    net: Net,
) -> None:
    r = await _routed(net, "10.50.0.0/24")
    ext_id, network_id, subnet_id = r.ext_id, r.network_id, r.subnet_id
    router, bound, fip = r.router, r.bound, r.fip
    assert fip.status == "DOWN"  # not yet sent to the router's host

    taken = await net.stub.TakeRouterChanges(pb.TakeRouterChangesRequest())
    await net.stub.AckRouterChanges(pb.AckRouterChangesRequest(change_ids=taken.change_ids))
    hosts = {h.host: {r.router_id: r for r in h.routers} for h in taken.hosts}
    assert list(hosts) == [L3_HOST]
    # The server's floating IPs now, for its addresses.
    server = bound.ports[0].device_id
    assert [
        (d.device_id, [(f.floating_ip_address, f.fixed_ip_address) for f in d.floating_ips])
        for d in taken.devices
    ] == [(server, [(fip.floating_ip_address, bound.bindings[0].fixed_ips[0].ip_address)])]
    binding = hosts[L3_HOST][router.id]
    assert not binding.deleted
    assert binding.admin_state_up
    assert binding.enable_snat
    assert binding.gateway.network_id == ext_id
    assert binding.gateway.segmentation_id > 0
    gw_ip = binding.gateway.fixed_ips[0]
    assert gw_ip.ip_address.startswith("198.51.100.")
    assert gw_ip.gateway_ip == "198.51.100.1"
    assert [(i.network_id, i.fixed_ips[0].ip_address) for i in binding.interfaces] == [
        (network_id, "10.50.0.1")
    ]
    assert binding.interfaces[0].segmentation_id == bound.bindings[0].segmentation_id
    assert [(f.floating_ip_address, f.fixed_ip_address) for f in binding.floating_ips] == [
        (fip.floating_ip_address, bound.bindings[0].fixed_ips[0].ip_address)
    ]
    got = await net.stub.GetFloatingIp(pb.GetFloatingIpRequest(scope=net.scope(), id=fip.id))
    assert got.floating_ip.status == "ACTIVE"
    # Nothing changed since: nothing is waiting.
    assert (await net.stub.TakeRouterChanges(pb.TakeRouterChangesRequest())).change_ids == []

    # The server goes: its floating IP stays allocated, and the router's host drops it.
    await net.stub.DeleteDevicePorts(
        pb.DeleteDevicePortsRequest(scope=net.scope(), device_id=bound.ports[0].device_id)
    )
    later = (await _take_all(net))[L3_HOST][router.id]
    assert later.revision > binding.revision
    assert list(later.floating_ips) == []
    assert len(later.interfaces) == 1
    got = await net.stub.GetFloatingIp(pb.GetFloatingIpRequest(scope=net.scope(), id=fip.id))
    assert got.floating_ip.status == "DOWN"
    assert got.floating_ip.port_id == ""

    # Taken apart: the host is told the router is gone.
    await net.stub.RemoveRouterInterface(
        pb.RemoveRouterInterfaceRequest(scope=net.scope(), router_id=router.id, subnet_id=subnet_id)
    )
    await net.stub.UpdateRouter(
        pb.UpdateRouterRequest(scope=net.scope(), id=router.id, gateway=pb.GatewayRequest())
    )
    await net.stub.DeleteRouter(pb.DeleteRouterRequest(scope=net.scope(), id=router.id))
    gone = (await _take_all(net))[L3_HOST][router.id]
    assert gone.deleted
    assert gone.revision > later.revision


async def test_a_router_set_down_is_sent_down_and_its_floating_ips_go_down(net: Net) -> None:
    r = await _routed(net, "10.51.0.0/24")
    router, bound, fip = r.router, r.bound, r.fip
    await _take_all(net)
    # Released: the server has no floating IP left.
    await net.stub.UpdateFloatingIp(
        pb.UpdateFloatingIpRequest(scope=net.scope(), id=fip.id, port_id="")
    )
    released = await net.stub.TakeRouterChanges(pb.TakeRouterChangesRequest())
    await net.stub.AckRouterChanges(pb.AckRouterChangesRequest(change_ids=released.change_ids))
    assert [(d.device_id, list(d.floating_ips)) for d in released.devices] == [
        (bound.ports[0].device_id, [])
    ]
    await net.stub.UpdateFloatingIp(
        pb.UpdateFloatingIpRequest(scope=net.scope(), id=fip.id, port_id=bound.ports[0].id)
    )
    await _take_all(net)
    await net.stub.UpdateRouter(
        pb.UpdateRouterRequest(scope=net.scope(), id=router.id, admin_state_up=False)
    )
    down = (await _take_all(net))[L3_HOST][router.id]
    assert not down.admin_state_up
    assert not down.deleted
    got = await net.stub.GetFloatingIp(pb.GetFloatingIpRequest(scope=net.scope(), id=fip.id))
    assert got.floating_ip.status == "DOWN"


async def _router_ports(net: Net, router_id: str) -> list[tuple[str, str]]:
    """The router's ports as (device_owner, status), by owner."""
    listed = await net.stub.ListPorts(
        pb.ListPortsRequest(scope=net.scope(admin=True), device_id=router_id)
    )
    return sorted((p.device_owner, p.status) for p in listed.ports)


async def test_a_routers_ports_go_active_once_sent_to_the_l3_host_whatever_its_admin_state(
    net: Net,
) -> None:
    r = await _routed(net, "10.52.0.0/24")
    gateway, interface = "network:router_gateway", "network:router_interface"
    # Not yet sent to the router's host.
    assert await _router_ports(net, r.router.id) == [(gateway, "DOWN"), (interface, "DOWN")]
    await _take_all(net)
    assert await _router_ports(net, r.router.id) == [(gateway, "ACTIVE"), (interface, "ACTIVE")]

    # An interface added later is DOWN until its change is sent.
    _, second = await net.network_with_subnet("10.53.0.0/24")
    await net.stub.AddRouterInterface(
        pb.AddRouterInterfaceRequest(scope=net.scope(), router_id=r.router.id, subnet_id=second)
    )
    assert await _router_ports(net, r.router.id) == [
        (gateway, "ACTIVE"),
        (interface, "ACTIVE"),
        (interface, "DOWN"),
    ]
    await _take_all(net)
    assert await _router_ports(net, r.router.id) == [
        (gateway, "ACTIVE"),
        (interface, "ACTIVE"),
        (interface, "ACTIVE"),
    ]

    # An admin-down router (its host takes its namespace down) keeps its ports ACTIVE, and
    # an interface added to it goes ACTIVE once sent, as for one that is up.
    await net.stub.UpdateRouter(
        pb.UpdateRouterRequest(scope=net.scope(), id=r.router.id, admin_state_up=False)
    )
    _, third = await net.network_with_subnet("10.54.0.0/24")
    await net.stub.AddRouterInterface(
        pb.AddRouterInterfaceRequest(scope=net.scope(), router_id=r.router.id, subnet_id=third)
    )
    await _take_all(net)
    assert (
        await _router_ports(net, r.router.id) == [(gateway, "ACTIVE")] + [(interface, "ACTIVE")] * 3
    )


async def test_without_an_l3_host_gateways_and_floating_ip_associations_are_refused(
    net: Net, tmp_path: object
) -> None:
    ext_id, _ = await _external(net)
    network_id, _ = await net.network_with_subnet("10.52.0.0/24")
    bound = await _bind(net, network_id, "h1")
    cfg = load_config(environ={}, overrides={"network": {"l3_host": ""}})
    server = await start_grpc_server(
        "127.0.0.1:0", NetworkDomain(net.sessions, cfg).registrations(), None, [DatabaseOutage()]
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        stub = network_pb2_grpc.NetworkServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateRouter(
                pb.CreateRouterRequest(
                    scope=net.scope(),
                    router=pb.Router(name="r"),
                    gateway=pb.GatewayRequest(network_id=ext_id),
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "network.l3_host is not set" in str(refused.value.details())
        # A router without a gateway, and an unassociated floating IP, are fine.
        await stub.CreateRouter(pb.CreateRouterRequest(scope=net.scope(), router=pb.Router()))
        fip = await stub.CreateFloatingIp(
            pb.CreateFloatingIpRequest(
                scope=net.scope(), floating_ip=pb.FloatingIp(floating_network_id=ext_id)
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.UpdateFloatingIp(
                pb.UpdateFloatingIpRequest(
                    scope=net.scope(), id=fip.floating_ip.id, port_id=bound.ports[0].id
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await channel.close()
        await server.stop(0)
