"""Server create's `networks` and `security_groups`, checked against the network service
before the 202 and resolved into what the conductor records: one RequestedPort per NIC
and the ids of the new ports' security groups.

"auto" picks the one network the project sees (its own or a shared one, never an external
one); with several it is ambiguous (409), with none the project gets its auto-allocated
network ("get me a network", made once). "none" asks the network service nothing."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from loom.network.v1 import network_pb2 as npb
from loom.network.v1 import network_pb2_grpc
from starlette.requests import Request

from gateway.auth.context import RequestContext
from gateway.conductor import DEFAULT_DEADLINE_S
from gateway.errors import BadRequest, Conflict, Forbidden, from_grpc
from gateway.state import gateway_of, request_id

Resp = TypeVar("Resp")


@dataclass
class Resolved:
    """What the conductor is asked: "none", or "" with the requested NICs."""

    networks: str
    requested: list[npb.RequestedPort] = field(default_factory=list)
    security_group_ids: list[str] = field(default_factory=list)


async def call_network(
    method: Callable[..., Awaitable[Resp]],
    req: Any,
    not_found: str | None = None,
) -> Resp:
    try:
        return await method(req, timeout=DEFAULT_DEADLINE_S)
    except grpc.aio.AioRpcError as exc:
        if not_found is not None and exc.code() == grpc.StatusCode.NOT_FOUND:
            raise BadRequest(not_found) from exc
        raise from_grpc(exc.code(), exc.details() or "") from exc


def network_stub(request: Request) -> network_pb2_grpc.NetworkServiceStub:
    network: network_pb2_grpc.NetworkServiceStub = gateway_of(request).conductor.network
    return network


async def resolve(
    request: Request, ctx: RequestContext, server: dict[str, Any], max_count: int
) -> Resolved:
    """Checks and resolves the create body's networks and security groups (the caller's
    schema has checked their shapes). Nova's errors: 400 for an unknown network or port,
    a network without a subnet, a fixed IP outside the network or taken; 409 for a port
    in use or an ambiguous "auto"."""
    networks = server.get("networks", "auto")
    if networks == []:
        networks = "auto"  # nothing asked for: as omitted (before 2.37)
    if networks == "none":
        if server.get("security_groups"):
            raise BadRequest("security_groups cannot be given with networks 'none'.")
        return Resolved("none")
    stub = network_stub(request)
    tenant = npb.Scope(project_id=ctx.project_id, is_admin=False)
    if networks == "auto":
        requested = [npb.RequestedPort(network_id=await _auto_network(request, stub, tenant))]
    else:
        requested = [await _one(stub, tenant, item, max_count) for item in networks]
        ports = [r.port_id for r in requested if r.port_id]
        if len(ports) != len(set(ports)):
            raise BadRequest("Cannot use the same port more than once for one server.")
    groups = await _security_groups(stub, tenant, server.get("security_groups") or [])
    return Resolved("", requested, groups)


async def _auto_network(
    request: Request, stub: network_pb2_grpc.NetworkServiceStub, tenant: npb.Scope
) -> str:
    listed = await call_network(stub.ListNetworks, npb.ListNetworksRequest(scope=tenant))
    usable = [
        n
        for n in listed.networks
        if not n.router_external and (n.shared or n.project_id == tenant.project_id)
    ]
    if len(usable) > 1:
        raise Conflict("Multiple possible networks found, use a Network ID to be more specific.")
    if usable:
        network = usable[0]
        if not network.subnet_ids:
            raise BadRequest(
                f"Network {network.id} requires a subnet in order to boot instances on."
            )
        return str(network.id)
    made = await call_network(
        stub.GetAutoAllocatedNetwork,
        npb.GetAutoAllocatedNetworkRequest(request_id=request_id(request), scope=tenant),
    )
    return str(made.network.id)


async def _one(
    stub: network_pb2_grpc.NetworkServiceStub,
    tenant: npb.Scope,
    item: dict[str, Any],
    max_count: int,
) -> npb.RequestedPort:
    port_id = item.get("port") or ""
    network_id = item.get("uuid") or ""
    fixed_ip = item.get("fixed_ip") or ""
    if port_id:
        if max_count > 1:
            raise BadRequest(
                "Unable to launch multiple instances with a single configured port ID. Please"
                " launch your instance one by one with different ports."
            )
        got = await call_network(
            stub.GetPort,
            npb.GetPortRequest(scope=tenant, id=port_id),
            not_found=f"Port id {port_id} could not be found.",
        )
        port = got.port
        if port.device_id:
            raise Conflict(f"Port {port_id} is still in use.")
        if not port.fixed_ips:
            raise BadRequest(f"Port {port_id} requires a FixedIP in order to be used.")
        return npb.RequestedPort(port_id=port.id)
    if not network_id:
        raise BadRequest("Each entry of networks needs a uuid or a port.")
    if fixed_ip and max_count > 1:
        raise BadRequest("max_count cannot be greater than 1 if an fixed_ip is specified.")
    got_net = await call_network(
        stub.GetNetwork,
        npb.GetNetworkRequest(scope=tenant, id=network_id),
        not_found=f"Network {network_id} could not be found.",
    )
    network = got_net.network
    if network.router_external and not (network.shared or network.project_id == tenant.project_id):
        raise Forbidden(
            f"It is not allowed to create an interface on external network {network_id}"
        )
    if not network.subnet_ids:
        raise BadRequest(f"Network {network_id} requires a subnet in order to boot instances on.")
    if fixed_ip:
        await _check_fixed_ip(stub, tenant, network_id, fixed_ip)
    return npb.RequestedPort(network_id=network.id, fixed_ip=fixed_ip)


async def _check_fixed_ip(
    stub: network_pb2_grpc.NetworkServiceStub, tenant: npb.Scope, network_id: str, fixed_ip: str
) -> None:
    subnets = await call_network(
        stub.ListSubnets, npb.ListSubnetsRequest(scope=tenant, network_id=network_id)
    )
    address = ipaddress.ip_address(fixed_ip)
    if not any(address in ipaddress.ip_network(s.cidr) for s in subnets.subnets):
        raise BadRequest(
            f"Fixed IP address {fixed_ip} is not in any subnet of network {network_id}."
        )
    # Every port of the network, whoever's: the address must be free on it.
    admin = npb.Scope(project_id=tenant.project_id, is_admin=True)
    ports = await call_network(
        stub.ListPorts, npb.ListPortsRequest(scope=admin, network_id=network_id)
    )
    for p in ports.ports:
        if any(f.ip_address == fixed_ip for f in p.fixed_ips):
            raise BadRequest(
                f"Fixed IP address {fixed_ip} is already in use on instance {p.device_id}."
                if p.device_id
                else f"Fixed IP address {fixed_ip} is already in use."
            )


async def _security_groups(
    stub: network_pb2_grpc.NetworkServiceStub, tenant: npb.Scope, asked: list[dict[str, Any]]
) -> list[str]:
    names = [str(g.get("name", "")) for g in asked]
    if not names:
        return []
    listed = await call_network(
        stub.ListSecurityGroups, npb.ListSecurityGroupsRequest(scope=tenant)
    )
    out: list[str] = []
    for name in names:
        found = match_security_group(listed.security_groups, tenant.project_id, name)
        if found is None:
            raise BadRequest(f"Unable to find security_group with name or id '{name[:64]}'")
        out.append(found)
    return list(dict.fromkeys(out))


def match_security_group(
    groups: Sequence[npb.SecurityGroup], project_id: str, name: str
) -> str | None:
    """The id of the project's group with this id, or else this name (None: no such
    group); 409 when the name is ambiguous, as Nova answers."""
    mine = [g for g in groups if g.project_id == project_id]
    found = [g.id for g in mine if g.id == name] or [g.id for g in mine if g.name == name]
    if len(found) > 1:
        raise Conflict(
            f"Multiple security_group matches found for name '{name[:64]}', use an ID"
            " to be more specific."
        )
    return found[0] if found else None
