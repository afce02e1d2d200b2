"""Noting router changes in the transaction that makes them (see router_feed.py for how
they reach the L3 host)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import RouterChange
from controlplane.runtime.rpc import now


def note(s: AsyncSession, router_ids: Iterable[str | None]) -> None:
    """Notes that these routers' host must be told their current state."""
    at = now()
    s.add_all(RouterChange(router_id=r, created_at=at) for r in dict.fromkeys(router_ids) if r)
