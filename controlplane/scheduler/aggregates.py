"""Host aggregates: named sets of hosts with metadata, stored by the scheduler.

An aggregate's `availability_zone` metadata makes its hosts a zone; `filter_tenant_id*`,
image-property keys and flavor extra-spec keys are read by the aggregate filters; the
`cpu/ram/disk_allocation_ratio` keys set the members' allocation ratios (the lowest wins).

What the filters and claims read is derived onto each member's `resource_providers` row
in the same transaction as the change: the merged metadata, the zone and the effective
ratios. So a claim stays the one conditional UPDATE on that row, a ratio can never be
lowered below what a host already uses (the change is refused), and every host cache sees
the change with the row's generation. Aggregate writes are serialised by an advisory lock
on PostgreSQL and lock the member rows (in id order) before reading what they derive from;
an inventory report locks its row the same way, so neither works from a stale view.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from controlplane.db.dialect import as_utc as _aware
from controlplane.db.models import Aggregate, AggregateHost, AggregateMetadata, ResourceProvider
from controlplane.runtime.errors import Conflict, InvalidArgument, NotFound
from controlplane.scheduler.hoststate import (
    RATIO_KEYS,
    HostState,
    ResourceClass,
    effective_ratio,
    merge_metadata,
    parse_ratio,
)
from controlplane.scheduler.store import host_from_row, utcnow

AGG = cast(Table, Aggregate.__table__)
MEMBERS = cast(Table, AggregateHost.__table__)
META = cast(Table, AggregateMetadata.__table__)
RP = cast(Table, ResourceProvider.__table__)

ZONE_KEY = "availability_zone"
# The zone that holds the control plane's own services in os-availability-zone: never an
# aggregate's zone.
INTERNAL_ZONE = "internal"
MAX_LENGTH = 255
_PREFIX = {
    ResourceClass.VCPU: "vcpu",
    ResourceClass.MEMORY_MB: "memory_mb",
    ResourceClass.DISK_GB: "disk_gb",
}


@dataclass(frozen=True, slots=True)
class AggregateRecord:
    """An aggregate as stored."""

    id: int
    uuid: str
    name: str
    hosts: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def availability_zone(self) -> str | None:
        return self.metadata.get(ZONE_KEY)


@dataclass(frozen=True, slots=True)
class AggregateChange:
    """An aggregate after a write, and its members' rows as the write left them."""

    aggregate: AggregateRecord
    hosts: tuple[HostState, ...] = ()


# ------------------------------------------------------------------ validation


def valid_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidArgument("An aggregate name must not be empty.")
    if len(name) > MAX_LENGTH:
        raise InvalidArgument(f"An aggregate name is at most {MAX_LENGTH} characters.")
    return name


def valid_zone(zone: str) -> str:
    """A zone name as given to an aggregate: not empty, no ':' (the boot API's "zone:host"
    form would be ambiguous) and not the internal zone."""
    zone = zone.strip()
    if not zone:
        raise InvalidArgument("An aggregate's availability zone must not be empty.")
    if len(zone) > MAX_LENGTH:
        raise InvalidArgument(f"An availability zone name is at most {MAX_LENGTH} characters.")
    if ":" in zone:
        raise InvalidArgument(f"An availability zone name must not contain ':' ({zone!r}).")
    if zone == INTERNAL_ZONE:
        raise InvalidArgument(f"{INTERNAL_ZONE!r} is reserved for Loom's own services.")
    return zone


def valid_metadata(items: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in items.items():
        if not key or len(key) > MAX_LENGTH:
            raise InvalidArgument(f"Metadata keys are 1 to {MAX_LENGTH} characters long.")
        if len(value) > MAX_LENGTH:
            raise InvalidArgument(f"The value of metadata item {key[:64]!r} is too long.")
        if key == ZONE_KEY:
            value = valid_zone(value)
        if key in RATIO_KEYS.values() and parse_ratio(value) is None:
            raise InvalidArgument(f"{key} must be a positive number, not {value[:64]!r}.")
        out[key] = value
    return out


# ------------------------------------------------------------------ the store


class AggregateStore:
    """Reads and writes of aggregates; each write is one transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._pg = engine.dialect.name == "postgresql"

    async def list_all(self) -> list[AggregateRecord]:
        async with self.engine.connect() as conn:
            return await self._load(conn)

    async def get(self, aggregate_id: int) -> AggregateRecord:
        async with self.engine.connect() as conn:
            return await self._one(conn, aggregate_id)

    async def create(self, name: str, zone: str = "") -> AggregateRecord:
        """Postcondition: the aggregate exists with that name (and zone metadata)."""
        name = valid_name(name)
        zone = valid_zone(zone) if zone.strip() else ""
        async with self._writing() as conn:
            agg_id = await self._insert(conn, name)
            if zone:
                await conn.execute(
                    insert(META).values(aggregate_id=agg_id, key=ZONE_KEY, value=zone)
                )
            return await self._one(conn, agg_id)

    async def update(
        self, aggregate_id: int, name: str | None = None, zone: str | None = None
    ) -> AggregateChange:
        """Renames it and/or sets its zone ("" removes it). Refuses a zone change that
        would put a member in two zones or move hosts holding instances (InvalidArgument)."""
        new_name = valid_name(name) if name is not None else None
        async with self._writing() as conn:
            agg = await self._one(conn, aggregate_id)
            hosts: tuple[HostState, ...] = ()
            if zone is not None:
                if zone.strip():
                    change = {ZONE_KEY: valid_zone(zone)}
                    gone: list[str] = []
                else:
                    change, gone = {}, [ZONE_KEY]
                hosts = await self._change_metadata(
                    conn, agg, change, gone, conflict=InvalidArgument
                )
            if new_name is not None and new_name != agg.name:
                await self._rename(conn, agg.id, new_name)
            await self._touch(conn, aggregate_id)
            return AggregateChange(await self._one(conn, aggregate_id), hosts)

    async def delete(self, aggregate_id: int) -> None:
        """Deletes an empty aggregate; InvalidArgument when hosts remain in it."""
        async with self._writing() as conn:
            agg = await self._one(conn, aggregate_id)
            if agg.hosts:
                raise InvalidArgument(
                    f"Cannot delete aggregate {aggregate_id}: it still holds hosts "
                    f"({', '.join(agg.hosts[:5])})."
                )
            await conn.execute(delete(AGG).where(AGG.c.id == aggregate_id))

    async def add_host(self, aggregate_id: int, host: str) -> AggregateChange:
        """Postcondition: the host is a member. Conflict when it is one already, or when it
        would then be in two zones or above a lowered allocation ratio."""
        async with self._writing() as conn:
            agg = await self._one(conn, aggregate_id)
            provider_id = await self._provider_id(conn, host)
            if host in agg.hosts:
                raise Conflict(f"Host {host} is already in aggregate {aggregate_id}.")
            await self._lock_rows(conn, [provider_id])
            zone = agg.availability_zone
            if zone is not None:
                other = await self._zones_of(conn, [provider_id], but=aggregate_id)
                clash = sorted(z for z in other.get(provider_id, set()) if z != zone)
                if clash:
                    raise Conflict(
                        f"Cannot add host {host} to aggregate {aggregate_id}: it is in "
                        f"availability zone {clash[0]!r} already, and a host is in one zone."
                    )
            await conn.execute(
                insert(MEMBERS).values(aggregate_id=aggregate_id, provider_id=provider_id)
            )
            hosts = await self._derive(conn, [provider_id])
            await self._touch(conn, aggregate_id)
            return AggregateChange(await self._one(conn, aggregate_id), hosts)

    async def remove_host(self, aggregate_id: int, host: str) -> AggregateChange:
        """Postcondition: the host is not a member; NotFound when it was not one."""
        async with self._writing() as conn:
            agg = await self._one(conn, aggregate_id)
            if host not in agg.hosts:
                raise NotFound(f"Cannot remove host {host} in aggregate {aggregate_id}.")
            provider_id = await self._provider_id(conn, host)
            await self._lock_rows(conn, [provider_id])
            await conn.execute(
                delete(MEMBERS).where(
                    MEMBERS.c.aggregate_id == aggregate_id, MEMBERS.c.provider_id == provider_id
                )
            )
            hosts = await self._derive(conn, [provider_id])
            await self._touch(conn, aggregate_id)
            return AggregateChange(await self._one(conn, aggregate_id), hosts)

    async def set_metadata(
        self, aggregate_id: int, items: Mapping[str, str], remove: Iterable[str] = ()
    ) -> AggregateChange:
        """Sets `items` and deletes `remove` (absent keys ignored), in one transaction."""
        items = valid_metadata(items)
        gone = [k for k in remove if k not in items]
        async with self._writing() as conn:
            agg = await self._one(conn, aggregate_id)
            hosts = await self._change_metadata(conn, agg, items, gone, conflict=InvalidArgument)
            await self._touch(conn, aggregate_id)
            return AggregateChange(await self._one(conn, aggregate_id), hosts)

    async def set_host_zone(self, host: str, zone: str) -> HostState:
        """Puts the host in `zone`: it leaves its other zone aggregates and joins the one
        whose zone that is (made, named after the zone, when there is none); "" puts it in
        the default zone. This is a host's own setting (the agent's configured zone, or an
        operator's SetHostAvailabilityZone), so unlike an aggregate's zone change it does
        not refuse a host that holds instances. NotFound for an unknown host."""
        zone = valid_zone(zone) if zone.strip() else ""
        async with self._writing() as conn:
            provider_id = await self._provider_id(conn, host)
            await self._lock_rows(conn, [provider_id])
            zoned = select(META.c.aggregate_id).where(META.c.key == ZONE_KEY)
            if zone:
                zoned = zoned.where(META.c.value != zone)
            await conn.execute(
                delete(MEMBERS).where(
                    MEMBERS.c.provider_id == provider_id, MEMBERS.c.aggregate_id.in_(zoned)
                )
            )
            if zone:
                target = (
                    await conn.execute(
                        select(META.c.aggregate_id)
                        .where(META.c.key == ZONE_KEY, META.c.value == zone)
                        .order_by(META.c.aggregate_id)
                        .limit(1)
                    )
                ).scalar_one_or_none()
                if target is None:
                    target = await self._insert(conn, zone)
                    await conn.execute(
                        insert(META).values(aggregate_id=target, key=ZONE_KEY, value=zone)
                    )
                member = (
                    await conn.execute(
                        select(MEMBERS.c.id).where(
                            MEMBERS.c.aggregate_id == target, MEMBERS.c.provider_id == provider_id
                        )
                    )
                ).first()
                if member is None:
                    await conn.execute(
                        insert(MEMBERS).values(aggregate_id=target, provider_id=provider_id)
                    )
            (changed,) = await self._derive(conn, [provider_id])
            return changed

    # ------------------------------------------------------------------ internals

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction; on PostgreSQL aggregate writes take turns (advisory lock)."""
        async with self.engine.begin() as conn:
            if self._pg:
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtextextended('loom.aggregates', 0))")
                )
            yield conn

    async def _insert(self, conn: AsyncConnection, name: str) -> int:
        exists = (await conn.execute(select(AGG.c.id).where(AGG.c.name == name))).first()
        if exists is not None:
            raise Conflict(f"Aggregate {name} already exists.")
        try:
            result = await conn.execute(
                insert(AGG)
                .values(uuid=str(uuid.uuid4()), name=name, created_at=utcnow())
                .returning(AGG.c.id)
            )
        except IntegrityError:
            raise Conflict(f"Aggregate {name} already exists.") from None
        return int(result.scalar_one())

    async def _rename(self, conn: AsyncConnection, aggregate_id: int, name: str) -> None:
        taken = (
            await conn.execute(select(AGG.c.id).where(AGG.c.name == name, AGG.c.id != aggregate_id))
        ).first()
        if taken is not None:
            raise Conflict(f"Aggregate {name} already exists.")
        await conn.execute(update(AGG).where(AGG.c.id == aggregate_id).values(name=name))

    async def _touch(self, conn: AsyncConnection, aggregate_id: int) -> None:
        await conn.execute(update(AGG).where(AGG.c.id == aggregate_id).values(updated_at=utcnow()))

    async def _provider_id(self, conn: AsyncConnection, host: str) -> int:
        found = (await conn.execute(select(RP.c.id).where(RP.c.name == host))).scalar_one_or_none()
        if found is None:
            raise NotFound(f"Compute host {host} could not be found.")
        return int(found)

    async def _lock_rows(self, conn: AsyncConnection, provider_ids: Sequence[int]) -> None:
        # In id order, as every writer of several rows does: no lock cycles.
        if provider_ids:
            await conn.execute(
                select(RP.c.id)
                .where(RP.c.id.in_(sorted(provider_ids)))
                .order_by(RP.c.id)
                .with_for_update()
            )

    async def _members(self, conn: AsyncConnection, aggregate_id: int) -> list[int]:
        rows = await conn.execute(
            select(MEMBERS.c.provider_id).where(MEMBERS.c.aggregate_id == aggregate_id)
        )
        return sorted(int(r) for r in rows.scalars())

    async def _zones_of(
        self, conn: AsyncConnection, provider_ids: Sequence[int], but: int
    ) -> dict[int, set[str]]:
        """The zones each host is in through aggregates other than `but`."""
        rows = await conn.execute(
            select(MEMBERS.c.provider_id, META.c.value)
            .join(META, META.c.aggregate_id == MEMBERS.c.aggregate_id)
            .where(
                META.c.key == ZONE_KEY,
                MEMBERS.c.provider_id.in_(provider_ids),
                MEMBERS.c.aggregate_id != but,
            )
        )
        out: dict[int, set[str]] = {}
        for pid, zone in rows:
            out.setdefault(int(pid), set()).add(zone)
        return out

    async def _change_metadata(
        self,
        conn: AsyncConnection,
        agg: AggregateRecord,
        items: Mapping[str, str],
        gone: Sequence[str],
        conflict: type[Exception],
    ) -> tuple[HostState, ...]:
        members = await self._members(conn, agg.id)
        await self._lock_rows(conn, members)
        old_zone = agg.availability_zone
        new_zone = items.get(ZONE_KEY, None if ZONE_KEY in gone else old_zone)
        if new_zone != old_zone and members:
            if new_zone is not None:
                others = await self._zones_of(conn, members, but=agg.id)
                clash = sorted({z for zs in others.values() for z in zs if z != new_zone})
                if clash:
                    raise conflict(
                        f"Cannot set the availability zone of aggregate {agg.id} to "
                        f"{new_zone!r}: one or more hosts are in availability zone(s) "
                        f"{', '.join(clash)} already."
                    )
            busy = (
                (
                    await conn.execute(
                        select(RP.c.name).where(RP.c.id.in_(members), RP.c.allocation_count > 0)
                    )
                )
                .scalars()
                .all()
            )
            if busy:
                raise conflict(
                    f"Cannot change the availability zone of aggregate {agg.id}: host(s) "
                    f"{', '.join(sorted(busy)[:5])} hold instances."
                )
        if gone:
            await conn.execute(
                delete(META).where(META.c.aggregate_id == agg.id, META.c.key.in_(list(gone)))
            )
        for key, value in items.items():
            changed = await conn.execute(
                update(META)
                .where(META.c.aggregate_id == agg.id, META.c.key == key)
                .values(value=value)
            )
            if changed.rowcount == 0:
                await conn.execute(insert(META).values(aggregate_id=agg.id, key=key, value=value))
        return await self._derive(conn, members)

    async def _derive(
        self, conn: AsyncConnection, provider_ids: Sequence[int]
    ) -> tuple[HostState, ...]:
        """Writes each host's merged metadata, zone and effective ratios onto its row, in
        the caller's transaction (rows already locked). Conflict, and the whole change
        rolled back, when a host's usage would exceed a lowered limit."""
        out: list[HostState] = []
        for pid in sorted(provider_ids):
            out.append(await derive_host(conn, pid))
        return tuple(out)

    async def _load(self, conn: AsyncConnection, only: int | None = None) -> list[AggregateRecord]:
        aggs = select(AGG).order_by(AGG.c.id)
        hosts = (
            select(MEMBERS.c.aggregate_id, RP.c.name)
            .join(RP, RP.c.id == MEMBERS.c.provider_id)
            .order_by(RP.c.name)
        )
        meta = select(META.c.aggregate_id, META.c.key, META.c.value).order_by(META.c.key)
        if only is not None:
            aggs = aggs.where(AGG.c.id == only)
            hosts = hosts.where(MEMBERS.c.aggregate_id == only)
            meta = meta.where(META.c.aggregate_id == only)
        members: dict[int, list[str]] = {}
        for agg_id, name in await conn.execute(hosts):
            members.setdefault(int(agg_id), []).append(name)
        metadata: dict[int, dict[str, str]] = {}
        for agg_id, key, value in await conn.execute(meta):
            metadata.setdefault(int(agg_id), {})[key] = value
        return [
            AggregateRecord(
                id=int(r.id),
                uuid=r.uuid,
                name=r.name,
                hosts=tuple(members.get(int(r.id), ())),
                metadata=metadata.get(int(r.id), {}),
                created_at=_aware(r.created_at),
                updated_at=_aware(r.updated_at),
            )
            for r in await conn.execute(aggs)
        ]

    async def _one(self, conn: AsyncConnection, aggregate_id: int) -> AggregateRecord:
        found = await self._load(conn, aggregate_id)
        if not found:
            raise NotFound(f"Aggregate {aggregate_id} could not be found.")
        return found[0]


async def derive_host(conn: AsyncConnection, provider_id: int) -> HostState:
    """Recomputes one host's derived columns from the aggregate tables (row locked by the
    caller); Conflict when its usage would no longer fit."""
    row = (await conn.execute(select(RP).where(RP.c.id == provider_id))).one()
    items = (
        await conn.execute(
            select(META.c.key, META.c.value)
            .join(MEMBERS, MEMBERS.c.aggregate_id == META.c.aggregate_id)
            .where(MEMBERS.c.provider_id == provider_id)
        )
    ).all()
    merged = merge_metadata((k, v) for k, v in items)
    zones = merged.get(ZONE_KEY, [])
    view = {k: tuple(v) for k, v in merged.items()}
    values: dict[str, Any] = {
        "aggregate_metadata": merged,
        "availability_zone": zones[0] if zones else None,
        "generation": RP.c.generation + 1,
        "updated_at": utcnow(),
    }
    for rc, p in _PREFIX.items():
        own = row._mapping[f"{p}_host_ratio"]
        own = float(own if own is not None else row._mapping[f"{p}_ratio"])
        ratio = effective_ratio(rc, view, own)
        limit = row._mapping[f"{p}_total"] * ratio - row._mapping[f"{p}_reserved"]
        if row._mapping[f"{p}_used"] > limit:
            raise Conflict(
                f"Host {row.name} already uses {row._mapping[f'{p}_used']} {rc.value}, more "
                f"than an allocation ratio of {ratio:g} allows ({limit:g})."
            )
        values[f"{p}_ratio"] = ratio
        values[f"{p}_host_ratio"] = own
    stmt = update(RP).where(RP.c.id == provider_id).values(**values).returning(*RP.c)
    return host_from_row((await conn.execute(stmt)).one())
