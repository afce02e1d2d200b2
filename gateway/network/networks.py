"""Network v2.0 networks and subnets."""

from __future__ import annotations

from typing import Any

from loom.network.v1 import network_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from gateway.compute.common import ok
from gateway.errors import BadRequest
from gateway.network import schemas, views
from gateway.network.common import (
    TAG,
    call,
    context,
    created,
    delete_by_id,
    get_by_id,
    item_request_id,
    listing,
    one,
    resource_bodies,
    resource_body,
    scope,
    stub,
)
from gateway.routing import MEMBER, READER, Policy, documented
from gateway.state import request_id

# ------------------------------------------------------------------ networks


def _set_network_fields(net: pb.Network, body: dict[str, Any]) -> None:
    for key in ("name", "description", "admin_state_up", "shared", "mtu", "port_security_enabled"):
        if key in body:
            setattr(net, key, body[key])
    if "router:external" in body:
        net.router_external = body["router:external"]
    if "project_id" in body:
        net.project_id = body["project_id"]


@documented(tag=TAG, policy=READER)
async def list_networks(request: Request) -> Response:
    """Networks the caller sees: its own, shared ones (and all, for an admin)."""
    ctx = context(request)
    ctx.require_read("get_network")

    async def fetch(limit: int, marker: str) -> list[dict[str, Any]]:
        reply = await call(
            stub(request).ListNetworks,
            pb.ListNetworksRequest(scope=scope(ctx), limit=limit, marker=marker),
        )
        return [views.network(n) for n in reply.networks]

    return await listing(request, "networks", fetch, attrs=views.NETWORK_ATTRS)


@documented(
    body=schemas.created("network", schemas.NETWORK_CREATE),
    tag=TAG,
    policy=Policy("member", target="shared and router:external: admin"),
)
async def create_network(request: Request) -> Response:
    """Create a network, or several at once (`networks`: all or none); shared and
    router:external: admin only."""
    ctx = context(request)
    ctx.require_write("create_network")
    bodies, bulk = await resource_bodies(request, "network", schemas.NETWORK_CREATE)
    items = []
    for index, body in enumerate(bodies):
        net = pb.Network()
        _set_network_fields(net, body)
        items.append(
            pb.CreateNetworkRequest(
                request_id=item_request_id(request, index, bulk),
                scope=scope(ctx),
                network=net,
                admin_state_up_set="admin_state_up" in body,
                port_security_enabled_set="port_security_enabled" in body,
            )
        )
    return await created(
        request,
        "network",
        items,
        bulk,
        one=stub(request).CreateNetwork,
        many=stub(request).CreateNetworks,
        many_request=lambda made: pb.CreateNetworksRequest(networks=made),
        view=views.network,
    )


@documented(tag=TAG, policy=READER)
async def show_network(request: Request) -> Response:
    """One network."""
    reply = await get_by_id(request, "get_network", "GetNetwork")
    return one(request, "network", views.network(reply.network))


@documented(body=schemas.wrapped("network", schemas.NETWORK_UPDATE), tag=TAG, policy=MEMBER)
async def update_network(request: Request) -> Response:
    """Change a network."""
    ctx = context(request)
    ctx.require_write("update_network")
    body = await resource_body(request, "network", schemas.NETWORK_UPDATE)
    req = pb.UpdateNetworkRequest(
        request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
    )
    for key in ("name", "description", "admin_state_up", "shared", "mtu", "port_security_enabled"):
        if key in body:
            setattr(req, key, body[key])
    if "router:external" in body:
        req.router_external = body["router:external"]
    reply = await call(stub(request).UpdateNetwork, req)
    return ok({"network": views.network(reply.network)})


@documented(tag=TAG, policy=MEMBER)
async def delete_network(request: Request) -> Response:
    """Delete a network and its subnets (409 NetworkInUse while ports remain)."""
    return await delete_by_id(request, "delete_network", "DeleteNetwork")


# ------------------------------------------------------------------ subnets


@documented(tag=TAG, policy=READER)
async def list_subnets(request: Request) -> Response:
    """Subnets the caller sees."""
    ctx = context(request)
    ctx.require_read("get_subnet")
    networks = request.query_params.getlist("network_id")

    async def fetch(limit: int, marker: str) -> list[dict[str, Any]]:
        reply = await call(
            stub(request).ListSubnets,
            pb.ListSubnetsRequest(
                scope=scope(ctx),
                network_id=networks[0] if len(networks) == 1 else "",
                limit=limit,
                marker=marker,
            ),
        )
        return [views.subnet(s) for s in reply.subnets]

    return await listing(
        request, "subnets", fetch, attrs=views.SUBNET_ATTRS, in_service=("network_id",)
    )


@documented(body=schemas.created("subnet", schemas.SUBNET_CREATE), tag=TAG, policy=MEMBER)
async def create_subnet(request: Request) -> Response:
    """Create an IPv4 subnet, or several at once (`subnets`: all or none): gateway the first
    address and the rest one pool unless given."""
    ctx = context(request)
    ctx.require_write("create_subnet")
    bodies, bulk = await resource_bodies(request, "subnet", schemas.SUBNET_CREATE)
    items = [
        _subnet_request(body, item_request_id(request, index, bulk), scope(ctx))
        for index, body in enumerate(bodies)
    ]
    return await created(
        request,
        "subnet",
        items,
        bulk,
        one=stub(request).CreateSubnet,
        many=stub(request).CreateSubnets,
        many_request=lambda made: pb.CreateSubnetsRequest(subnets=made),
        view=views.subnet,
    )


def _subnet_request(body: dict[str, Any], rid: str, caller: pb.Scope) -> pb.CreateSubnetRequest:
    if body.get("ip_version", 4) != 4:
        raise BadRequest(
            "Invalid input for operation: IPv6 subnets are not supported by this cloud."
        )
    if "cidr" not in body:
        raise BadRequest(
            "Invalid input for operation: a cidr is required (subnet pools are not supported"
            " by this cloud)."
        )
    sub = pb.Subnet(
        network_id=body["network_id"],
        project_id=body.get("project_id", ""),
        name=body.get("name", ""),
        description=body.get("description", ""),
        ip_version=4,
        cidr=body["cidr"],
        gateway_ip=body.get("gateway_ip") or "",
        enable_dhcp=body.get("enable_dhcp", True),
        allocation_pools=[pb.AllocationPool(**p) for p in body.get("allocation_pools", [])],
        dns_nameservers=body.get("dns_nameservers", []),
        host_routes=[pb.HostRoute(**r) for r in body.get("host_routes", [])],
    )
    return pb.CreateSubnetRequest(
        request_id=rid,
        scope=caller,
        subnet=sub,
        gateway_ip_set="gateway_ip" in body,
        enable_dhcp_set="enable_dhcp" in body,
    )


@documented(tag=TAG, policy=READER)
async def show_subnet(request: Request) -> Response:
    """One subnet."""
    reply = await get_by_id(request, "get_subnet", "GetSubnet")
    return one(request, "subnet", views.subnet(reply.subnet))


@documented(body=schemas.wrapped("subnet", schemas.SUBNET_UPDATE), tag=TAG, policy=MEMBER)
async def update_subnet(request: Request) -> Response:
    """Change a subnet: name, gateway, DHCP, DNS servers, host routes, pools."""
    ctx = context(request)
    ctx.require_write("update_subnet")
    body = await resource_body(request, "subnet", schemas.SUBNET_UPDATE)
    req = pb.UpdateSubnetRequest(
        request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
    )
    for key in ("name", "description", "enable_dhcp"):
        if key in body:
            setattr(req, key, body[key])
    if "gateway_ip" in body:
        req.gateway_ip = body["gateway_ip"] or ""
    if "dns_nameservers" in body:
        req.dns_nameservers.values.extend(body["dns_nameservers"])
        req.dns_nameservers.SetInParent()
    if "host_routes" in body:
        req.host_routes.routes.extend(pb.HostRoute(**r) for r in body["host_routes"])
        req.host_routes.SetInParent()
    if "allocation_pools" in body:
        req.allocation_pools.pools.extend(pb.AllocationPool(**p) for p in body["allocation_pools"])
        req.allocation_pools.SetInParent()
    reply = await call(stub(request).UpdateSubnet, req)
    return ok({"subnet": views.subnet(reply.subnet)})


@documented(tag=TAG, policy=MEMBER)
async def delete_subnet(request: Request) -> Response:
    """Delete a subnet (409 SubnetInUse while a port holds one of its addresses)."""
    return await delete_by_id(request, "delete_subnet", "DeleteSubnet")
