"""The scheduler's view of one host: capacity, usage and liveness, as an immutable value.

A `HostState` is a snapshot. Decisions read snapshots; only the store changes the truth,
and the host cache swaps in a new snapshot after each write it learns of.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

# Hosts in no zone belong to this one (the name clients expect).
DEFAULT_AVAILABILITY_ZONE = "nova"


class ResourceClass(StrEnum):
    """The resource classes a host provides and a consumer claims."""

    VCPU = "VCPU"
    MEMORY_MB = "MEMORY_MB"
    DISK_GB = "DISK_GB"


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of each resource class (what a consumer claims)."""

    vcpus: int = 0
    memory_mb: int = 0
    disk_gb: int = 0

    def amount(self, rc: ResourceClass) -> int:
        if rc is ResourceClass.VCPU:
            return self.vcpus
        if rc is ResourceClass.MEMORY_MB:
            return self.memory_mb
        return self.disk_gb

    def negative_classes(self) -> list[ResourceClass]:
        """The classes with a negative amount (an invalid request when non-empty)."""
        return [rc for rc in ResourceClass if self.amount(rc) < 0]

    def plus(self, other: Resources, times: int = 1) -> Resources:
        """These amounts with `times` x `other` added (negative `times` takes away)."""
        return Resources(
            self.vcpus + times * other.vcpus,
            self.memory_mb + times * other.memory_mb,
            self.disk_gb + times * other.disk_gb,
        )


NO_RESOURCES = Resources()

# Aggregate metadata of a host: each key with the value every aggregate holding it gave.
AggregateMetadata = Mapping[str, tuple[str, ...]]
NO_METADATA: AggregateMetadata = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Inventory:
    """One resource class on one host.

    `limit` is the most that may ever be used: total x ratio - reserved. The database's
    CHECK constraints use the same expression, so the filter and the claim agree exactly.
    `limit` and `free` are computed once per snapshot: filters read them for every host of
    every decision.
    """

    total: int = 0
    reserved: int = 0
    ratio: float = 1.0
    used: int = 0
    limit: float = field(init=False, repr=False, compare=False)
    # What can still be claimed, rounded down (never negative).
    free: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        limit = self.total * self.ratio - self.reserved
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "free", max(0, math.floor(limit - self.used)))

    def using(self, more: int) -> Inventory:
        """This inventory with `more` in use (negative: less)."""
        if more == 0:
            return self
        return Inventory(self.total, self.reserved, self.ratio, self.used + more)

    def fits(self, amount: int) -> bool:
        return self.used + amount <= self.limit


@dataclass(frozen=True, slots=True)
class HostState:
    """A host as a resource provider, at one moment.

    `up` is not stored: it depends on the clock, so `is_up(now, down_after)` derives it from
    the last heartbeat the scheduler knows of.
    """

    id: int
    name: str
    uuid: str = ""
    availability_zone: str | None = None
    vcpu: Inventory = Inventory()
    memory_mb: Inventory = Inventory()
    disk_gb: Inventory = Inventory()
    allocation_count: int = 0
    enabled: bool = True
    disabled_reason: str | None = None
    last_heartbeat_at: datetime | None = None
    compute_endpoint: str = ""
    generation: int = 0
    hypervisor_type: str = ""
    hypervisor_version: int = 0
    host_ip: str = ""
    cpu_info: str = ""
    # An operator forced it down: not up, whatever its heartbeats say.
    forced_down: bool = False
    # Its aggregates' metadata merged (see AggregateMetadata); the store derives it from
    # the aggregate tables, and the generation changes with it.
    metadata: AggregateMetadata = field(default_factory=lambda: NO_METADATA, compare=False)

    @property
    def zone(self) -> str:
        """The zone name clients see, with the built-in default zone."""
        return self.availability_zone or DEFAULT_AVAILABILITY_ZONE

    def zone_or(self, default: str) -> str:
        """The zone name clients see, `default` when in no zone aggregate."""
        return self.availability_zone or default

    def inventory(self, rc: ResourceClass) -> Inventory:
        if rc is ResourceClass.VCPU:
            return self.vcpu
        if rc is ResourceClass.MEMORY_MB:
            return self.memory_mb
        return self.disk_gb

    def is_up(self, now: datetime, down_after: timedelta) -> bool:
        """True when not forced down and a heartbeat arrived within `down_after` before `now`."""
        return (
            not self.forced_down
            and self.last_heartbeat_at is not None
            and now - self.last_heartbeat_at <= down_after
        )

    def metadata_values(self, key: str) -> set[str]:
        """Every value the host's aggregates give `key`, comma-separated lists split."""
        return {v.strip() for raw in self.metadata.get(key, ()) for v in raw.split(",")}

    def first_class_short(self, wanted: Resources) -> ResourceClass | None:
        """The first resource class that cannot take `wanted`, or None when all fit."""
        # Spelled out rather than looped over the enum: this runs for every host of
        # every decision, and it is the pipeline's hottest line.
        if self.vcpu.used + wanted.vcpus > self.vcpu.limit:
            return ResourceClass.VCPU
        if self.memory_mb.used + wanted.memory_mb > self.memory_mb.limit:
            return ResourceClass.MEMORY_MB
        if self.disk_gb.used + wanted.disk_gb > self.disk_gb.limit:
            return ResourceClass.DISK_GB
        return None

    def with_usage(self, delta: Resources, allocations: int) -> HostState:
        """This host with `delta` more in use and `allocations` more consumers (either may be
        negative: a reservation taken back)."""
        if allocations == 0 and delta == NO_RESOURCES:
            return self
        # Inventories built directly: dataclasses.replace costs several times as much, and
        # this runs twice for every claim.
        return dataclasses.replace(
            self,
            vcpu=self.vcpu.using(delta.vcpus),
            memory_mb=self.memory_mb.using(delta.memory_mb),
            disk_gb=self.disk_gb.using(delta.disk_gb),
            allocation_count=self.allocation_count + allocations,
        )

    def with_heartbeat(self, at: datetime | None) -> HostState:
        """This host with the later of its known heartbeat and `at`."""
        if at is None or (self.last_heartbeat_at is not None and self.last_heartbeat_at >= at):
            return self
        return dataclasses.replace(self, last_heartbeat_at=at)


# Aggregate metadata keys that set a resource class's allocation ratio on member hosts.
RATIO_KEYS = {
    ResourceClass.VCPU: "cpu_allocation_ratio",
    ResourceClass.MEMORY_MB: "ram_allocation_ratio",
    ResourceClass.DISK_GB: "disk_allocation_ratio",
}


def parse_ratio(text: str) -> float | None:
    """An allocation ratio given as aggregate metadata; None when not a positive number."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def effective_ratio(rc: ResourceClass, metadata: AggregateMetadata, host_ratio: float) -> float:
    """The ratio a host's claims are held to: the lowest its aggregates set for the class
    (a host in several aggregates keeps the strictest promise), else its own."""
    given = [r for v in metadata.get(RATIO_KEYS[rc], ()) if (r := parse_ratio(v)) is not None]
    return min(given) if given else host_ratio


def merge_metadata(items: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """(key, value) of each aggregate a host is in, as the host's metadata: each key with
    its values sorted (the form stored on the host's row)."""
    merged: dict[str, list[str]] = {}
    for key, value in items:
        merged.setdefault(key, []).append(value)
    return {k: sorted(v) for k, v in sorted(merged.items())}


@dataclass(frozen=True, slots=True)
class InventoryUpdate:
    """A host's capacity as its agent (or an operator) reports it; ratios already resolved.

    `availability_zone` only applies when the host is new: once a host exists, its zone is
    the operator's to change (SetHostAvailabilityZone), not the agent's.
    """

    host: str
    vcpu: Inventory
    memory_mb: Inventory
    disk_gb: Inventory
    hypervisor_type: str = ""
    hypervisor_version: int = 0
    compute_endpoint: str = ""
    host_ip: str = ""
    cpu_info: str = ""
    availability_zone: str | None = None
