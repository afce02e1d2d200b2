"""The compute service's ports client: create a server's port in its project, bind it to
the host, delete every port of the server (idempotent)."""

from __future__ import annotations

import grpc
import pytest
from loom.network.v1 import network_pb2 as pb

from controlplane.network.client import COMPUTE_OWNER, GrpcPortsClient
from tests.network.conftest import Net


async def test_a_servers_port_is_created_bound_and_deleted_with_the_server(net: Net) -> None:
    network_id, subnet_id = await net.network_with_subnet("10.20.0.0/24", project="tenant")
    client = GrpcPortsClient(net.channel)
    port = await client.create_port(
        request_id="r1", project_id="tenant", network_id=network_id, device_id="server-1"
    )
    assert port.status == "DOWN"
    assert port.mac_address.startswith("fa:16:3e:")
    ((subnet, address),) = port.fixed_ips
    assert subnet == subnet_id
    assert address.startswith("10.20.0.")
    bound = await client.bind_port(request_id="r2", port_id=port.id, host="sim-1")
    assert bound.binding_host_id == "sim-1"
    assert bound.status == "ACTIVE"
    on_host = await net.stub.ListPorts(
        pb.ListPortsRequest(scope=net.scope(admin=True), binding_host_id="sim-1")
    )
    assert [p.id for p in on_host.ports] == [port.id]
    listed = await net.stub.ListPorts(
        pb.ListPortsRequest(scope=net.scope("tenant"), device_id="server-1")
    )
    assert [p.device_owner for p in listed.ports] == [COMPUTE_OWNER]
    assert await client.delete_ports(
        request_id="r3", project_id="tenant", device_id="server-1"
    ) == [port.id]
    # Again: nothing left, still a success.
    assert (
        await client.delete_ports(request_id="r4", project_id="tenant", device_id="server-1") == []
    )


async def test_a_server_cannot_get_a_port_on_another_projects_private_network(net: Net) -> None:
    network_id, _ = await net.network_with_subnet("10.21.0.0/24", project="other")
    client = GrpcPortsClient(net.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.create_port(
            request_id="r1", project_id="tenant", network_id=network_id, device_id="server-1"
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_retried_create_port_with_the_same_request_id_makes_one_port(net: Net) -> None:
    network_id, _ = await net.network_with_subnet("10.22.0.0/24", project="tenant")
    client = GrpcPortsClient(net.channel)
    first = await client.create_port(
        request_id="boot-1-nic-0", project_id="tenant", network_id=network_id, device_id="s1"
    )
    again = await client.create_port(
        request_id="boot-1-nic-0", project_id="tenant", network_id=network_id, device_id="s1"
    )
    assert again == first
    listed = await net.stub.ListPorts(pb.ListPortsRequest(scope=net.scope("tenant")))
    assert [p.id for p in listed.ports] == [first.id]


async def test_a_retried_create_network_with_the_same_request_id_makes_one_network(
    net: Net,
) -> None:
    req = pb.CreateNetworkRequest(request_id="r-1", scope=net.scope(), network=pb.Network(name="n"))
    first = await net.stub.CreateNetwork(req)
    again = await net.stub.CreateNetwork(req)
    assert again.network.id == first.network.id
    listed = await net.stub.ListNetworks(pb.ListNetworksRequest(scope=net.scope()))
    assert len(listed.networks) == 1


async def test_lists_page_by_id_in_the_service(net: Net) -> None:
    ids = sorted(
        [
            (
                await net.stub.CreateNetwork(
                    pb.CreateNetworkRequest(scope=net.scope(), network=pb.Network(name=f"n{i}"))
                )
            ).network.id
            for i in range(5)
        ]
    )
    first = await net.stub.ListNetworks(pb.ListNetworksRequest(scope=net.scope(), limit=2))
    assert [n.id for n in first.networks] == ids[:2]
    rest = await net.stub.ListNetworks(
        pb.ListNetworksRequest(scope=net.scope(), limit=10, marker=ids[1])
    )
    assert [n.id for n in rest.networks] == ids[2:]
