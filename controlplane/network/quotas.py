"""The network domain's quotas: a limit per project and resource (its own row, else the
default), checked before a create."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import case, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from controlplane.db.models import (
    FloatingIp,
    Network,
    NetworkQuota,
    Port,
    Router,
    SecurityGroup,
    SecurityGroupRule,
)
from controlplane.db.models import Subnet as SubnetRow
from controlplane.network.errors import Invalid, OverQuota
from controlplane.network.scope import check_project_id

# The defaults of a project without limits of its own (Neutron's).
DEFAULT_LIMITS: Mapping[str, int] = {
    "network": 100,
    "subnet": 100,
    "port": 500,
    "security_group": 10,
    "security_group_rule": 100,
    "router": 10,
    "floatingip": 50,
}

_PROJECT_COLUMNS: Mapping[str, InstrumentedAttribute[str]] = {
    "network": Network.project_id,
    "subnet": SubnetRow.project_id,
    "port": Port.project_id,
    "security_group": SecurityGroup.project_id,
    "security_group_rule": SecurityGroupRule.project_id,
    "router": Router.project_id,
    "floatingip": FloatingIp.project_id,
}


async def _count(s: AsyncSession, resource: str, project_id: str) -> int:
    column = _PROJECT_COLUMNS[resource]
    count = await s.scalar(select(func.count()).where(column == project_id))
    return int(count or 0)


async def limits(s: AsyncSession, project_id: str) -> dict[str, int]:
    rows = await s.execute(
        select(NetworkQuota.resource, NetworkQuota.hard_limit).where(
            NetworkQuota.project_id == project_id
        )
    )
    return {**DEFAULT_LIMITS, **{r: int(limit) for r, limit in rows}}


async def usage(s: AsyncSession, project_id: str) -> dict[str, int]:
    return {resource: await _count(s, resource, project_id) for resource in _PROJECT_COLUMNS}


async def check(s: AsyncSession, project_id: str, resource: str, adding: int = 1) -> None:
    """OverQuota unless the project may hold `adding` more of `resource`. One statement:
    the limit, and the count only where the limit is not unlimited (-1)."""
    limit = func.coalesce(
        select(NetworkQuota.hard_limit)
        .where(NetworkQuota.project_id == project_id, NetworkQuota.resource == resource)
        .scalar_subquery(),
        DEFAULT_LIMITS[resource],
    )
    count = select(func.count()).where(_PROJECT_COLUMNS[resource] == project_id).scalar_subquery()
    row = (await s.execute(select(limit, case((limit < 0, 0), else_=count)))).one()
    if row[0] >= 0 and int(row[1] or 0) + adding > row[0]:
        raise OverQuota(resource)


async def set_limits(s: AsyncSession, project_id: str, new: Mapping[str, int]) -> None:
    check_project_id(project_id)
    for resource, limit in new.items():
        if resource not in DEFAULT_LIMITS:
            raise Invalid(f"Unrecognized attribute(s) '{resource[:64]}'")
        if limit < -1:
            raise Invalid(f"'{limit}' should be an integer greater than or equal to -1")
        row = await s.get(NetworkQuota, (project_id, resource))
        if row is None:
            s.add(NetworkQuota(project_id=project_id, resource=resource, hard_limit=limit))
        else:
            row.hard_limit = limit


async def reset(s: AsyncSession, project_id: str) -> None:
    await s.execute(delete(NetworkQuota).where(NetworkQuota.project_id == project_id))


async def projects_with_limits(s: AsyncSession) -> list[str]:
    rows = await s.scalars(
        select(NetworkQuota.project_id).distinct().order_by(NetworkQuota.project_id)
    )
    return list(rows)
