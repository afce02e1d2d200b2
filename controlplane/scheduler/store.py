"""The scheduler's database writes and reads: providers, claims, releases, liveness.

Every write that changes usage is a conditional statement the database checks atomically,
so correctness never depends on a cache, a lock in this process, or on which database
(PostgreSQL or SQLite) runs underneath. Each returns the provider row as it now is, so the
caller's cache learns the truth without another read.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, cast

import psycopg
from psycopg.errors import DeadlockDetected
from psycopg.rows import dict_row
from sqlalchemy import Table, and_, bindparam, delete, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
)

from controlplane.db.dialect import as_utc as _aware
from controlplane.db.driver import driver_of
from controlplane.db.models import Allocation, ResourceProvider
from controlplane.runtime.stats import STATS
from controlplane.scheduler.hoststate import (
    NO_METADATA,
    AggregateMetadata,
    HostState,
    Inventory,
    InventoryUpdate,
    ResourceClass,
    Resources,
    effective_ratio,
)
from controlplane.scheduler.request import HARD_POLICIES, GroupPolicy, GroupRule

log = logging.getLogger(__name__)

RP = cast(Table, ResourceProvider.__table__)
ALLOC = cast(Table, Allocation.__table__)

# Column prefix of each resource class in resource_providers.
_PREFIX = {
    ResourceClass.VCPU: "vcpu",
    ResourceClass.MEMORY_MB: "memory_mb",
    ResourceClass.DISK_GB: "disk_gb",
}


# (name, generation, last_heartbeat_at) -> True when the caller already holds that row.
KnownRows = Callable[[str, int, datetime | None], bool]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _metadata(value: Any) -> AggregateMetadata:
    if not value:
        return NO_METADATA
    if isinstance(value, str):
        value = json.loads(value)
    return MappingProxyType({str(k): tuple(v) for k, v in value.items()})


def host_from_row(row: Row[Any] | Mapping[str, Any]) -> HostState:
    m = row._mapping if isinstance(row, Row) else row

    def inv(p: str) -> Inventory:
        return Inventory(
            total=int(m[f"{p}_total"]),
            reserved=int(m[f"{p}_reserved"]),
            ratio=float(m[f"{p}_ratio"]),
            used=int(m[f"{p}_used"]),
        )

    return HostState(
        id=int(m["id"]),
        name=m["name"],
        uuid=m["uuid"],
        availability_zone=m["availability_zone"],
        vcpu=inv("vcpu"),
        memory_mb=inv("memory_mb"),
        disk_gb=inv("disk_gb"),
        allocation_count=int(m["allocation_count"]),
        enabled=bool(m["enabled"]),
        disabled_reason=m["disabled_reason"],
        last_heartbeat_at=_aware(m["last_heartbeat_at"]),
        compute_endpoint=m["compute_endpoint"],
        generation=int(m["generation"]),
        hypervisor_type=m["hypervisor_type"],
        hypervisor_version=int(m["hypervisor_version"]),
        host_ip=m["host_ip"],
        cpu_info=m["cpu_info"],
        forced_down=bool(m["forced_down"]),
        metadata=_metadata(m["aggregate_metadata"]),
    )


class ClaimStatus(enum.Enum):
    """How a claim ended."""

    # Resources are now held for the consumer on the host asked for.
    CLAIMED = "claimed"
    # The consumer already held an allocation (maybe on another host); nothing changed.
    EXISTING = "existing"
    # The host had no room when the claim ran (another claim got there first).
    NO_ROOM = "no_room"
    # The host would break the consumer's server-group policy, as the group's allocations
    # stood when the claim ran (a member was placed meanwhile).
    GROUP_CONFLICT = "group_conflict"


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """A claim's outcome. `host` is the provider as it now is (CLAIMED), or the host that
    holds the existing allocation (EXISTING), or None (NO_ROOM)."""

    status: ClaimStatus
    host: HostState | None = None
    existing: Resources | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    """A release's outcome: the provider as it now is when this call freed something."""

    released: bool
    host: HostState | None = None


class MoveStatus(enum.Enum):
    """How a move of an allocation between consumers ended."""

    # The target now holds what the source held.
    MOVED = "moved"
    # Nothing to do: the target already holds it, or the source holds nothing.
    NOTHING = "nothing"
    # Both consumers hold an allocation; nothing changed.
    TARGET_HOLDS_ANOTHER = "target_holds_another"


@dataclass(frozen=True, slots=True)
class MoveResult:
    """A move's outcome and the host of the allocation the target holds ("" for none)."""

    status: MoveStatus
    host: str


@dataclass(frozen=True, slots=True)
class AllocationRecord:
    """What one consumer holds on one host."""

    host: str
    resources: Resources


def _insert_for(conn: AsyncConnection, table: Table) -> Any:
    # ON CONFLICT exists in both dialects, under the same API, but in separate modules.
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _room_condition(table: Any, amounts: Mapping[ResourceClass, Any]) -> Any:
    """used + n <= total x ratio - reserved for every class: the CHECK constraints' own terms."""
    return and_(
        *(
            table.c[f"{p}_used"] + amounts[rc]
            <= table.c[f"{p}_total"] * table.c[f"{p}_ratio"] - table.c[f"{p}_reserved"]
            for rc, p in _PREFIX.items()
        )
    )


# Claims run thousands of times a second: their statements are built once, with bound
# parameters, so each claim only binds values (SQLAlchemy caches the compiled SQL).
_CLAIM_UPDATE = (
    update(RP)
    .where(
        RP.c.id == bindparam("host_id"),
        _room_condition(RP, {rc: bindparam(f"n_{p}") for rc, p in _PREFIX.items()}),
    )
    .values(
        {
            **{f"{p}_used": RP.c[f"{p}_used"] + bindparam(f"n_{p}") for p in _PREFIX.values()},
            "allocation_count": RP.c.allocation_count + 1,
            "generation": RP.c.generation + 1,
        }
    )
    .returning(*RP.c)
)
_ALLOCATION_INSERTS: dict[str, Any] = {}


def _allocation_insert(dialect: str) -> Any:
    """INSERT INTO allocations ... ON CONFLICT (consumer_id) DO NOTHING RETURNING id."""
    stmt = _ALLOCATION_INSERTS.get(dialect)
    if stmt is None:
        base = postgresql.insert(ALLOC) if dialect == "postgresql" else sqlite.insert(ALLOC)
        stmt = base.on_conflict_do_nothing(index_elements=["consumer_id"]).returning(ALLOC.c.id)
        _ALLOCATION_INSERTS[dialect] = stmt
    return stmt


# A release that PostgreSQL chose as a deadlock's victim runs again, up to this many times.
RELEASE_ATTEMPTS = 3
# A lone claim whose connection broke runs once more, on a fresh connection.
CLAIM_ATTEMPTS = 2


def _lost_a_deadlock(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and isinstance(exc.orig, DeadlockDetected)


def _log_release_again(state: RetryCallState) -> None:
    params: dict[str, str] = state.args[1]
    log.warning("release of %s lost a deadlock; releasing again", params["consumer_id"])


def _log_claim_again(state: RetryCallState) -> None:
    log.warning("claim connection lost; claiming again on a new one")


class ProviderStore:
    """Reads and atomic writes of resource providers and allocations.

    `claim_connections` > 0 keeps that many connections open for PostgreSQL claims (call
    `close` when done), so a claim costs one round trip and no pool checkout; 0 checks a
    connection out of the engine's pool for each claim.
    """

    def __init__(self, engine: AsyncEngine, claim_connections: int = 0) -> None:
        self.engine = engine
        self._pg = engine.dialect.name == "postgresql"
        # Single-statement writes need no BEGIN/COMMIT round trips of their own.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._claim_lane = _ClaimLane(self._autocommit, claim_connections)

    async def close(self) -> None:
        """Closes the connections kept open for claims (the engine stays the caller's)."""
        await self._claim_lane.close()

    # ------------------------------------------------------------------ reads

    async def load_hosts(self, known: KnownRows | None = None) -> list[HostState]:
        """Every host, by name; with `known`, only those it does not already know as stored.

        `known(name, generation, last_heartbeat_at)` answers True when the caller holds
        that row as it is: every write that changes a host bumps its generation, and
        heartbeats only move forwards.
        """
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(RP).order_by(RP.c.name))).all()
        if known is None:
            return [host_from_row(r) for r in rows]
        return [
            host_from_row(r)
            for r in rows
            if not known(r.name, r.generation, _aware(r.last_heartbeat_at))
        ]

    async def load_host(self, name: str) -> HostState | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(RP).where(RP.c.name == name))).first()
        return host_from_row(row) if row is not None else None

    async def allocations_of(self, consumer_id: str) -> list[AllocationRecord]:
        stmt = (
            select(RP.c.name, ALLOC.c.vcpus, ALLOC.c.memory_mb, ALLOC.c.disk_gb)
            .join(RP, RP.c.id == ALLOC.c.provider_id)
            .where(ALLOC.c.consumer_id == consumer_id)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [AllocationRecord(r.name, Resources(r.vcpus, r.memory_mb, r.disk_gb)) for r in rows]

    async def hosts_of(self, consumer_ids: Iterable[str]) -> dict[str, str]:
        """The host of each named consumer that holds an allocation (consumer → host name);
        consumers holding none are absent. One statement, none for no consumer."""
        ids = sorted(set(consumer_ids))
        if not ids:
            return {}
        stmt = (
            select(ALLOC.c.consumer_id, RP.c.name)
            .join(RP, RP.c.id == ALLOC.c.provider_id)
            .where(ALLOC.c.consumer_id.in_(ids))
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return {str(consumer): str(host) for consumer, host in rows}

    async def group_members(self, group_id: str, but: str = "") -> dict[str, int]:
        """Members of the group per host, as allocations (every consumer but `but`)."""
        async with self.engine.connect() as conn:
            return await self._group_members(conn, group_id, but)

    async def _group_members(
        self, conn: AsyncConnection, group_id: str, but: str = ""
    ) -> dict[str, int]:
        stmt = (
            select(RP.c.name, func.count())
            .join(RP, RP.c.id == ALLOC.c.provider_id)
            .where(ALLOC.c.group_id == group_id, ALLOC.c.consumer_id != but)
            .group_by(RP.c.name)
        )
        return {name: int(n) for name, n in (await conn.execute(stmt)).all()}

    # ------------------------------------------------------------------ claims

    async def claim_in_group(
        self,
        host: HostState,
        consumer_id: str,
        project_id: str,
        wanted: Resources,
        group: GroupPolicy,
    ) -> ClaimResult:
        """`claim`, for a member of a server group: the allocation records the group, and
        under a hard policy the claim fails (GROUP_CONFLICT) when the host breaks it.

        Claims of one group are serialised in the database (a transaction-scoped advisory
        lock on PostgreSQL; SQLite has one writer), and the policy is checked against the
        group's allocations as committed after the lock is held. So two concurrent claims,
        from one scheduler or several, can never both pass where only one may.
        """
        async with self.engine.begin() as conn:
            if self._pg:
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                    {"key": f"loom.server_group:{group.id}"},
                )
            held = (
                await conn.execute(select(ALLOC.c.id).where(ALLOC.c.consumer_id == consumer_id))
            ).first()
            if held is not None:
                return await self._existing(conn, consumer_id)
            if group.policy in HARD_POLICIES:
                members = await self._group_members(conn, group.id, but=consumer_id)
                reason = GroupRule.tiers(group, members)[0].reason(host.name)
                if reason:
                    await conn.rollback()
                    return ClaimResult(ClaimStatus.GROUP_CONFLICT, reason=reason)
            return await self._insert_and_claim(
                conn, host.id, consumer_id, project_id, wanted, group.id
            )

    async def claim(
        self, host_id: int, consumer_id: str, project_id: str, wanted: Resources
    ) -> ClaimResult:
        """Claims `wanted` for the consumer on the host, atomically.

        Postconditions: CLAIMED means one allocation row exists and the host's usage grew by
        exactly `wanted`, never beyond total x ratio - reserved, whatever ran concurrently.
        EXISTING and NO_ROOM mean nothing changed. Idempotent per consumer.
        On PostgreSQL one statement (one round trip); elsewhere two and a commit.
        """
        if self._pg:
            return await self._claim_in_one_statement(host_id, consumer_id, project_id, wanted)
        async with self.engine.begin() as conn:
            return await self._insert_and_claim(conn, host_id, consumer_id, project_id, wanted)

    async def _insert_and_claim(
        self,
        conn: AsyncConnection,
        host_id: int,
        consumer_id: str,
        project_id: str,
        wanted: Resources,
        group_id: str | None = None,
    ) -> ClaimResult:
        """The claim as two statements in the caller's transaction (rolled back on NO_ROOM)."""
        # The allocation goes in first: the unique consumer_id makes a repeated claim
        # (or a concurrent twin) fall through to EXISTING before any usage changes.
        inserted = await conn.execute(
            _allocation_insert(conn.dialect.name),
            {
                "consumer_id": consumer_id,
                "provider_id": host_id,
                "project_id": project_id,
                "vcpus": wanted.vcpus,
                "memory_mb": wanted.memory_mb,
                "disk_gb": wanted.disk_gb,
                "created_at": utcnow(),
                "group_id": group_id,
            },
        )
        if inserted.first() is None:
            return await self._existing(conn, consumer_id)
        claimed = await conn.execute(
            _CLAIM_UPDATE,
            {
                "host_id": host_id,
                "n_vcpu": wanted.vcpus,
                "n_memory_mb": wanted.memory_mb,
                "n_disk_gb": wanted.disk_gb,
            },
        )
        row = claimed.first()
        if row is None:
            # No room: undo the allocation row with the rest of the transaction.
            await conn.rollback()
            return ClaimResult(ClaimStatus.NO_ROOM)
        return ClaimResult(ClaimStatus.CLAIMED, host_from_row(row))

    async def _claim_in_one_statement(
        self, host_id: int, consumer_id: str, project_id: str, wanted: Resources
    ) -> ClaimResult:
        params = {
            "host_id": host_id,
            "consumer_id": consumer_id,
            "project_id": project_id,
            "n_vcpu": wanted.vcpus,
            "n_memory_mb": wanted.memory_mb,
            "n_disk_gb": wanted.disk_gb,
            "now": utcnow(),
        }
        try:
            row = await self._claim_lane.fetch_one(_PG_CLAIM_SQL, params)
        except psycopg.IntegrityError:
            # A concurrent claim for the same consumer committed first: the unique
            # consumer_id rolled this whole statement back, usage included.
            row = None
        if row is not None:
            return ClaimResult(ClaimStatus.CLAIMED, host_from_row(row))
        async with self.engine.connect() as conn:
            return await self._existing(conn, consumer_id)

    async def _existing(self, conn: AsyncConnection, consumer_id: str) -> ClaimResult:
        stmt = (
            select(
                RP, ALLOC.c.vcpus, ALLOC.c.memory_mb.label("a_mem"), ALLOC.c.disk_gb.label("a_disk")
            )
            .join(ALLOC, RP.c.id == ALLOC.c.provider_id)
            .where(ALLOC.c.consumer_id == consumer_id)
        )
        row = (await conn.execute(stmt)).first()
        await conn.rollback()
        if row is None:
            # No allocation: the host had no room (or the consumer's allocation was
            # released meanwhile; the caller may simply try again).
            return ClaimResult(ClaimStatus.NO_ROOM)
        held = Resources(row.vcpus, row.a_mem, row.a_disk)
        return ClaimResult(ClaimStatus.EXISTING, host_from_row(row), held)

    async def release(self, consumer_id: str, host_name: str = "") -> ReleaseResult:
        """Frees the consumer's allocation (only on `host_name` when given).

        Postconditions: the allocation row is gone and the host's usage fell by exactly what
        it held, once: usage only falls for the row this call's DELETE returned, so two
        concurrent releases free it once. Succeeds (released=False) when there is none.
        On PostgreSQL one statement; elsewhere two and a commit.
        """
        if self._pg:
            row = await self._release_in_one_statement(
                {"consumer_id": consumer_id, "host": host_name}
            )
            if row is None:
                return ReleaseResult(False)
            return ReleaseResult(True, host_from_row(row))
        async with self.engine.begin() as conn:
            cond = [ALLOC.c.consumer_id == consumer_id]
            if host_name:
                cond.append(
                    ALLOC.c.provider_id
                    == select(RP.c.id).where(RP.c.name == host_name).scalar_subquery()
                )
            deleted = (
                await conn.execute(
                    delete(ALLOC)
                    .where(*cond)
                    .returning(
                        ALLOC.c.provider_id, ALLOC.c.vcpus, ALLOC.c.memory_mb, ALLOC.c.disk_gb
                    )
                )
            ).first()
            if deleted is None:
                return ReleaseResult(False)
            freed = Resources(deleted.vcpus, deleted.memory_mb, deleted.disk_gb)
            upd = (
                update(RP)
                .where(RP.c.id == deleted.provider_id)
                .values(
                    {
                        **{
                            f"{p}_used": RP.c[f"{p}_used"] - freed.amount(rc)
                            for rc, p in _PREFIX.items()
                        },
                        "allocation_count": RP.c.allocation_count - 1,
                        "generation": RP.c.generation + 1,
                    }
                )
                .returning(*RP.c)
            )
            row = (await conn.execute(upd)).first()
        return ReleaseResult(True, host_from_row(row) if row is not None else None)

    # The release locks the allocation, then its host; a batch of claims holding that host
    # and waiting on the same consumer's row (a twin claim) closes a cycle, and PostgreSQL
    # aborts one side. An aborted release changed nothing: running it again keeps "exactly
    # once". Any other error is not retried.
    @retry(
        retry=retry_if_exception(_lost_a_deadlock),
        stop=stop_after_attempt(RELEASE_ATTEMPTS),
        before_sleep=_log_release_again,
        reraise=True,
    )
    async def _release_in_one_statement(self, params: dict[str, str]) -> Row[Any] | None:
        async with self._autocommit.connect() as conn:
            return (await conn.execute(_PG_RELEASE, params)).first()

    async def move_allocation(self, source_consumer: str, target_consumer: str) -> MoveResult:
        """Hands the source consumer's allocation to the target consumer: the same row,
        host and amounts under a new consumer id, so no host's usage changes.

        Postconditions: MOVED means the target now holds what the source held; NOTHING
        means nothing changed (the target already holds it, or the source holds none);
        TARGET_HOLDS_ANOTHER means both hold one and nothing changed. The unique consumer
        id makes two concurrent moves of one allocation end with one winner.
        """
        stmt = (
            select(ALLOC.c.consumer_id, RP.c.name)
            .join(RP, RP.c.id == ALLOC.c.provider_id)
            .where(ALLOC.c.consumer_id.in_([source_consumer, target_consumer]))
        )
        try:
            async with self.engine.begin() as conn:
                held = {r.consumer_id: r.name for r in (await conn.execute(stmt)).all()}
                if target_consumer in held:
                    status = (
                        MoveStatus.TARGET_HOLDS_ANOTHER
                        if source_consumer in held
                        else MoveStatus.NOTHING
                    )
                    return MoveResult(status, held[target_consumer])
                if source_consumer not in held:
                    return MoveResult(MoveStatus.NOTHING, "")
                moved = await conn.execute(
                    update(ALLOC)
                    .where(ALLOC.c.consumer_id == source_consumer)
                    .values(consumer_id=target_consumer)
                )
                if moved.rowcount != 1:
                    return MoveResult(MoveStatus.NOTHING, "")
                return MoveResult(MoveStatus.MOVED, held[source_consumer])
        except IntegrityError:
            # A concurrent move gave the target its allocation first.
            async with self.engine.connect() as conn:
                held = {r.consumer_id: r.name for r in (await conn.execute(stmt)).all()}
            return MoveResult(MoveStatus.NOTHING, held.get(target_consumer, ""))

    # ------------------------------------------------------------------ inventory

    async def upsert_inventory(self, inv: InventoryUpdate) -> HostState | None:
        """Creates the provider, or updates its capacity and agent facts.

        Postconditions: the stored host carries `inv`'s totals and reserved amounts, and
        `inv`'s ratios as its own (the *_host_ratio columns); its effective ratios are the
        lowest its aggregates set, else its own. None (and nothing changed) when the new
        capacity would be below what is already used on an existing host. A new host's
        `availability_zone` is stored as given (the caller then makes it an aggregate).
        """
        now = utcnow()
        facts = {
            "hypervisor_type": inv.hypervisor_type,
            "hypervisor_version": inv.hypervisor_version,
            "compute_endpoint": inv.compute_endpoint,
            "host_ip": inv.host_ip,
            "cpu_info": inv.cpu_info,
        }
        async with self.engine.begin() as conn:
            # The row lock orders this write after any aggregate change to the host, so the
            # metadata read below is the one committed last.
            row = (
                await conn.execute(select(RP).where(RP.c.name == inv.host).with_for_update())
            ).first()
            if row is None:
                capacity: dict[str, Any] = {}
                for rc, p in _PREFIX.items():
                    i = _inventory_of(inv, rc)
                    capacity |= {
                        f"{p}_total": i.total,
                        f"{p}_reserved": i.reserved,
                        f"{p}_ratio": i.ratio,
                        f"{p}_host_ratio": i.ratio,
                    }
                ins = (
                    _insert_for(conn, RP)
                    .values(
                        uuid=str(uuid.uuid4()),
                        name=inv.host,
                        availability_zone=inv.availability_zone or None,
                        created_at=now,
                        **capacity,
                        **facts,
                    )
                    .on_conflict_do_nothing(index_elements=["name"])
                    .returning(*RP.c)
                )
                created = (await conn.execute(ins)).first()
                if created is not None:
                    return host_from_row(created)
                # Another report created it meanwhile: update it as below.
                row = (
                    await conn.execute(select(RP).where(RP.c.name == inv.host).with_for_update())
                ).one()
            current = host_from_row(row)
            values: dict[str, Any] = {}
            for rc, p in _PREFIX.items():
                i = _inventory_of(inv, rc)
                ratio = effective_ratio(rc, current.metadata, i.ratio)
                if current.inventory(rc).used > i.total * ratio - i.reserved:
                    log.warning(
                        "inventory refused: capacity below current usage", extra={"host": inv.host}
                    )
                    return None
                values |= {
                    f"{p}_total": i.total,
                    f"{p}_reserved": i.reserved,
                    f"{p}_ratio": ratio,
                    f"{p}_host_ratio": i.ratio,
                }
            stmt = (
                update(RP)
                .where(RP.c.id == current.id)
                .values(**values, **facts, updated_at=now, generation=RP.c.generation + 1)
                .returning(*RP.c)
            )
            return host_from_row((await conn.execute(stmt)).one())

    # ------------------------------------------------------------------ operator changes

    async def set_enabled(self, name: str, enabled: bool, reason: str) -> HostState | None:
        """The host, now enabled or disabled; None when there is no such host."""
        return await self._update_host(
            name, enabled=enabled, disabled_reason=None if enabled else (reason or None)
        )

    async def set_forced_down(self, name: str, forced_down: bool) -> HostState | None:
        """The host, now forced down or not; None when there is no such host."""
        return await self._update_host(name, forced_down=forced_down)

    async def _update_host(self, name: str, **values: Any) -> HostState | None:
        stmt = (
            update(RP)
            .where(RP.c.name == name)
            .values(**values, updated_at=utcnow(), generation=RP.c.generation + 1)
            .returning(*RP.c)
        )
        async with self.engine.begin() as conn:
            row = (await conn.execute(stmt)).first()
        return host_from_row(row) if row is not None else None

    # ------------------------------------------------------------------ liveness

    async def record_heartbeats(self, seen: Mapping[str, datetime]) -> None:
        """Stores the latest heartbeat time per host, in one statement batch.

        Never moves a host's last_heartbeat_at backwards (another replica may have newer).
        Hosts with no provider yet are skipped.
        """
        if not seen:
            return
        stmt = (
            update(RP)
            .where(
                RP.c.name == bindparam("host"),
                or_(RP.c.last_heartbeat_at.is_(None), RP.c.last_heartbeat_at < bindparam("at")),
            )
            .values(last_heartbeat_at=bindparam("at"))
        )
        if self._pg:
            # One statement over two arrays: at 10,000 hosts a flush is ~10,000 rows.
            async with self._autocommit.connect() as conn:
                await conn.execute(
                    _PG_HEARTBEATS, {"hosts": list(seen), "ats": list(seen.values())}
                )
            return
        params: Sequence[dict[str, Any]] = [{"host": h, "at": at} for h, at in seen.items()]
        async with self.engine.begin() as conn:
            await conn.execute(stmt, params)


# PostgreSQL claims in one statement: the UPDATE checks room (the CHECK constraints' own
# terms) and that the consumer holds nothing yet; the INSERT adds the allocation for the
# row the UPDATE returned. A concurrent twin claim fails on the unique consumer_id and the
# whole statement, usage included, rolls back.
_PG_CLAIM = text(
    """
    WITH upd AS (
        UPDATE resource_providers
           SET vcpu_used = vcpu_used + :n_vcpu,
               memory_mb_used = memory_mb_used + :n_memory_mb,
               disk_gb_used = disk_gb_used + :n_disk_gb,
               allocation_count = allocation_count + 1,
               generation = generation + 1
         WHERE id = :host_id
           AND NOT EXISTS (SELECT 1 FROM allocations WHERE consumer_id = :consumer_id)
           AND vcpu_used + :n_vcpu <= vcpu_total * vcpu_ratio - vcpu_reserved
           AND memory_mb_used + :n_memory_mb
               <= memory_mb_total * memory_mb_ratio - memory_mb_reserved
           AND disk_gb_used + :n_disk_gb <= disk_gb_total * disk_gb_ratio - disk_gb_reserved
        RETURNING *
    ), ins AS (
        INSERT INTO allocations
               (consumer_id, provider_id, project_id, vcpus, memory_mb, disk_gb, created_at)
        SELECT :consumer_id, id, :project_id, :n_vcpu, :n_memory_mb, :n_disk_gb, :now FROM upd
        RETURNING id
    )
    SELECT * FROM upd
    """
)
# The same statement in the driver's own placeholders: claims bypass SQLAlchemy's
# execution and result layers (a third of a claim's CPU time) and run prepared.
_PG_CLAIM_SQL = str(
    _PG_CLAIM.compile(dialect=postgresql.psycopg.dialect())  # type: ignore[no-untyped-call]
)


@dataclass(slots=True)
class _Pending:
    """A claim statement waiting for a connection, and where its row goes."""

    sql: str
    params: Mapping[str, Any]
    row: asyncio.Future[dict[str, Any] | None]


# Claims that queued while the connections were busy go out together, up to this many.
MAX_CLAIM_BATCH = 32


class _ClaimLane:
    """Connections for claims: kept open (`size` > 0) or checked out per claim.

    A claim is one autocommitted statement sent straight to the driver, prepared once per
    connection. With kept connections, claims that arrive while all are busy queue, and the
    next free connection sends the queue as one pipeline: one round trip and one commit
    for all of them. They run in the pipeline's single implicit transaction, in host order
    (so two replicas' batches lock hosts in the same order), each statement still the
    conditional UPDATE that cannot exceed capacity, and each seeing the ones before it. If
    any statement fails (a twin claim's unique violation, a lost connection), the whole
    batch rolled back and each claim runs again alone. A connection that breaks is
    dropped, and a lone claim runs again once on a fresh one. Running a claim again is
    safe: a claim for a consumer that already holds an allocation changes nothing.
    """

    def __init__(self, engine: AsyncEngine, size: int) -> None:
        self._engine = engine
        self._size = size
        self._idle: list[AsyncConnection] = []
        self._queue: list[_Pending] = []
        # At most `size` senders, each on its own connection, each taking the queue.
        self._senders: set[asyncio.Task[None]] = set()

    async def fetch_one(self, sql: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
        if self._size == 0:
            return await self._run_alone(sql, params)
        mine = _Pending(sql, params, asyncio.get_running_loop().create_future())
        self._queue.append(mine)
        if len(self._senders) < self._size:
            # A task of its own: a caller that gives up (cancelled) never strands the
            # claims of others that its batch carries.
            sender = asyncio.create_task(self._send_queued())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        return await mine.row

    async def _send_queued(self) -> None:
        while self._queue:
            batch = [p for p in self._queue[:MAX_CLAIM_BATCH] if not p.row.done()]
            del self._queue[:MAX_CLAIM_BATCH]
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        if len(batch) > 1:
            batch.sort(key=lambda p: int(p.params["host_id"]))
            try:
                rows = await self._run_pipelined(batch)
            except psycopg.Error:
                pass  # rolled back as a whole: each runs again alone, below
            else:
                for p, row in zip(batch, rows, strict=True):
                    if not p.row.done():
                        p.row.set_result(row)
                return
        for p in batch:
            try:
                row = await self._run_alone(p.sql, p.params)
            except Exception as exc:
                if not p.row.done():
                    p.row.set_exception(exc)
            else:
                if not p.row.done():
                    p.row.set_result(row)

    async def _run_pipelined(self, batch: list[_Pending]) -> list[dict[str, Any] | None]:
        async with self._connection() as driver:
            cursors = []
            async with driver.pipeline():
                for p in batch:
                    cur = driver.cursor(row_factory=dict_row)
                    STATS.count_statement()  # past SQLAlchemy: counted here
                    await cur.execute(p.sql, p.params, prepare=True)
                    cursors.append(cur)
            return [await cur.fetchone() for cur in cursors]

    # A broken connection is dropped by _connection, so the second attempt gets a fresh
    # one (or another kept one). Only connection failures are retried: a twin claim's
    # unique violation is an answer, not a failure.
    @retry(
        retry=retry_if_exception_type(psycopg.OperationalError),
        stop=stop_after_attempt(CLAIM_ATTEMPTS),
        before_sleep=_log_claim_again,
        reraise=True,
    )
    async def _run_alone(self, sql: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
        async with self._connection() as driver:
            cur = driver.cursor(row_factory=dict_row)
            STATS.count_statement()  # past SQLAlchemy: counted here
            await cur.execute(sql, params, prepare=True)
            return await cur.fetchone()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection: kept ones are used by one sender at a time."""
        if self._size == 0:
            async with self._engine.connect() as conn:
                yield await driver_of(conn)
            return
        conn = self._idle.pop() if self._idle else await self._engine.connect()
        driver: psycopg.AsyncConnection[Any] | None = None
        try:
            driver = await driver_of(conn)
            yield driver
        finally:
            # Kept only when idle (a statement that failed, such as a twin claim's
            # unique violation, leaves an autocommitted connection idle); a broken or
            # interrupted one is dropped.
            if driver is not None and _is_idle(driver):
                self._idle.append(conn)
            else:
                await conn.invalidate()
                await conn.close()

    async def close(self) -> None:
        await asyncio.gather(*self._senders, return_exceptions=True)
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


def _is_idle(driver: psycopg.AsyncConnection[Any]) -> bool:
    return not driver.closed and driver.info.transaction_status is psycopg.pq.TransactionStatus.IDLE


# Heartbeats never move backwards: another replica may have stored a later one.
_PG_HEARTBEATS = text(
    """
    UPDATE resource_providers AS rp
       SET last_heartbeat_at = beat.at
      FROM unnest(CAST(:hosts AS text[]), CAST(:ats AS timestamptz[])) AS beat(name, at)
     WHERE rp.name = beat.name
       AND (rp.last_heartbeat_at IS NULL OR rp.last_heartbeat_at < beat.at)
    """
)
# Usage falls only for the allocation row this statement's DELETE returned: exactly once.
_PG_RELEASE = text(
    """
    WITH del AS (
        DELETE FROM allocations
         WHERE consumer_id = :consumer_id
           AND (CAST(:host AS text) = ''
                OR provider_id = (SELECT id FROM resource_providers WHERE name = :host))
        RETURNING provider_id, vcpus, memory_mb, disk_gb
    )
    UPDATE resource_providers AS rp
       SET vcpu_used = rp.vcpu_used - del.vcpus,
           memory_mb_used = rp.memory_mb_used - del.memory_mb,
           disk_gb_used = rp.disk_gb_used - del.disk_gb,
           allocation_count = rp.allocation_count - 1,
           generation = rp.generation + 1
      FROM del
     WHERE rp.id = del.provider_id
    RETURNING rp.*
    """
)


def _inventory_of(inv: InventoryUpdate, rc: ResourceClass) -> Inventory:
    if rc is ResourceClass.VCPU:
        return inv.vcpu
    if rc is ResourceClass.MEMORY_MB:
        return inv.memory_mb
    return inv.disk_gb
