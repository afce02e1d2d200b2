"""Security groups under concurrency: one default group per project however many first
uses race, and one rule however many identical creates race."""

from __future__ import annotations

import asyncio

import grpc
from loom.network.v1 import network_pb2 as pb
from sqlalchemy import func, select

from controlplane.db.models import SecurityGroup, SecurityGroupRule
from tests.network.conftest import Net


async def test_racing_first_uses_make_one_default_group_with_the_default_rules(net: Net) -> None:
    replies = await asyncio.gather(
        *(
            net.stub.ListSecurityGroups(pb.ListSecurityGroupsRequest(scope=net.scope("fresh")))
            for _ in range(10)
        )
    )
    ids = {tuple(g.id for g in r.security_groups) for r in replies}
    assert len(ids) == 1
    ((group_id,),) = ids
    async with net.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(SecurityGroup)) == 1
        rules = list(
            await s.scalars(
                select(SecurityGroupRule).where(SecurityGroupRule.security_group_id == group_id)
            )
        )
    assert sorted((r.direction, r.ethertype, r.remote_group_id) for r in rules) == [
        ("egress", "IPv4", None),
        ("egress", "IPv6", None),
        ("ingress", "IPv4", group_id),
        ("ingress", "IPv6", group_id),
    ]


async def test_racing_identical_rules_make_one_and_the_rest_are_told_it_exists(net: Net) -> None:
    groups = await net.stub.ListSecurityGroups(pb.ListSecurityGroupsRequest(scope=net.scope()))
    group_id = groups.security_groups[0].id
    rule = pb.SecurityGroupRule(
        security_group_id=group_id,
        direction="ingress",
        protocol="tcp",
        port_range_min=443,
        port_range_max=443,
    )

    async def create() -> pb.SecurityGroupRule | grpc.aio.AioRpcError:
        try:
            reply = await net.stub.CreateSecurityGroupRule(
                pb.CreateSecurityGroupRuleRequest(scope=net.scope(), rule=rule)
            )
        except grpc.aio.AioRpcError as exc:
            return exc
        return reply.rule

    results = await asyncio.gather(*(create() for _ in range(8)))
    made = [r for r in results if isinstance(r, pb.SecurityGroupRule)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(made) == 1
    assert len(refused) == 7
    kinds = {
        next(str(v) for k, v in (e.trailing_metadata() or ()) if k == "loom-error-type")
        for e in refused
    }
    assert kinds == {"SecurityGroupRuleExists"}
