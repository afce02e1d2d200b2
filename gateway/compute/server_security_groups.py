"""A server's security groups, as the compute API shows and changes them: the groups of
its ports in the network service (one ListPorts for a page of servers, one
ListSecurityGroups for the names), and the addSecurityGroup / removeSecurityGroup
actions, which change every port of the server. The network domain carries the change
to the hosts (docs/design.md, "Security changes after the build")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loom.conductor.v1 import servers_pb2
from loom.network.v1 import network_pb2 as npb
from starlette.requests import Request

from gateway.auth.context import RequestContext
from gateway.compute.server_networks import call_network, match_security_group, network_stub
from gateway.errors import BadRequest, NotFound
from gateway.state import request_id


async def names_by_server(
    request: Request, ctx: RequestContext, servers: Sequence[servers_pb2.Server]
) -> dict[str, list[str]]:
    """Each server's security group names (its ports' groups, in order, once each); a
    server with no port, or whose ports are in no group, is left out, as Nova leaves out
    its `security_groups`. A server's
    ports are bound with its addresses (in one transaction), so one without addresses
    costs no call."""
    ids = [s.id for s in servers if s.addresses]
    if not ids:
        return {}
    stub = network_stub(request)
    scope = npb.Scope(project_id=ctx.project_id, is_admin=ctx.is_admin)
    ports = (
        await call_network(stub.ListPorts, npb.ListPortsRequest(scope=scope, device_ids=ids))
    ).ports
    if not ports:
        return {}
    groups = await call_network(stub.ListSecurityGroups, npb.ListSecurityGroupsRequest(scope=scope))
    name_of = {g.id: g.name for g in groups.security_groups}
    out: dict[str, list[str]] = {}
    for port in sorted(ports, key=lambda p: p.id):
        names = out.setdefault(port.device_id, [])
        for group_id in port.security_group_ids:
            name = name_of.get(group_id, group_id)
            if name not in names:
                names.append(name)
    # A server whose ports are in no group shows no `security_groups`, as Nova shows it.
    return {server_id: names for server_id, names in out.items() if names}


def _group_name(body: Any) -> str:
    """Nova's parsing of the action's body, with its messages."""
    if not isinstance(body, dict):
        raise BadRequest("Missing parameter dict")
    if "name" not in body:
        raise BadRequest("Security group not specified")
    name = body["name"]
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("Security group name cannot be empty")
    return name.strip()


async def change(
    request: Request, ctx: RequestContext, server: servers_pb2.Server, action: str, body: Any
) -> None:
    """addSecurityGroup / removeSecurityGroup on every port of the server. 400 for a
    server with no port, a port without port security, or (remove) a group the server
    is not in; 404 for an unknown group; 409 for an ambiguous name."""
    name = _group_name(body)
    stub = network_stub(request)
    scope = npb.Scope(project_id=server.project_id, is_admin=False)
    listed = await call_network(stub.ListSecurityGroups, npb.ListSecurityGroupsRequest(scope=scope))
    group_id = match_security_group(listed.security_groups, server.project_id, name)
    if group_id is None:
        raise NotFound(f"Security group {name[:64]} not found.")
    ports = (
        await call_network(stub.ListPorts, npb.ListPortsRequest(scope=scope, device_id=server.id))
    ).ports
    if not ports:
        raise BadRequest(f"instance_id {server.id} could not be found as device id on any ports")
    adding = action == "addSecurityGroup"
    if adding:
        for port in ports:
            if not port.port_security_enabled or not port.fixed_ips:
                raise BadRequest(
                    f"Cannot add security group {name[:64]} to {server.id} since the port"
                    f" {port.id} does not meet security requirements"
                )
    elif not any(group_id in p.security_group_ids for p in ports):
        raise BadRequest(
            f"Security group {name[:64]} is not associated with the instance {server.id}"
        )
    for port in ports:
        now = list(port.security_group_ids)
        wanted = (
            [*now, group_id]
            if adding and group_id not in now
            else [g for g in now if g != group_id]
        )
        if wanted == now:
            continue
        await call_network(
            stub.UpdatePort,
            npb.UpdatePortRequest(
                request_id=f"{request_id(request)}-{port.id}",
                scope=scope,
                id=port.id,
                security_group_ids=npb.StringList(values=wanted),
            ),
        )
