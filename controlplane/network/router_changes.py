"""Noting router and floating IP changes in the transaction that makes them (see
router_feed.py for how they reach the L3 host and the compute service)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import Port, RouterChange
from controlplane.runtime.rpc import now


def note(s: AsyncSession, router_ids: Iterable[str | None]) -> None:
    """Notes that these routers' host must be told their current state."""
    at = now()
    s.add_all(RouterChange(router_id=r, created_at=at) for r in dict.fromkeys(router_ids) if r)


async def note_port_devices(s: AsyncSession, port_ids: Iterable[str | None]) -> None:
    """Notes that the devices (servers) of these ports have other floating IPs now."""
    ids = [p for p in dict.fromkeys(port_ids) if p]
    if not ids:
        return
    devices = await s.scalars(select(Port.device_id).where(Port.id.in_(ids), Port.device_id != ""))
    at = now()
    s.add_all(RouterChange(device_id=d, created_at=at) for d in dict.fromkeys(devices))
