"""os-floating-ips and os-floating-ip-pools: the compute API's proxy to the network
service's floating IPs (up to 2.35; 404 from 2.36), and the addFloatingIp /
removeFloatingIp server actions (up to 2.43), in the compute API's shapes and errors.

A pool is an external network, named by its name (its id when it has none). Allocating
without a pool takes the only external network the caller sees; with none there is
nothing to allocate from (404), with several the caller must name one (400)."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Sequence
from typing import Any

from loom.conductor.v1 import servers_pb2
from loom.network.v1 import network_pb2 as npb
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext
from gateway.compute.common import context, empty, ok
from gateway.errors import BadRequest, Conflict, Forbidden, NotFound
from gateway.network.common import NeutronError, call
from gateway.network.common import stub as network_stub
from gateway.routing import AUTHENTICATED, MEMBER, READER, documented
from gateway.state import json_body, microversion, request_id

_GONE = "The resource could not be found."
# The server actions (up to 2.43).
ACTIONS = ("addFloatingIp", "removeFloatingIp")


def _until_2_35(request: Request) -> None:
    if microversion(request).at_least("2.36"):
        raise NotFound(_GONE)


def _scope(ctx: RequestContext) -> npb.Scope:
    return npb.Scope(project_id=ctx.project_id, is_admin=False)


def _pool_name(net: npb.Network) -> str:
    return net.name or net.id


def _view(fip: npb.FloatingIp, pools: dict[str, str], devices: dict[str, str]) -> dict[str, Any]:
    return {
        "id": fip.id,
        "ip": fip.floating_ip_address,
        "pool": pools.get(fip.floating_network_id, fip.floating_network_id),
        "fixed_ip": fip.fixed_ip_address or None,
        "instance_id": devices.get(fip.port_id) if fip.port_id else None,
    }


async def _external_networks(request: Request, ctx: RequestContext) -> list[npb.Network]:
    reply = await call(
        network_stub(request).ListNetworks, npb.ListNetworksRequest(scope=_scope(ctx))
    )
    return [n for n in reply.networks if n.router_external]


async def _views(
    request: Request, ctx: RequestContext, fips: Sequence[npb.FloatingIp]
) -> list[dict[str, Any]]:
    """The compute API's view of each: one ListNetworks for the pool names, and one
    ListPorts for the servers of the associated ones."""
    stub = network_stub(request)
    pools = {n.id: _pool_name(n) for n in await _external_networks(request, ctx)}
    devices: dict[str, str] = {}
    if any(f.port_id for f in fips):
        ports = await call(stub.ListPorts, npb.ListPortsRequest(scope=_scope(ctx)))
        devices = {p.id: p.device_id for p in ports.ports if p.device_id}
    return [_view(f, pools, devices) for f in fips]


async def _by_id(request: Request, ctx: RequestContext, fip_id: str) -> npb.FloatingIp:
    missing = NotFound(f"Floating IP not found for ID {fip_id[:64]}")
    try:
        uuid.UUID(fip_id)
    except ValueError:
        raise missing from None
    try:
        reply = await call(
            network_stub(request).GetFloatingIp,
            npb.GetFloatingIpRequest(scope=_scope(ctx), id=fip_id),
        )
    except NeutronError as exc:
        if exc.status == 404:
            raise missing from exc
        raise
    floating_ip: npb.FloatingIp = reply.floating_ip
    return floating_ip


async def _by_address(request: Request, ctx: RequestContext, address: str) -> npb.FloatingIp:
    reply = await call(
        network_stub(request).ListFloatingIps, npb.ListFloatingIpsRequest(scope=_scope(ctx))
    )
    found: npb.FloatingIp | None = next(
        (f for f in reply.floating_ips if f.floating_ip_address == address), None
    )
    if found is None:
        raise NotFound("floating IP not found")
    return found


@documented(tag="compute", policy=READER)
async def list_floating_ips(request: Request) -> Response:
    """The project's floating IPs."""
    _until_2_35(request)
    ctx = context(request)
    ctx.require_read("os_compute_api:os-floating-ips:list")
    reply = await call(
        network_stub(request).ListFloatingIps, npb.ListFloatingIpsRequest(scope=_scope(ctx))
    )
    return ok({"floating_ips": await _views(request, ctx, reply.floating_ips)})


@documented(tag="compute", policy=READER)
async def show_floating_ip(request: Request) -> Response:
    """One of the project's floating IPs."""
    _until_2_35(request)
    ctx = context(request)
    ctx.require_read("os_compute_api:os-floating-ips:show")
    fip = await _by_id(request, ctx, request.path_params["floating_ip_id"])
    return ok({"floating_ip": (await _views(request, ctx, [fip]))[0]})


@documented(tag="compute", policy=MEMBER)
async def allocate_floating_ip(request: Request) -> Response:
    """A new floating IP from a pool (an external network, by name or id)."""
    _until_2_35(request)
    ctx = context(request)
    ctx.require_write("os_compute_api:os-floating-ips:create")
    body = await json_body(request) if await request.body() else None
    if body is not None and not isinstance(body, dict):
        raise BadRequest("Invalid input for field/attribute body. Value should be an object.")
    pool = (body or {}).get("pool")
    if pool is not None and not isinstance(pool, str):
        raise BadRequest("Invalid input for field/attribute pool. Value should be a string.")
    externals = await _external_networks(request, ctx)
    if pool:
        matches = [n for n in externals if pool in (n.name, n.id)]
        if not matches:
            raise NotFound("Floating IP pool not found.")
        if len(matches) > 1:
            raise Conflict(f"Multiple floating IP pools match name or id {pool[:64]}.")
        network = matches[0]
    elif len(externals) == 1:
        network = externals[0]
    elif not externals:
        raise NotFound("No more floating IPs available.")
    else:
        raise BadRequest("There are several floating IP pools; name one as 'pool'.")
    try:
        reply = await call(
            network_stub(request).CreateFloatingIp,
            npb.CreateFloatingIpRequest(
                request_id=request_id(request),
                scope=_scope(ctx),
                floating_ip=npb.FloatingIp(floating_network_id=network.id),
            ),
        )
    except NeutronError as exc:
        where = f" in pool {pool[:64]}" if pool else ""
        if exc.error_type == "OverQuota":
            raise Forbidden(f"IP allocation over quota{where}.") from exc
        if exc.error_type == "IpAddressGenerationFailure":
            if pool:
                raise NotFound(f"No more floating IPs in pool {pool[:64]}.") from exc
            raise NotFound("No more floating IPs available.") from exc
        raise BadRequest(exc.message) from exc
    return ok({"floating_ip": (await _views(request, ctx, [reply.floating_ip]))[0]})


@documented(tag="compute", policy=MEMBER)
async def release_floating_ip(request: Request) -> Response:
    """Releases a floating IP (disassociating it first)."""
    _until_2_35(request)
    ctx = context(request)
    ctx.require_write("os_compute_api:os-floating-ips:delete")
    fip = await _by_id(request, ctx, request.path_params["floating_ip_id"])
    await call(
        network_stub(request).DeleteFloatingIp,
        npb.DeleteFloatingIpRequest(request_id=request_id(request), scope=_scope(ctx), id=fip.id),
    )
    return empty(202)


@documented(tag="compute", policy=AUTHENTICATED)
async def list_pools(request: Request) -> Response:
    """The floating IP pools: the external networks, by name."""
    _until_2_35(request)
    ctx = context(request)
    pools = [{"name": _pool_name(n)} for n in await _external_networks(request, ctx)]
    return ok({"floating_ip_pools": pools})


def _address(body: Any, action: str, field: str, *, required: bool) -> str | None:
    value = body.get(field) if isinstance(body, dict) else None
    if value is None:
        if required:
            raise BadRequest(f"Invalid input for field/attribute {action}. '{field}' is required.")
        return None
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError:
        raise BadRequest(
            f"Invalid input for field/attribute {field}. Value: {str(value)[:64]}."
            " It is not an IP address."
        ) from None


def check_action_body(action: str, body: Any) -> None:
    """Nova's schema of the action: an object with `address` (and for addFloatingIp an
    optional `fixed_address`), each an IP address, nothing else."""
    if not isinstance(body, dict):
        raise BadRequest(f"Invalid input for field/attribute {action}. Value should be an object.")
    allowed = {"address", "fixed_address"} if action == "addFloatingIp" else {"address"}
    extra = sorted(set(body) - allowed)
    if extra:
        raise BadRequest(
            f"Invalid input for field/attribute {action}. Additional properties are not"
            f" allowed ('{extra[0][:64]}' was unexpected)"
        )
    _address(body, action, "address", required=True)
    _address(body, action, "fixed_address", required=False)


async def server_action(
    request: Request, ctx: RequestContext, server: servers_pb2.Server, action: str, body: Any
) -> None:
    """addFloatingIp maps the address to the server's port holding `fixed_address` (its
    first IPv4 address when not given); removeFloatingIp unmaps it from the server."""
    check_action_body(action, body)
    address = _address(body, action, "address", required=True)
    assert address is not None
    stub = network_stub(request)
    owner = npb.Scope(project_id=server.project_id, is_admin=False)
    fip = await _by_address(request, ctx, address)
    ports = (
        await call(stub.ListPorts, npb.ListPortsRequest(scope=owner, device_id=server.id))
    ).ports
    if action == "removeFloatingIp":
        if not fip.port_id or fip.port_id not in {p.id for p in ports}:
            raise Conflict(f"Floating IP {address} is not associated with instance {server.id}.")
        await call(
            stub.UpdateFloatingIp,
            npb.UpdateFloatingIpRequest(
                request_id=request_id(request), scope=_scope(ctx), id=fip.id, port_id=""
            ),
        )
        return
    fixed_ips = [(p.id, f.ip_address) for p in ports for f in p.fixed_ips]
    if not fixed_ips:
        raise BadRequest("No fixed IPs associated to instance")
    fixed_address = _address(body, action, "fixed_address", required=False)
    if fixed_address is not None:
        chosen = next((pair for pair in fixed_ips if pair[1] == fixed_address), None)
        if chosen is None:
            raise BadRequest("Specified fixed address not assigned to instance")
    else:
        chosen = next(
            (pair for pair in fixed_ips if ipaddress.ip_address(pair[1]).version == 4), None
        )
        if chosen is None:
            raise BadRequest(
                f"Unable to associate floating IP {address} to any fixed IPs for instance"
                f" {server.id}. Instance has no fixed IPv4 addresses to associate."
            )
    try:
        await call(
            stub.UpdateFloatingIp,
            npb.UpdateFloatingIpRequest(
                request_id=request_id(request),
                scope=_scope(ctx),
                id=fip.id,
                port_id=chosen[0],
                fixed_ip_address=chosen[1],
            ),
        )
    except NeutronError as exc:
        if exc.status >= 500:
            raise
        raise BadRequest(
            f"Unable to associate floating IP {address} to fixed IP {chosen[1]} for instance"
            f" {server.id}. Error: {exc.message}"
        ) from exc


def refuse_after_2_43(request: Request) -> None:
    """The actions are gone from 2.44: Nova answers as for an unknown resource."""
    if microversion(request).at_least("2.44"):
        raise NotFound(_GONE)


def routes() -> list[BaseRoute]:
    fips = "/compute/v2.1/os-floating-ips"
    return [
        Route(fips, list_floating_ips, methods=["GET"]),
        Route(fips, allocate_floating_ip, methods=["POST"]),
        Route(fips + "/{floating_ip_id}", show_floating_ip, methods=["GET"]),
        Route(fips + "/{floating_ip_id}", release_floating_ip, methods=["DELETE"]),
        Route("/compute/v2.1/os-floating-ip-pools", list_pools, methods=["GET"]),
    ]
