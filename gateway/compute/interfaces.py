"""os-interface: a server's ports as interface attachments (list and show, from the
network service). Attaching or detaching while the server exists needs the host to
hot-plug a NIC, which Loom's agent does not do: those are refused with a 409."""

from __future__ import annotations

from typing import Any

from loom.conductor.v1 import servers_pb2
from loom.network.v1 import network_pb2 as npb
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext
from gateway.compute.common import context, ok
from gateway.conductor import call
from gateway.errors import Conflict, NotFound
from gateway.routing import MEMBER, READER, documented
from gateway.state import gateway_of


async def server_of(request: Request, ctx: RequestContext) -> servers_pb2.Server:
    """The server the path names, as the caller may see it (404 otherwise)."""
    reply = await call(
        gateway_of(request).conductor.servers.GetServer,
        servers_pb2.GetServerRequest(
            id=request.path_params["server_id"],
            project_id="" if ctx.is_admin else ctx.project_id,
        ),
    )
    server: servers_pb2.Server = reply.server
    return server


async def _ports(request: Request, ctx: RequestContext, server_id: str) -> list[npb.Port]:
    reply = await call(
        gateway_of(request).conductor.network.ListPorts,
        npb.ListPortsRequest(
            scope=npb.Scope(project_id=ctx.project_id, is_admin=ctx.is_admin),
            device_id=server_id,
        ),
    )
    return [p for p in reply.ports if p.device_owner.startswith("compute:")]


def _attachment(p: npb.Port) -> dict[str, Any]:
    return {
        "port_id": p.id,
        "net_id": p.network_id,
        "mac_addr": p.mac_address,
        "port_state": p.status,
        "fixed_ips": [{"subnet_id": f.subnet_id, "ip_address": f.ip_address} for f in p.fixed_ips],
    }


@documented(tag="compute", policy=READER)
async def list_interfaces(request: Request) -> Response:
    """A server's ports."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-attach-interfaces:list")
    server = await server_of(request, ctx)
    ports = await _ports(request, ctx, server.id)
    return ok({"interfaceAttachments": [_attachment(p) for p in ports]})


@documented(tag="compute", policy=READER)
async def show_interface(request: Request) -> Response:
    """One port of a server."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-attach-interfaces:show")
    server = await server_of(request, ctx)
    port_id = request.path_params["port_id"]
    for p in await _ports(request, ctx, server.id):
        if p.id == port_id:
            return ok({"interfaceAttachment": _attachment(p)})
    raise NotFound(f"Port id {port_id[:64]} could not be found.")


@documented(tag="compute", policy=MEMBER)
async def attach_interface(request: Request) -> Response:
    """Refused: a NIC is attached at create only."""
    ctx = context(request)
    ctx.require_write("os_compute_api:os-attach-interfaces:create")
    await server_of(request, ctx)
    raise Conflict(
        "Attaching an interface to an existing server is not supported by this cloud (its"
        " hosts do not hot-plug NICs): give the networks when the server is created."
    )


@documented(tag="compute", policy=MEMBER)
async def detach_interface(request: Request) -> Response:
    """Refused: a NIC goes with its server only."""
    ctx = context(request)
    ctx.require_write("os_compute_api:os-attach-interfaces:delete")
    await server_of(request, ctx)
    raise Conflict(
        "Detaching an interface from a server is not supported by this cloud (its hosts do"
        " not hot-unplug NICs): the server's ports go when it is deleted."
    )


def routes() -> list[BaseRoute]:
    s = "/compute/v2.1/servers/{server_id}/os-interface"
    return [
        Route(s, list_interfaces, methods=["GET"]),
        Route(s, attach_interface, methods=["POST"]),
        Route(s + "/{port_id}", show_interface, methods=["GET"]),
        Route(s + "/{port_id}", detach_interface, methods=["DELETE"]),
    ]
