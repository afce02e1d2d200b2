"""Invariant checks straight against the database: what the scheduler must never break."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.scheduler.hoststate import HostState, Inventory, InventoryUpdate
from controlplane.scheduler.store import ProviderStore

_USAGE = text(
    """
    SELECT rp.name,
           rp.vcpu_used, rp.memory_mb_used, rp.disk_gb_used, rp.allocation_count,
           rp.vcpu_total * rp.vcpu_ratio - rp.vcpu_reserved AS vcpu_limit,
           rp.memory_mb_total * rp.memory_mb_ratio - rp.memory_mb_reserved AS mem_limit,
           rp.disk_gb_total * rp.disk_gb_ratio - rp.disk_gb_reserved AS disk_limit,
           COALESCE(SUM(a.vcpus), 0) AS a_vcpus,
           COALESCE(SUM(a.memory_mb), 0) AS a_mem,
           COALESCE(SUM(a.disk_gb), 0) AS a_disk,
           COUNT(a.id) AS a_count
    FROM resource_providers rp LEFT JOIN allocations a ON a.provider_id = rp.id
    GROUP BY rp.id, rp.name, rp.vcpu_used, rp.memory_mb_used, rp.disk_gb_used,
             rp.allocation_count, rp.vcpu_total, rp.vcpu_ratio, rp.vcpu_reserved,
             rp.memory_mb_total, rp.memory_mb_ratio, rp.memory_mb_reserved,
             rp.disk_gb_total, rp.disk_gb_ratio, rp.disk_gb_reserved
    """
)


@dataclass(frozen=True)
class Usage:
    host: str
    used: tuple[int, int, int]
    allocated: tuple[int, int, int]
    allocation_count: int
    allocations: int
    within_capacity: bool


async def usage_by_host(engine: AsyncEngine) -> dict[str, Usage]:
    async with engine.connect() as conn:
        rows = (await conn.execute(_USAGE)).all()
    return {
        r.name: Usage(
            host=r.name,
            used=(r.vcpu_used, r.memory_mb_used, r.disk_gb_used),
            allocated=(int(r.a_vcpus), int(r.a_mem), int(r.a_disk)),
            allocation_count=r.allocation_count,
            allocations=int(r.a_count),
            within_capacity=r.vcpu_used <= r.vcpu_limit
            and r.memory_mb_used <= r.mem_limit
            and r.disk_gb_used <= r.disk_limit,
        )
        for r in rows
    }


async def assert_consistent(engine: AsyncEngine) -> dict[str, Usage]:
    """No host over capacity; usage equals the sum of its allocations, count included."""
    usage = await usage_by_host(engine)
    for u in usage.values():
        assert u.within_capacity, u
        assert u.used == u.allocated, u
        assert u.allocation_count == u.allocations, u
    return usage


async def add_host(
    store: ProviderStore,
    name: str,
    *,
    vcpus: int = 16,
    memory_mb: int = 1000,
    disk_gb: int = 100,
    memory_ratio: float = 1.0,
    memory_reserved: int = 0,
    zone: str | None = None,
) -> HostState:
    host = await store.upsert_inventory(
        InventoryUpdate(
            host=name,
            vcpu=Inventory(vcpus, 0, 1.0),
            memory_mb=Inventory(memory_mb, memory_reserved, memory_ratio),
            disk_gb=Inventory(disk_gb, 0, 1.0),
            availability_zone=zone,
        )
    )
    assert host is not None
    return host
