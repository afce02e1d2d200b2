"""Noting security changes in the transaction that makes them (see port_security.py for
how they reach the hosts), and which bound ports a change touches."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import insert, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import Port, PortSecurityChange, PortSecurityGroup, SecurityGroupRule
from controlplane.runtime.rpc import now


async def note_groups(s: AsyncSession, group_ids: Iterable[str]) -> None:
    """The rules or the members of these groups changed."""
    at = now()
    s.add_all(PortSecurityChange(group_id=g, created_at=at) for g in dict.fromkeys(group_ids))


async def note_groups_of(s: AsyncSession, port_ids: Sequence[str]) -> None:
    """The members of these ports' groups change (the ports go): note_groups of
    groups_of, in one statement."""
    if not port_ids:
        return
    members = (
        select(
            PortSecurityGroup.security_group_id,
            literal(now(), PortSecurityChange.created_at.type),
        )
        .where(PortSecurityGroup.port_id.in_(port_ids))
        .distinct()
    )
    await s.execute(
        insert(PortSecurityChange).from_select(
            [PortSecurityChange.group_id, PortSecurityChange.created_at], members
        )
    )


async def note_ports(s: AsyncSession, port_ids: Iterable[str]) -> None:
    """These ports' own groups, addresses or port security changed."""
    at = now()
    s.add_all(PortSecurityChange(port_id=p, created_at=at) for p in dict.fromkeys(port_ids))


async def groups_of(s: AsyncSession, port_ids: Sequence[str]) -> list[str]:
    """The groups the ports are members of."""
    if not port_ids:
        return []
    return list(
        await s.scalars(
            select(PortSecurityGroup.security_group_id)
            .where(PortSecurityGroup.port_id.in_(port_ids))
            .distinct()
        )
    )


async def affected_ports(
    s: AsyncSession, group_ids: Sequence[str], port_ids: Sequence[str]
) -> list[Port]:
    """The bound compute ports whose chains these changes touch: the ports themselves, the
    members of the groups, and the members of every group with a rule whose remote group is
    one of them."""
    wanted: set[str] = set(port_ids)
    if group_ids:
        referring = list(
            await s.scalars(
                select(SecurityGroupRule.security_group_id)
                .where(SecurityGroupRule.remote_group_id.in_(group_ids))
                .distinct()
            )
        )
        wanted |= set(
            await s.scalars(
                select(PortSecurityGroup.port_id).where(
                    PortSecurityGroup.security_group_id.in_([*group_ids, *referring])
                )
            )
        )
    if not wanted:
        return []
    return list(
        await s.scalars(
            select(Port)
            .where(
                Port.id.in_(sorted(wanted)),
                Port.binding_host_id != "",
                Port.device_owner.like("compute:%"),
            )
            .order_by(Port.id)
        )
    )
