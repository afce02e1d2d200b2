"""What the network domain's change feeds share: rows noted in the transaction of a
change, claimed for a lease by whichever conductor takes them (disjoint between takers:
SKIP LOCKED where the database has it), deleted once their hosts' commands are queued,
and a named revision counter whose row stays locked to the end of the taking
transaction, so a later revision always describes a later state.

Two feeds use it: port security (port_security.py) and routers (router_feed.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from controlplane.db.dialect import locks_rows, upsert_insert
from controlplane.db.models import NetworkCounter, PortSecurityChange, RouterChange
from controlplane.runtime.rpc import now

DEFAULT_LIMIT = 256
MAX_LIMIT = 1000
DEFAULT_LEASE_S = 30.0

Change = TypeVar("Change", PortSecurityChange, RouterChange)


class _ChangeRow(Protocol):
    id: InstrumentedAttribute[int]
    claimed_until: InstrumentedAttribute[datetime | None]


def bounds(limit: int, lease_s: float) -> tuple[int, float]:
    """A take request's limit and lease, defaults filled in and the limit capped."""
    return min(limit or DEFAULT_LIMIT, MAX_LIMIT), lease_s or DEFAULT_LEASE_S


async def next_revision(s: AsyncSession, counter: str) -> int:
    """The counter's next value; its row stays locked until the transaction ends."""
    bump = (
        update(NetworkCounter)
        .where(NetworkCounter.name == counter)
        .values(value=NetworkCounter.value + 1)
        .returning(NetworkCounter.value)
    )
    value = await s.scalar(bump)
    if value is None:
        await s.execute(
            upsert_insert(s, NetworkCounter)
            .values(name=counter, value=0)
            .on_conflict_do_nothing(index_elements=["name"])
        )
        value = await s.scalar(bump)
    assert value is not None
    return int(value)


async def claim(s: AsyncSession, model: type[Change], limit: int, lease_s: float) -> list[Change]:
    """The oldest changes no one holds, now claimed for `lease_s` seconds."""
    at = now()
    query = (
        select(model)
        .where(or_(model.claimed_until.is_(None), model.claimed_until < at))
        .order_by(model.id)
        .limit(limit)
    )
    if locks_rows(s):
        query = query.with_for_update(skip_locked=True)
    rows = list(await s.scalars(query))
    for row in rows:
        row.claimed_until = at + timedelta(seconds=lease_s)
    await s.flush()
    return rows


async def ack(s: AsyncSession, model: type[Change], change_ids: Sequence[int]) -> None:
    """Forgets changes whose hosts' commands are queued."""
    if change_ids:
        await s.execute(delete(model).where(model.id.in_(change_ids)))
