"""Network v2.0 routers and floating IPs (API and IPAM; forwarding and NAT are the hosts'
data plane)."""

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
    delete_by_id,
    encodable,
    get_by_id,
    listing,
    one,
    resource_body,
    scope,
    stub,
)
from gateway.network.ports import fixed_ips
from gateway.routing import MEMBER, READER, documented
from gateway.state import json_body, request_id
from gateway.validation import ValidationFailed

# ------------------------------------------------------------------ routers


def _gateway(info: dict[str, Any] | None) -> pb.GatewayRequest:
    """`external_gateway_info`: null or {} clears the gateway."""
    gw = pb.GatewayRequest()
    if info:
        if "network_id" not in info:
            raise BadRequest("Invalid input for external_gateway_info: network_id is required.")
        gw.network_id = info["network_id"]
        if "enable_snat" in info:
            gw.enable_snat = info["enable_snat"]
        gw.external_fixed_ips.extend(fixed_ips(info.get("external_fixed_ips", [])))
    return gw


@documented(tag=TAG, policy=READER)
async def list_routers(request: Request) -> Response:
    """Routers the caller sees."""
    ctx = context(request)
    ctx.require_read("get_router")

    async def fetch(limit: int, marker: str) -> list[dict[str, Any]]:
        reply = await call(
            stub(request).ListRouters,
            pb.ListRoutersRequest(scope=scope(ctx), limit=limit, marker=marker),
        )
        return [views.router(r) for r in reply.routers]

    return await listing(request, "routers", fetch, attrs=views.ROUTER_ATTRS)


@documented(body=schemas.wrapped("router", schemas.ROUTER_CREATE), tag=TAG, policy=MEMBER)
async def create_router(request: Request) -> Response:
    """Create a router, with a gateway on an external network when asked."""
    ctx = context(request)
    ctx.require_write("create_router")
    body = await resource_body(request, "router", schemas.ROUTER_CREATE)
    req = pb.CreateRouterRequest(
        request_id=request_id(request),
        scope=scope(ctx),
        router=pb.Router(
            project_id=body.get("project_id", ""),
            name=body.get("name", ""),
            description=body.get("description", ""),
            admin_state_up=body.get("admin_state_up", True),
        ),
        admin_state_up_set="admin_state_up" in body,
    )
    if body.get("external_gateway_info"):
        req.gateway.CopyFrom(_gateway(body["external_gateway_info"]))
    reply = await call(stub(request).CreateRouter, req)
    return ok({"router": views.router(reply.router)}, 201)


@documented(tag=TAG, policy=READER)
async def show_router(request: Request) -> Response:
    """One router."""
    reply = await get_by_id(request, "get_router", "GetRouter")
    return one(request, "router", views.router(reply.router))


@documented(body=schemas.wrapped("router", schemas.ROUTER_UPDATE), tag=TAG, policy=MEMBER)
async def update_router(request: Request) -> Response:
    """Change a router or its gateway (static routes are not supported)."""
    ctx = context(request)
    ctx.require_write("update_router")
    body = await resource_body(request, "router", schemas.ROUTER_UPDATE)
    req = pb.UpdateRouterRequest(
        request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
    )
    for key in ("name", "description", "admin_state_up"):
        if key in body:
            setattr(req, key, body[key])
    if "external_gateway_info" in body:
        req.gateway.CopyFrom(_gateway(body["external_gateway_info"]))
    reply = await call(stub(request).UpdateRouter, req)
    return ok({"router": views.router(reply.router)})


@documented(tag=TAG, policy=MEMBER)
async def delete_router(request: Request) -> Response:
    """Delete a router (409 RouterInUse while it has interfaces)."""
    return await delete_by_id(request, "delete_router", "DeleteRouter")


async def _interface_body(request: Request) -> dict[str, str]:
    body = await json_body(request)
    try:
        schemas.ROUTER_INTERFACE.validate(body)
    except ValidationFailed as exc:
        raise BadRequest(f"Invalid input for operation: {exc}") from None
    if not encodable(body):
        raise BadRequest("Malformed request body: strings must be valid UTF-8.")
    out: dict[str, str] = body
    return out


@documented(body=schemas.ROUTER_INTERFACE, tag=TAG, policy=MEMBER)
async def add_router_interface(request: Request) -> Response:
    """Attach a subnet (a port holding its gateway address) or a port to a router."""
    ctx = context(request)
    ctx.require_write("add_router_interface")
    body = await _interface_body(request)
    reply = await call(
        stub(request).AddRouterInterface,
        pb.AddRouterInterfaceRequest(
            request_id=request_id(request),
            scope=scope(ctx),
            router_id=request.path_params["id"],
            subnet_id=body.get("subnet_id", ""),
            port_id=body.get("port_id", ""),
        ),
    )
    return ok(views.router_interface(reply.interface))


@documented(body=schemas.ROUTER_INTERFACE, tag=TAG, policy=MEMBER)
async def remove_router_interface(request: Request) -> Response:
    """Detach a subnet or port from a router, deleting the interface's port."""
    ctx = context(request)
    ctx.require_write("remove_router_interface")
    body = await _interface_body(request)
    reply = await call(
        stub(request).RemoveRouterInterface,
        pb.RemoveRouterInterfaceRequest(
            request_id=request_id(request),
            scope=scope(ctx),
            router_id=request.path_params["id"],
            subnet_id=body.get("subnet_id", ""),
            port_id=body.get("port_id", ""),
        ),
    )
    return ok(views.router_interface(reply.interface))


# ------------------------------------------------------------------ floating IPs


@documented(tag=TAG, policy=READER)
async def list_floating_ips(request: Request) -> Response:
    """Floating IPs the caller sees."""
    ctx = context(request)
    ctx.require_read("get_floatingip")

    async def fetch(limit: int, marker: str) -> list[dict[str, Any]]:
        reply = await call(
            stub(request).ListFloatingIps,
            pb.ListFloatingIpsRequest(scope=scope(ctx), limit=limit, marker=marker),
        )
        return [views.floating_ip(f) for f in reply.floating_ips]

    return await listing(request, "floatingips", fetch, attrs=views.FLOATING_IP_ATTRS)


@documented(body=schemas.wrapped("floatingip", schemas.FLOATING_IP_CREATE), tag=TAG, policy=MEMBER)
async def create_floating_ip(request: Request) -> Response:
    """Allocate a floating IP from an external network (and associate it when asked)."""
    ctx = context(request)
    ctx.require_write("create_floatingip")
    body = await resource_body(request, "floatingip", schemas.FLOATING_IP_CREATE)
    fip = pb.FloatingIp(
        project_id=body.get("project_id", ""),
        floating_network_id=body["floating_network_id"],
        floating_ip_address=body.get("floating_ip_address", ""),
        port_id=body.get("port_id") or "",
        fixed_ip_address=body.get("fixed_ip_address") or "",
        description=body.get("description", ""),
    )
    reply = await call(
        stub(request).CreateFloatingIp,
        pb.CreateFloatingIpRequest(
            request_id=request_id(request),
            scope=scope(ctx),
            floating_ip=fip,
            subnet_id=body.get("subnet_id", ""),
        ),
    )
    return ok({"floatingip": views.floating_ip(reply.floating_ip)}, 201)


@documented(tag=TAG, policy=READER)
async def show_floating_ip(request: Request) -> Response:
    """One floating IP."""
    reply = await get_by_id(request, "get_floatingip", "GetFloatingIp")
    return one(request, "floatingip", views.floating_ip(reply.floating_ip))


@documented(body=schemas.wrapped("floatingip", schemas.FLOATING_IP_UPDATE), tag=TAG, policy=MEMBER)
async def update_floating_ip(request: Request) -> Response:
    """Associate a floating IP with a port (`port_id`), or disassociate it (null)."""
    ctx = context(request)
    ctx.require_write("update_floatingip")
    body = await resource_body(request, "floatingip", schemas.FLOATING_IP_UPDATE)
    req = pb.UpdateFloatingIpRequest(
        request_id=request_id(request),
        scope=scope(ctx),
        id=request.path_params["id"],
        fixed_ip_address=body.get("fixed_ip_address") or "",
    )
    if "port_id" in body:
        req.port_id = body["port_id"] or ""
    if "description" in body:
        req.description = body["description"]
    reply = await call(stub(request).UpdateFloatingIp, req)
    return ok({"floatingip": views.floating_ip(reply.floating_ip)})


@documented(tag=TAG, policy=MEMBER)
async def delete_floating_ip(request: Request) -> Response:
    """Release a floating IP."""
    return await delete_by_id(request, "delete_floatingip", "DeleteFloatingIp")
