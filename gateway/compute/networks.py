"""os-networks, the compute API's proxy to the network service (up to 2.35; 404 from 2.36),
as Nova serves it over Neutron: the networks the caller sees with their `id` and `label`
(the name) and every nova-network field null; creating, deleting, adding and
disassociating networks are gone (410), since only the Network API manages networks."""

from __future__ import annotations

from typing import Any

from loom.network.v1 import network_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext
from gateway.compute.common import context, ok
from gateway.conductor import call
from gateway.errors import ApiError, BadRequest, NotFound
from gateway.routing import AUTHENTICATED, READER, documented
from gateway.state import gateway_of, json_body, microversion

_GONE = "The resource could not be found."
_FIELDS = (
    "id", "cidr", "netmask", "gateway", "broadcast", "dns1", "dns2", "cidr_v6", "gateway_v6",
    "label", "netmask_v6",
)  # fmt: skip
_ADMIN_FIELDS = (
    "created_at", "updated_at", "deleted_at", "deleted", "injected", "bridge", "vlan",
    "vpn_public_address", "vpn_public_port", "vpn_private_address", "dhcp_start",
    "project_id", "host", "bridge_interface", "multi_host", "priority", "rxtx_base", "mtu",
    "dhcp_server", "enable_dhcp", "share_address",
)  # fmt: skip


def _until_2_35(request: Request) -> None:
    if microversion(request).at_least("2.36"):
        raise NotFound(_GONE)


def _scope(ctx: RequestContext) -> network_pb2.Scope:
    return network_pb2.Scope(project_id=ctx.project_id, is_admin=ctx.is_admin)


def network_view(net: network_pb2.Network, is_admin: bool) -> dict[str, Any]:
    """Nova's body over Neutron: two fields of thirty-two carry a value."""
    fields = _FIELDS + _ADMIN_FIELDS if is_admin else _FIELDS
    body: dict[str, Any] = dict.fromkeys(fields)
    body["id"] = net.id
    body["label"] = net.name
    return body


@documented(tag="compute", policy=READER)
async def list_networks(request: Request) -> Response:
    """The networks the caller sees (its own and shared ones; all for an admin)."""
    _until_2_35(request)
    ctx = context(request)
    ctx.require_read("os_compute_api:os-networks:list")
    reply = await call(
        gateway_of(request).conductor.network.ListNetworks,
        network_pb2.ListNetworksRequest(scope=_scope(ctx)),
    )
    return ok({"networks": [network_view(n, ctx.is_admin) for n in reply.networks]})


@documented(tag="compute", policy=READER)
async def show_network(request: Request) -> Response:
    """One network the caller sees; 404 otherwise."""
    _until_2_35(request)
    ctx = context(request)
    ctx.require_read("os_compute_api:os-networks:show")
    network = await _network(request, _scope(ctx))
    return ok({"network": network_view(network, ctx.is_admin)})


async def _network(request: Request, scope: network_pb2.Scope) -> network_pb2.Network:
    """The path's network as `scope` sees it; 404 "Network not found" otherwise."""
    try:
        reply = await call(
            gateway_of(request).conductor.network.GetNetwork,
            network_pb2.GetNetworkRequest(scope=scope, id=request.path_params["network_id"]),
        )
    except ApiError as exc:
        if exc.status in (400, 404):
            raise NotFound("Network not found") from exc
        raise
    network: network_pb2.Network = reply.network
    return network


async def _gone(request: Request) -> Response:
    _until_2_35(request)
    context(request)
    raise ApiError(410, "The resource is gone: networks are managed through the Network API.")


@documented(tag="compute", policy=AUTHENTICATED)
async def create_network(request: Request) -> Response:
    """Gone (410), as in Nova since nova-network: create networks with the Network API."""
    return await _gone(request)


@documented(tag="compute", policy=AUTHENTICATED)
async def add_network(request: Request) -> Response:
    """Gone (410), as in Nova since nova-network."""
    return await _gone(request)


@documented(tag="compute", policy=AUTHENTICATED)
async def delete_network(request: Request) -> Response:
    """Gone (410), as in Nova since nova-network: delete networks with the Network API."""
    return await _gone(request)


@documented(tag="compute", policy=AUTHENTICATED)
async def network_action(request: Request) -> Response:
    """`disassociate` is gone (410), as in Nova since nova-network; no other action exists."""
    _until_2_35(request)
    context(request)
    body = await json_body(request)
    if isinstance(body, dict) and len(body) == 1 and "disassociate" in body:
        return await _gone(request)
    name = next(iter(body), "") if isinstance(body, dict) else ""
    raise BadRequest(f"There is no such action: {str(name)[:64]}")


def tenant_network_view(net: network_pb2.Network) -> dict[str, Any]:
    """os-tenant-networks' body: the id, the name as `label`, and no single `cidr` (a
    network of the network service may hold several subnets)."""
    return {"id": net.id, "label": net.name, "cidr": None}


@documented(tag="compute", policy=READER)
async def list_tenant_networks(request: Request) -> Response:
    """The networks the caller's project sees (up to 2.35)."""
    _until_2_35(request)
    ctx = context(request)
    ctx.require_read("os_compute_api:os-tenant-networks:list")
    reply = await call(
        gateway_of(request).conductor.network.ListNetworks,
        network_pb2.ListNetworksRequest(
            scope=network_pb2.Scope(project_id=ctx.project_id, is_admin=False)
        ),
    )
    return ok({"networks": [tenant_network_view(n) for n in reply.networks]})


@documented(tag="compute", policy=READER)
async def show_tenant_network(request: Request) -> Response:
    """One network the caller's project sees; 404 otherwise."""
    _until_2_35(request)
    ctx = context(request)
    ctx.require_read("os_compute_api:os-tenant-networks:show")
    own = network_pb2.Scope(project_id=ctx.project_id, is_admin=False)
    return ok({"network": tenant_network_view(await _network(request, own))})


@documented(tag="compute", policy=AUTHENTICATED)
async def change_tenant_network(request: Request) -> Response:
    """Creating or deleting a tenant network is gone (410): the Network API does it."""
    return await _gone(request)


def routes() -> list[BaseRoute]:
    t = "/compute/v2.1/os-tenant-networks"
    p = "/compute/v2.1/os-networks"
    return [
        Route(p, list_networks, methods=["GET"]),
        Route(p, create_network, methods=["POST"]),
        Route(p + "/add", add_network, methods=["POST"]),
        Route(p + "/{network_id}", show_network, methods=["GET"]),
        Route(p + "/{network_id}", delete_network, methods=["DELETE"]),
        Route(p + "/{network_id}/action", network_action, methods=["POST"]),
        Route(t, list_tenant_networks, methods=["GET"]),
        Route(t, change_tenant_network, methods=["POST"]),
        Route(t + "/{network_id}", show_tenant_network, methods=["GET"]),
        Route(t + "/{network_id}", change_tenant_network, methods=["DELETE"]),
    ]
