"""os-security-groups and os-security-group-rules: the compute API's proxy to the network
service's security groups (up to 2.35; 404 from 2.36), in the compute API's shapes and
errors. A group shows its ingress rules only (an egress rule has no form here); a rule is
`ip_protocol` with `from_port`/`to_port` (-1 for any ICMP type or code) and either an
`ip_range` or a source `group`. `GET /servers/{id}/os-security-groups` lists the groups
of the server's ports."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Sequence
from typing import Any

from loom.network.v1 import network_pb2 as npb
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext
from gateway.compute.common import context, ok
from gateway.compute.interfaces import server_of
from gateway.compute.server_networks import call_network, network_stub
from gateway.errors import ApiError, BadRequest, NotFound
from gateway.routing import MEMBER, READER, documented
from gateway.state import json_body, microversion, request_id

_GONE = "The resource could not be found."
_MAX_LEN = 255
_PROTOCOLS = ("tcp", "udp", "icmp")


def _until_2_35(request: Request) -> None:
    if microversion(request).at_least("2.36"):
        raise NotFound(_GONE)


def _scope(ctx: RequestContext, *, all_projects: bool = False) -> npb.Scope:
    return npb.Scope(project_id=ctx.project_id, is_admin=ctx.is_admin and all_projects)


def _as_400(exc: ApiError) -> ApiError:
    """The network service's conflicts (a rule that exists, a group in use, the default
    group) are the compute API's 400s."""
    return BadRequest(exc.message) if exc.status == 409 else exc


def _group_id(value: Any, what: str = "Security group id") -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise BadRequest(f"{what} should be uuid") from None


def _rule_view(r: npb.SecurityGroupRule, names: dict[str, tuple[str, str]]) -> dict[str, Any]:
    protocol = r.protocol or None
    if r.HasField("port_range_min") or r.HasField("port_range_max"):
        low: int | None = r.port_range_min if r.HasField("port_range_min") else -1
        high: int | None = r.port_range_max if r.HasField("port_range_max") else -1
    elif protocol in ("tcp", "udp"):
        low, high = 1, 65535
    elif protocol:
        low, high = -1, -1
    else:
        low = high = None
    view: dict[str, Any] = {
        "id": r.id,
        "parent_group_id": r.security_group_id,
        "ip_protocol": protocol,
        "from_port": low,
        "to_port": high,
        "group": {},
        "ip_range": {},
    }
    if r.remote_group_id:
        name, project = names.get(r.remote_group_id, ("", ""))
        view["group"] = {"name": name, "tenant_id": project}
    else:
        view["ip_range"] = {"cidr": r.remote_ip_prefix or "0.0.0.0/0"}
    return view


def _group_view(g: npb.SecurityGroup, names: dict[str, tuple[str, str]]) -> dict[str, Any]:
    return {
        "id": g.id,
        "name": g.name,
        "description": g.description,
        "tenant_id": g.project_id,
        "rules": [_rule_view(r, names) for r in g.rules if r.direction == "ingress"],
    }


async def _names(
    request: Request, ctx: RequestContext, groups: Sequence[npb.SecurityGroup]
) -> dict[str, tuple[str, str]]:
    """(name, project) of every group the rules name as their source."""
    names = {g.id: (g.name, g.project_id) for g in groups}
    wanted = {r.remote_group_id for g in groups for r in g.rules if r.remote_group_id} - set(names)
    stub = network_stub(request)
    for gid in sorted(wanted):
        try:
            got = await call_network(
                stub.GetSecurityGroup,
                npb.GetSecurityGroupRequest(scope=_scope(ctx, all_projects=True), id=gid),
            )
        except ApiError:
            continue
        names[gid] = (got.security_group.name, got.security_group.project_id)
    return names


async def _one(request: Request, ctx: RequestContext, group: npb.SecurityGroup) -> Response:
    """The answer showing one group."""
    return ok({"security_group": _group_view(group, await _names(request, ctx, [group]))})


async def _get(request: Request, ctx: RequestContext, group_id: str) -> npb.SecurityGroup:
    try:
        reply = await call_network(
            network_stub(request).GetSecurityGroup,
            npb.GetSecurityGroupRequest(scope=_scope(ctx, all_projects=True), id=group_id),
        )
    except ApiError as exc:
        if exc.status in (400, 404):
            raise NotFound(f"Security group {group_id} not found.") from exc
        raise
    group: npb.SecurityGroup = reply.security_group
    return group


def _text(body: dict[str, Any], key: str, *, required: bool) -> str | None:
    """Nova's checks of a group's name or description."""
    if key not in body or body[key] is None:
        if required:
            raise BadRequest(f"Security group {key} is not a string or unicode")
        return None
    value = body[key]
    if not isinstance(value, str):
        raise BadRequest(f"Security group {key} is not a string or unicode")
    # Checked without surrounding spaces, kept as given (as Nova keeps it).
    if key == "name" and not value.strip():
        raise BadRequest("Security group name cannot be empty")
    if len(value.strip()) > _MAX_LEN:
        raise BadRequest(f"{key} has more than {_MAX_LEN} characters.")
    return value


async def _group_body(request: Request) -> dict[str, Any]:
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("security_group"), dict):
        raise BadRequest("The request body must hold a 'security_group' object.")
    group: dict[str, Any] = body["security_group"]
    return group


@documented(tag="compute", policy=READER)
async def list_groups(request: Request) -> Response:
    """The project's security groups (every project's for an admin with all_tenants)."""
    _until_2_35(request)
    ctx = context(request)
    ctx.require_read("os_compute_api:os-security-groups:get")
    everyone = ctx.is_admin and request.query_params.get("all_tenants", "0") not in ("0", "")
    reply = await call_network(
        network_stub(request).ListSecurityGroups,
        npb.ListSecurityGroupsRequest(scope=_scope(ctx, all_projects=everyone)),
    )
    groups = [g for g in reply.security_groups if everyone or g.project_id == ctx.project_id]
    try:
        offset = int(request.query_params.get("offset", "0"))
        limit = int(request.query_params.get("limit", str(len(groups))))
    except ValueError:
        raise BadRequest("limit and offset must be integers") from None
    if offset < 0 or limit < 0:
        raise BadRequest("limit and offset must not be negative")
    groups = sorted(groups, key=lambda g: (g.project_id, g.name, g.id))[offset : offset + limit]
    names = await _names(request, ctx, groups)
    return ok({"security_groups": [_group_view(g, names) for g in groups]})


@documented(tag="compute", policy=MEMBER)
async def create_group(request: Request) -> Response:
    """A new security group (name and description, each at most 255 characters)."""
    _until_2_35(request)
    ctx = context(request)
    ctx.require_write("os_compute_api:os-security-groups:create")
    body = await _group_body(request)
    name = _text(body, "name", required=True)
    description = _text(body, "description", required=True)
    try:
        reply = await call_network(
            network_stub(request).CreateSecurityGroup,
            npb.CreateSecurityGroupRequest(
                request_id=request_id(request),
                scope=_scope(ctx),
                security_group=npb.SecurityGroup(name=name or "", description=description or ""),
            ),
        )
    except ApiError as exc:
        raise _as_400(exc) from exc
    group = reply.security_group
    return await _one(request, ctx, group)


@documented(tag="compute", policy=READER)
async def show_group(request: Request) -> Response:
    """One security group."""
    _until_2_35(request)
    ctx = context(request)
    ctx.require_read("os_compute_api:os-security-groups:get")
    group = await _get(request, ctx, request.path_params["group_id"])
    return await _one(request, ctx, group)


@documented(tag="compute", policy=MEMBER)
async def update_group(request: Request) -> Response:
    """A group's new name or description."""
    _until_2_35(request)
    ctx = context(request)
    ctx.require_write("os_compute_api:os-security-groups:update")
    group_id = request.path_params["group_id"]
    await _get(request, ctx, group_id)
    body = await _group_body(request)
    name = _text(body, "name", required=False)
    description = _text(body, "description", required=False)
    req = npb.UpdateSecurityGroupRequest(
        request_id=request_id(request), scope=_scope(ctx, all_projects=True), id=group_id
    )
    if name is not None:
        req.name = name
    if description is not None:
        req.description = description
    try:
        reply = await call_network(network_stub(request).UpdateSecurityGroup, req)
    except ApiError as exc:
        raise _as_400(exc) from exc
    group = reply.security_group
    return await _one(request, ctx, group)


@documented(tag="compute", policy=MEMBER)
async def delete_group(request: Request) -> Response:
    """Deletes a group; 400 for the default group or one in use."""
    _until_2_35(request)
    ctx = context(request)
    ctx.require_write("os_compute_api:os-security-groups:delete")
    group_id = request.path_params["group_id"]
    await _get(request, ctx, group_id)
    try:
        await call_network(
            network_stub(request).DeleteSecurityGroup,
            npb.DeleteSecurityGroupRequest(
                request_id=request_id(request), scope=_scope(ctx, all_projects=True), id=group_id
            ),
        )
    except ApiError as exc:
        raise _as_400(exc) from exc
    return Response(status_code=202)


def _port(value: Any, what: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{what} must be integers") from None


def _rule(body: dict[str, Any]) -> tuple[str | None, int | None, int | None, str | None]:
    """(protocol, port_range_min, port_range_max, cidr) of a rule body, checked as Nova
    checks it (group_id is read by the caller)."""
    raw = body.get("ip_protocol")
    protocol = str(raw).lower() if raw is not None else None
    what = "Type and Code" if protocol == "icmp" else "To and From ports"
    low, high = _port(body.get("from_port"), what), _port(body.get("to_port"), what)
    cidr = None
    if body.get("group_id") is None:
        cidr = body.get("cidr") or "0.0.0.0/0"
        try:
            ipaddress.ip_network(str(cidr), strict=False)
        except ValueError:
            raise BadRequest(f"Invalid CIDR {str(cidr)[:64]}") from None
        # Kept as given (10.2.3.124/24 stays so, as the compute API shows it); the network
        # service matches it as its network.
        cidr = str(ipaddress.ip_interface(str(cidr)))
    elif protocol in ("tcp", "udp") and low is None and high is None:
        low, high = 1, 65535
    elif protocol == "icmp" and low is None and high is None:
        low, high = -1, -1
    if protocol is None or low is None or high is None:
        if cidr is not None or protocol is not None:
            raise BadRequest("Not enough parameters to build a valid rule.")
        return None, None, None, None
    if protocol not in _PROTOCOLS:
        raise BadRequest(f"Invalid IP protocol {str(raw)[:64]}.")
    if protocol in ("tcp", "udp"):
        if low > high:
            raise BadRequest(
                f"Invalid port range {low}:{high}. Former value cannot be greater than the later"
            )
        if low < 1 or high > 65535:
            raise BadRequest(
                f"Invalid port range {low}:{high}. Valid {protocol.upper()} ports should be"
                " between 1-65535"
            )
        return protocol, low, high, cidr
    if not (-1 <= low <= 255 and -1 <= high <= 255):
        raise BadRequest(f"Invalid port range {low}:{high}. For ICMP, the type:code must be valid")
    if low == -1 and high != -1:
        raise BadRequest(f"Invalid port range {low}:{high}. For ICMP, the type:code must be valid")
    return protocol, None if low == -1 else low, None if high == -1 else high, cidr


@documented(tag="compute", policy=MEMBER)
async def create_rule(request: Request) -> Response:
    """An ingress rule in a group: a protocol and port range from a CIDR or a group."""
    _until_2_35(request)
    ctx = context(request)
    ctx.require_write("os_compute_api:os-security-group-rules:create")
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("security_group_rule"), dict):
        raise BadRequest("The request body must hold a 'security_group_rule' object.")
    given: dict[str, Any] = body["security_group_rule"]
    parent_id = _group_id(given.get("parent_group_id"))
    parent = await _get(request, ctx, parent_id)
    source = None
    if given.get("group_id") is not None:
        source = await _get(request, ctx, _group_id(given["group_id"]))
    protocol, low, high, cidr = _rule(given)
    rule = npb.SecurityGroupRule(
        security_group_id=parent.id,
        direction="ingress",
        ethertype="IPv6" if cidr and ":" in cidr else "IPv4",
        protocol=protocol or "",
        remote_ip_prefix=cidr or "",
        remote_group_id=source.id if source is not None else "",
    )
    if low is not None:
        rule.port_range_min = low
    if high is not None:
        rule.port_range_max = high
    try:
        reply = await call_network(
            network_stub(request).CreateSecurityGroupRule,
            npb.CreateSecurityGroupRuleRequest(
                request_id=request_id(request), scope=_scope(ctx, all_projects=True), rule=rule
            ),
        )
    except ApiError as exc:
        if exc.status == 409:
            raise BadRequest(f"This rule already exists in group {parent.id}") from exc
        raise
    names = {parent.id: (parent.name, parent.project_id)}
    if source is not None:
        names[source.id] = (source.name, source.project_id)
    return ok({"security_group_rule": _rule_view(reply.rule, names)})


@documented(tag="compute", policy=MEMBER)
async def delete_rule(request: Request) -> Response:
    """Deletes a rule."""
    _until_2_35(request)
    ctx = context(request)
    ctx.require_write("os_compute_api:os-security-group-rules:delete")
    rule_id = request.path_params["rule_id"]
    try:
        await call_network(
            network_stub(request).DeleteSecurityGroupRule,
            npb.DeleteSecurityGroupRuleRequest(
                request_id=request_id(request), scope=_scope(ctx, all_projects=True), id=rule_id
            ),
        )
    except ApiError as exc:
        if exc.status in (400, 404):
            raise NotFound(f"Security group rule {rule_id} not found.") from exc
        raise
    return Response(status_code=202)


@documented(tag="compute", policy=READER)
async def server_groups(request: Request) -> Response:
    """The security groups of a server's ports."""
    _until_2_35(request)
    ctx = context(request)
    ctx.require_read("os_compute_api:os-security-groups:list")
    server = await server_of(request, ctx)
    stub = network_stub(request)
    scope = npb.Scope(project_id=server.project_id, is_admin=ctx.is_admin)
    ports = (
        await call_network(stub.ListPorts, npb.ListPortsRequest(scope=scope, device_id=server.id))
    ).ports
    wanted = list(dict.fromkeys(g for p in ports for g in p.security_group_ids))
    groups = [await _get(request, ctx, gid) for gid in wanted]
    names = await _names(request, ctx, groups)
    return ok({"security_groups": [_group_view(g, names) for g in groups]})


def routes() -> list[BaseRoute]:
    groups = "/compute/v2.1/os-security-groups"
    rules = "/compute/v2.1/os-security-group-rules"
    return [
        Route(groups, list_groups, methods=["GET"]),
        Route(groups, create_group, methods=["POST"]),
        Route(groups + "/{group_id}", show_group, methods=["GET"]),
        Route(groups + "/{group_id}", update_group, methods=["PUT"]),
        Route(groups + "/{group_id}", delete_group, methods=["DELETE"]),
        Route(rules, create_rule, methods=["POST"]),
        Route(rules + "/{rule_id}", delete_rule, methods=["DELETE"]),
        Route(
            "/compute/v2.1/servers/{server_id}/os-security-groups", server_groups, methods=["GET"]
        ),
    ]
