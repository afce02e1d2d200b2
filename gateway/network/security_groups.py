"""Network v2.0 security groups and their rules."""

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
    delete_by_id,
    get_by_id,
    listing,
    one,
    resource_body,
    scope,
    stub,
)
from gateway.routing import MEMBER, READER, documented
from gateway.state import request_id

# ------------------------------------------------------------------ security groups


@documented(tag=TAG, policy=READER)
async def list_security_groups(request: Request) -> Response:
    """Security groups the caller sees (its project's default made on first use)."""
    ctx = context(request)
    ctx.require_read("get_security_group")

    async def fetch(limit: int, marker: str) -> list[dict[str, Any]]:
        reply = await call(
            stub(request).ListSecurityGroups,
            pb.ListSecurityGroupsRequest(scope=scope(ctx), limit=limit, marker=marker),
        )
        return [views.security_group(g) for g in reply.security_groups]

    return await listing(request, "security_groups", fetch, attrs=views.SECURITY_GROUP_ATTRS)


@documented(
    body=schemas.wrapped("security_group", schemas.SECURITY_GROUP_CREATE), tag=TAG, policy=MEMBER
)
async def create_security_group(request: Request) -> Response:
    """Create a security group (with egress rules for IPv4 and IPv6)."""
    ctx = context(request)
    ctx.require_write("create_security_group")
    body = await resource_body(request, "security_group", schemas.SECURITY_GROUP_CREATE)
    group = pb.SecurityGroup(
        project_id=body.get("project_id", ""),
        name=body.get("name", ""),
        description=body.get("description", ""),
    )
    reply = await call(
        stub(request).CreateSecurityGroup,
        pb.CreateSecurityGroupRequest(
            request_id=request_id(request), scope=scope(ctx), security_group=group
        ),
    )
    return ok({"security_group": views.security_group(reply.security_group)}, 201)


@documented(tag=TAG, policy=READER)
async def show_security_group(request: Request) -> Response:
    """One security group with its rules."""
    reply = await get_by_id(request, "get_security_group", "GetSecurityGroup")
    return one(request, "security_group", views.security_group(reply.security_group))


@documented(
    body=schemas.wrapped("security_group", schemas.SECURITY_GROUP_UPDATE), tag=TAG, policy=MEMBER
)
async def update_security_group(request: Request) -> Response:
    """Rename or describe a security group."""
    ctx = context(request)
    ctx.require_write("update_security_group")
    body = await resource_body(request, "security_group", schemas.SECURITY_GROUP_UPDATE)
    req = pb.UpdateSecurityGroupRequest(
        request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
    )
    for key in ("name", "description"):
        if key in body:
            setattr(req, key, body[key])
    reply = await call(stub(request).UpdateSecurityGroup, req)
    return ok({"security_group": views.security_group(reply.security_group)})


@documented(tag=TAG, policy=MEMBER)
async def delete_security_group(request: Request) -> Response:
    """Delete a security group (409 SecurityGroupInUse while a port uses it)."""
    return await delete_by_id(request, "delete_security_group", "DeleteSecurityGroup")


@documented(tag=TAG, policy=READER)
async def list_rules(request: Request) -> Response:
    """Security group rules the caller sees."""
    ctx = context(request)
    ctx.require_read("get_security_group_rule")

    async def fetch(limit: int, marker: str) -> list[dict[str, Any]]:
        reply = await call(
            stub(request).ListSecurityGroupRules,
            pb.ListSecurityGroupRulesRequest(scope=scope(ctx), limit=limit, marker=marker),
        )
        return [views.rule(r) for r in reply.rules]

    return await listing(request, "security_group_rules", fetch, attrs=views.RULE_ATTRS)


@documented(
    body=schemas.wrapped("security_group_rule", schemas.RULE_CREATE), tag=TAG, policy=MEMBER
)
async def create_rule(request: Request) -> Response:
    """Create a rule (409 SecurityGroupRuleExists for a duplicate)."""
    ctx = context(request)
    ctx.require_write("create_security_group_rule")
    body = await resource_body(request, "security_group_rule", schemas.RULE_CREATE)
    rule = pb.SecurityGroupRule(
        project_id=body.get("project_id", ""),
        security_group_id=body["security_group_id"],
        direction=body["direction"],
        ethertype=body.get("ethertype", "IPv4"),
        protocol="" if body.get("protocol") is None else str(body["protocol"]),
        remote_ip_prefix=body.get("remote_ip_prefix") or "",
        remote_group_id=body.get("remote_group_id") or "",
        description=body.get("description", ""),
    )
    if body.get("port_range_min") is not None:
        rule.port_range_min = body["port_range_min"]
    if body.get("port_range_max") is not None:
        rule.port_range_max = body["port_range_max"]
    reply = await call(
        stub(request).CreateSecurityGroupRule,
        pb.CreateSecurityGroupRuleRequest(
            request_id=request_id(request), scope=scope(ctx), rule=rule
        ),
    )
    return ok({"security_group_rule": views.rule(reply.rule)}, 201)


@documented(tag=TAG, policy=READER)
async def show_rule(request: Request) -> Response:
    """One security group rule."""
    reply = await get_by_id(request, "get_security_group_rule", "GetSecurityGroupRule")
    return one(request, "security_group_rule", views.rule(reply.rule))


@documented(tag=TAG, policy=MEMBER)
async def delete_rule(request: Request) -> Response:
    """Delete a security group rule."""
    return await delete_by_id(request, "delete_security_group_rule", "DeleteSecurityGroupRule")
