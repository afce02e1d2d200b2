"""Factories that keep scheduler tests short: a host, a request, a cycle."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from controlplane.scheduler.hoststate import HostState, Inventory, Resources
from controlplane.scheduler.request import CycleState, PlacementRequest

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DOWN_AFTER = timedelta(seconds=60)
_ids = itertools.count(1)
NOTHING = Resources()


def make_host(
    name: str = "",
    *,
    vcpus: int = 16,
    memory_mb: int = 32768,
    disk_gb: int = 500,
    used: Resources = NOTHING,
    ratios: tuple[float, float, float] = (1.0, 1.0, 1.0),
    reserved: Resources = NOTHING,
    zone: str | None = None,
    enabled: bool = True,
    up: bool = True,
    allocation_count: int = 0,
    metadata: dict[str, tuple[str, ...]] | None = None,
    forced_down: bool = False,
) -> HostState:
    """A host that is enabled, up and empty unless told otherwise."""
    host_id = next(_ids)
    return HostState(
        id=host_id,
        name=name or f"host-{host_id}",
        availability_zone=zone,
        vcpu=Inventory(vcpus, reserved.vcpus, ratios[0], used.vcpus),
        memory_mb=Inventory(memory_mb, reserved.memory_mb, ratios[1], used.memory_mb),
        disk_gb=Inventory(disk_gb, reserved.disk_gb, ratios[2], used.disk_gb),
        enabled=enabled,
        last_heartbeat_at=NOW - timedelta(seconds=5) if up else NOW - timedelta(hours=1),
        allocation_count=allocation_count,
        metadata=MappingProxyType(metadata or {}),
        forced_down=forced_down,
    )


def make_request(
    *,
    vcpus: int = 1,
    memory_mb: int = 512,
    disk_gb: int = 10,
    consumer_id: str = "consumer-1",
    zone: str = "",
    ignore_hosts: frozenset[str] = frozenset(),
    force_host: str = "",
    num_alternates: int = 0,
    project_id: str = "",
    extra_specs: dict[str, str] | None = None,
    image_properties: dict[str, str] | None = None,
) -> PlacementRequest:
    return PlacementRequest(
        project_id=project_id,
        flavor_extra_specs=extra_specs or {},
        image_properties=image_properties or {},
        consumer_id=consumer_id,
        resources=Resources(vcpus, memory_mb, disk_gb),
        availability_zone=zone,
        ignore_hosts=ignore_hosts,
        force_host=force_host,
        num_alternates=num_alternates,
    )


def make_cycle(request: PlacementRequest | None = None) -> CycleState:
    return CycleState(request=request or make_request(), now=NOW, down_after=DOWN_AFTER)
