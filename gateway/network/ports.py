"""Network v2.0 ports."""

from __future__ import annotations

from typing import Any

from loom.network.v1 import network_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from gateway.compute.common import ok
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

# ------------------------------------------------------------------ ports


def fixed_ips(values: list[dict[str, str]]) -> list[pb.FixedIp]:
    return [
        pb.FixedIp(subnet_id=f.get("subnet_id", ""), ip_address=f.get("ip_address", ""))
        for f in values
    ]


@documented(tag=TAG, policy=READER)
async def list_ports(request: Request) -> Response:
    """Ports the caller sees."""
    ctx = context(request)
    ctx.require_read("get_port")
    q = request.query_params
    networks, devices = q.getlist("network_id"), q.getlist("device_id")
    # Only an admin sees (and so may filter on) a port's binding.
    hosts = q.getlist("binding:host_id") if ctx.is_admin else []

    async def fetch(limit: int, marker: str) -> list[dict[str, Any]]:
        reply = await call(
            stub(request).ListPorts,
            pb.ListPortsRequest(
                scope=scope(ctx),
                network_id=networks[0] if len(networks) == 1 else "",
                device_id=devices[0] if len(devices) == 1 else "",
                binding_host_id=hosts[0] if len(hosts) == 1 else "",
                limit=limit,
                marker=marker,
            ),
        )
        return [views.port(p, admin=ctx.is_admin) for p in reply.ports]

    return await listing(
        request,
        "ports",
        fetch,
        attrs=views.PORT_ATTRS,
        in_service=("network_id", "device_id", *(("binding:host_id",) if ctx.is_admin else ())),
    )


def address_pairs(given: list[dict[str, Any]] | None) -> list[pb.AddressPair]:
    """The body's allowed address pairs (a missing MAC means the port's own)."""
    return [
        pb.AddressPair(ip_address=p["ip_address"], mac_address=p.get("mac_address") or "")
        for p in given or []
    ]


@documented(
    body=schemas.created("port", schemas.PORT_CREATE),
    tag=TAG,
    policy=Policy("member", target="binding:host_id: admin"),
)
async def create_port(request: Request) -> Response:
    """Create a port, or several at once (`ports`: all or none): a MAC, addresses from the
    network's subnets, the default group."""
    ctx = context(request)
    ctx.require_write("create_port")
    bodies, bulk = await resource_bodies(request, "port", schemas.PORT_CREATE)
    items = [
        _port_request(body, item_request_id(request, index, bulk), scope(ctx))
        for index, body in enumerate(bodies)
    ]
    return await created(
        request,
        "port",
        items,
        bulk,
        one=stub(request).CreatePort,
        many=stub(request).CreatePorts,
        many_request=lambda made: pb.CreatePortsRequest(ports=made),
        view=lambda p: views.port(p, admin=ctx.is_admin),
    )


def _port_request(body: dict[str, Any], rid: str, caller: pb.Scope) -> pb.CreatePortRequest:
    groups = body.get("security_groups")
    port = pb.Port(
        network_id=body["network_id"],
        project_id=body.get("project_id", ""),
        name=body.get("name", ""),
        description=body.get("description", ""),
        admin_state_up=body.get("admin_state_up", True),
        mac_address=body.get("mac_address", ""),
        fixed_ips=fixed_ips(body.get("fixed_ips", [])),
        device_id=body.get("device_id", ""),
        device_owner=body.get("device_owner", ""),
        security_group_ids=groups or [],
        binding_host_id=body.get("binding:host_id", ""),
        port_security_enabled=body.get("port_security_enabled", True),
        allowed_address_pairs=address_pairs(body.get("allowed_address_pairs")),
    )
    return pb.CreatePortRequest(
        request_id=rid,
        scope=caller,
        port=port,
        fixed_ips_set="fixed_ips" in body,
        security_groups_set="security_groups" in body,
        admin_state_up_set="admin_state_up" in body,
        port_security_enabled_set="port_security_enabled" in body,
    )


@documented(tag=TAG, policy=READER)
async def show_port(request: Request) -> Response:
    """One port."""
    reply = await get_by_id(request, "get_port", "GetPort")
    return one(request, "port", views.port(reply.port, admin=context(request).is_admin))


@documented(
    body=schemas.wrapped("port", schemas.PORT_UPDATE),
    tag=TAG,
    policy=Policy("member", target="binding:host_id: admin"),
)
async def update_port(request: Request) -> Response:
    """Change a port (binding:host_id: admin only)."""
    ctx = context(request)
    ctx.require_write("update_port")
    body = await resource_body(request, "port", schemas.PORT_UPDATE)
    req = pb.UpdatePortRequest(
        request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
    )
    for key in (
        "name",
        "description",
        "admin_state_up",
        "device_id",
        "device_owner",
        "port_security_enabled",
    ):
        if key in body:
            setattr(req, key, body[key])
    if "binding:host_id" in body:
        req.binding_host_id = body["binding:host_id"]
    if "security_groups" in body:
        req.security_group_ids.values.extend(body["security_groups"] or [])
        req.security_group_ids.SetInParent()
    if "fixed_ips" in body:
        req.fixed_ips.fixed_ips.extend(fixed_ips(body["fixed_ips"]))
        req.fixed_ips.SetInParent()
    if "allowed_address_pairs" in body:
        req.allowed_address_pairs.pairs.extend(address_pairs(body["allowed_address_pairs"]))
        req.allowed_address_pairs.SetInParent()
    reply = await call(stub(request).UpdatePort, req)
    return ok({"port": views.port(reply.port, admin=ctx.is_admin)})


@documented(tag=TAG, policy=MEMBER)
async def delete_port(request: Request) -> Response:
    """Delete a port and free its addresses."""
    return await delete_by_id(request, "delete_port", "DeletePort")
