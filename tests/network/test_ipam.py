"""IPAM is atomic: racing port creates never share an address, and a subnet that runs dry
refuses cleanly with nothing half-written."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from loom.network.v1 import network_pb2 as pb
from sqlalchemy import func, select

from controlplane.db.models import IpAllocation, Port, SecurityGroup
from tests.network.conftest import Net

# A /26 holds 62 host addresses; the gateway takes the first, the pool the other 61.
POOL_SIZE = 61


async def _create(net: Net, network_id: str) -> pb.Port | grpc.aio.AioRpcError:
    try:
        reply = await net.stub.CreatePort(
            pb.CreatePortRequest(scope=net.scope(), port=pb.Port(network_id=network_id))
        )
    except grpc.aio.AioRpcError as exc:
        return exc
    return reply.port


def _error_type(exc: grpc.aio.AioRpcError) -> str:
    return next(str(v) for k, v in (exc.trailing_metadata() or ()) if k == "loom-error-type")


async def test_fifty_concurrent_ports_on_a_slash_26_never_share_an_address_and_the_62nd_is_refused(
    net: Net,
) -> None:
    network_id, subnet_id = await net.network_with_subnet("10.9.0.0/26")
    first = await asyncio.gather(*(_create(net, network_id) for _ in range(50)))
    assert all(isinstance(p, pb.Port) for p in first), [
        p for p in first if not isinstance(p, pb.Port)
    ]
    # Twenty more race for the last eleven addresses.
    second = await asyncio.gather(*(_create(net, network_id) for _ in range(20)))
    made = [p for p in (*first, *second) if isinstance(p, pb.Port)]
    refused = [e for e in second if isinstance(e, grpc.aio.AioRpcError)]
    assert len(made) == POOL_SIZE
    assert len(refused) == 70 - POOL_SIZE
    for exc in refused:
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _error_type(exc) == "IpAddressGenerationFailure"
        assert "No more IP addresses available" in (exc.details() or "")
    addresses = [p.fixed_ips[0].ip_address for p in made]
    assert len(set(addresses)) == POOL_SIZE
    assert "10.9.0.1" not in addresses
    assert {p.fixed_ips[0].subnet_id for p in made} == {subnet_id}
    assert len({p.mac_address for p in made}) == POOL_SIZE
    # Nothing half-written: no port without its address, one default group for the project.
    async with net.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Port)) == POOL_SIZE
        assert await s.scalar(select(func.count()).select_from(IpAllocation)) == POOL_SIZE
        assert await s.scalar(select(func.count()).select_from(SecurityGroup)) == 1
    # A freed address is handed out again.
    await net.stub.DeletePort(pb.DeletePortRequest(scope=net.scope(), id=made[0].id))
    again = await _create(net, network_id)
    assert isinstance(again, pb.Port)
    assert again.fixed_ips[0].ip_address == made[0].fixed_ips[0].ip_address


async def test_two_ports_racing_for_one_explicit_address_get_it_once(net: Net) -> None:
    network_id, subnet_id = await net.network_with_subnet("10.9.1.0/24")

    async def ask() -> pb.Port | grpc.aio.AioRpcError:
        try:
            reply = await net.stub.CreatePort(
                pb.CreatePortRequest(
                    scope=net.scope(),
                    port=pb.Port(
                        network_id=network_id,
                        fixed_ips=[pb.FixedIp(subnet_id=subnet_id, ip_address="10.9.1.77")],
                    ),
                    fixed_ips_set=True,
                )
            )
        except grpc.aio.AioRpcError as exc:
            return exc
        return reply.port

    results = await asyncio.gather(*(ask() for _ in range(8)))
    won = [r for r in results if isinstance(r, pb.Port)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1
    assert len(lost) == 7
    assert {_error_type(e) for e in lost} == {"IpAddressAlreadyAllocated"}
    async with net.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Port)) == 1


@pytest.mark.parametrize("cidr", ["10.9.2.0/30"])
async def test_a_port_on_a_full_subnet_leaves_no_port_behind(net: Net, cidr: str) -> None:
    network_id, _ = await net.network_with_subnet(cidr)
    # A /30 has two hosts: the gateway and one more.
    assert isinstance(await _create(net, network_id), pb.Port)
    exc = await _create(net, network_id)
    assert isinstance(exc, grpc.aio.AioRpcError)
    assert _error_type(exc) == "IpAddressGenerationFailure"
    async with net.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Port)) == 1
