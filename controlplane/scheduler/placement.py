"""Placement: rank hosts on the cached snapshot, claim the best in the database, and
retry on the next best when another scheduler got there first.

This is where the pure pipeline meets the store. It holds no state of its own besides
the host cache; every decision it returns is backed by a committed claim.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import islice

from controlplane.config import SchedulerConfig
from controlplane.runtime.errors import DomainError
from controlplane.scheduler.aggregates import AggregateStore
from controlplane.scheduler.hostcache import HostCache
from controlplane.scheduler.hostorder import HostOrder, order_spec_for
from controlplane.scheduler.hoststate import HostState, InventoryUpdate
from controlplane.scheduler.metrics import count_conflict
from controlplane.scheduler.pipeline import Decision, Pipeline, rank_hosts
from controlplane.scheduler.request import (
    NO_HINT_HOSTS,
    CycleState,
    GroupPolicy,
    GroupRule,
    HintHosts,
    PlacementRequest,
)
from controlplane.scheduler.store import (
    AllocationRecord,
    ClaimResult,
    ClaimStatus,
    MoveResult,
    ProviderStore,
)
from controlplane.scheduler.walk import rank_walking

log = logging.getLogger(__name__)

# A NoValidHost reached on a snapshot older than this is re-checked on a fresh one:
# capacity freed by another replica, or a host it just created, becomes visible.
STALE_SNAPSHOT_S = 1.0
# Bound on lost races per request; each loss refreshes a host, so this is never reached
# unless the fleet changes faster than the scheduler can read it.
MAX_CLAIM_ATTEMPTS = 64

REASON_UNKNOWN_HOST = "no such host"
REASON_HOST_DISABLED = "host disabled"
REASON_HOST_DOWN = "host down"
REASON_NO_ROOM = "insufficient resources on the host"


@dataclass(frozen=True, slots=True)
class Placed:
    """A consumer's resources are claimed on `selected`; `alternates` are unclaimed."""

    selected: HostState
    alternates: tuple[HostState, ...]


@dataclass(frozen=True, slots=True)
class NotPlaced:
    """No host could take the request; `decision` says which filters removed which hosts."""

    decision: Decision
    message: str


@dataclass
class _GroupGate:
    """The lock one server group's decisions take in turn, and how many want it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass(frozen=True, slots=True)
class HostClaim:
    """The outcome of a claim on one named host."""

    claimed: bool
    reason: str = ""


class PlacementService:
    def __init__(
        self,
        store: ProviderStore,
        cache: HostCache,
        pipeline: Pipeline,
        cfg: SchedulerConfig,
        aggregates: AggregateStore | None = None,
    ) -> None:
        self.store = store
        self.aggregates = aggregates or AggregateStore(store.engine)
        self.cache = cache
        self.pipeline = pipeline
        self.cfg = cfg
        self.down_after = timedelta(seconds=cfg.service_down_time)
        # Hosts kept in ranking order as they change, so a decision walks the best few
        # instead of scanning the fleet; None when the weighers allow no such order.
        spec = order_spec_for(pipeline.weighers)
        self.order = HostOrder(spec) if spec is not None else None
        if self.order is not None:
            cache.keep_ordered(self.order)
        # One decision at a time per server group in this process; the store serialises
        # the group's claims across processes.
        self._group_locks: dict[str, _GroupGate] = {}

    def cycle_for(
        self,
        request: PlacementRequest,
        rule: GroupRule | None = None,
        hint_hosts: HintHosts = NO_HINT_HOSTS,
    ) -> CycleState:
        return CycleState(
            request=request,
            now=self.cache.clock(),
            down_after=self.down_after,
            group_rule=rule,
            hint_hosts=hint_hosts,
            default_zone=self.cfg.default_availability_zone,
        )

    async def hint_hosts(self, request: PlacementRequest) -> HintHosts:
        """Where the instances named by the request's same_host and different_host hints
        are, from the allocations (one read; none without such hints). The consumer itself
        never counts: a move has handed its allocation to the migration already."""
        if not request.same_host and not request.different_host:
            return NO_HINT_HOSTS
        named = (request.same_host | request.different_host) - {request.consumer_id}
        held = await self.store.hosts_of(named)
        return HintHosts(
            same_host=frozenset(held[c] for c in request.same_host if c in held)
            if request.same_host
            else None,
            different_host=frozenset(held[c] for c in request.different_host if c in held),
        )

    def is_up(self, host: HostState) -> bool:
        return host.is_up(self.cache.clock(), self.down_after)

    async def select_destinations(self, request: PlacementRequest) -> Placed | NotPlaced:
        """Claims the request's resources on the best host, with unclaimed alternates.

        Postconditions: Placed means the allocation is committed on `selected` (a retry for
        the same consumer returns the host that already holds it, changing nothing);
        NotPlaced means nothing was claimed. A member of a server group is placed only
        where its group's policy allows, counted from the group's allocations, and only
        where its same_host and different_host hints allow, from the named instances'
        allocations.
        """
        hints = await self.hint_hosts(request)
        if request.group is not None:
            return await self._select_in_group(request, request.group, hints)
        rechecked = False
        decision: Decision | None = None
        for _ in range(MAX_CLAIM_ATTEMPTS):
            decision = self._rank(request, hints=hints)
            if not decision.found:
                if not rechecked and await self.cache.refresh_if_older(STALE_SNAPSHOT_S):
                    rechecked = True
                    continue
                return await self._not_placed(request, decision)
            best = decision.ranked[0].host
            # Decisions made while this claim is out rank `best` as holding it already.
            self.cache.reserve(best.name, request.resources)
            try:
                result = await self.store.claim(
                    best.id, request.consumer_id, request.project_id, request.resources
                )
            finally:
                self.cache.unreserve(best.name, request.resources)
            count_conflict(result)
            if result.status is ClaimStatus.NO_ROOM:
                # Another scheduler filled it since our snapshot: learn how full, rank again.
                await self.cache.refresh_host(best.name)
                continue
            return self._placed(result, decision, request.num_alternates)
        assert decision is not None
        return NotPlaced(
            decision, f"No valid host: lost the race for capacity {MAX_CLAIM_ATTEMPTS} times."
        )

    async def _select_in_group(
        self, request: PlacementRequest, group: GroupPolicy, hints: HintHosts
    ) -> Placed | NotPlaced:
        gate = self._group_locks.setdefault(group.id, _GroupGate())
        gate.users += 1
        try:
            async with gate.lock:
                return await self._select_in_group_locked(request, group, hints)
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._group_locks[group.id]

    async def _select_in_group_locked(
        self, request: PlacementRequest, group: GroupPolicy, hints: HintHosts
    ) -> Placed | NotPlaced:
        rechecked = False
        decision: Decision | None = None
        for _ in range(MAX_CLAIM_ATTEMPTS):
            members = await self.store.group_members(group.id, but=request.consumer_id)
            # A soft policy's tiers end with one that allows every host, so its NoValidHost
            # is the plain one; a hard policy has one tier, whose removals are the answer.
            for rule in GroupRule.tiers(group, members):
                decision = self._rank(request, rule, hints)
                if decision.found:
                    break
            assert decision is not None
            if not decision.found:
                if not rechecked and await self.cache.refresh_if_older(STALE_SNAPSHOT_S):
                    rechecked = True
                    continue
                return await self._not_placed(request, decision)
            best = decision.ranked[0].host
            result = await self.store.claim_in_group(
                best, request.consumer_id, request.project_id, request.resources, group
            )
            count_conflict(result)
            if result.status is ClaimStatus.NO_ROOM:
                await self.cache.refresh_host(best.name)
                continue
            if result.status is ClaimStatus.GROUP_CONFLICT:
                # Another scheduler placed a member meanwhile: count again, rank again.
                continue
            return self._placed(result, decision, request.num_alternates)
        assert decision is not None
        return NotPlaced(
            decision, f"No valid host: lost the race for capacity {MAX_CLAIM_ATTEMPTS} times."
        )

    def _placed(self, result: ClaimResult, decision: Decision, alternates: int) -> Placed:
        """A claim that succeeded (or found the consumer's own), with unclaimed alternates."""
        assert result.host is not None
        selected = self.cache.put(result.host)
        others = (wh.host for wh in decision.ranked if wh.host.name != selected.name)
        return Placed(selected, tuple(islice(others, alternates)))

    def _rank(
        self,
        request: PlacementRequest,
        rule: GroupRule | None = None,
        hints: HintHosts = NO_HINT_HOSTS,
    ) -> Decision:
        cycle = self.cycle_for(request, rule, hints)
        keep = request.num_alternates + 1
        if self.order is not None:
            return rank_walking(self.order, self.cache.hosts, cycle, self.pipeline, keep)
        return rank_hosts(self.cache.snapshot(), cycle, self.pipeline, keep=keep)

    async def _not_placed(
        self, request: PlacementRequest, decision: Decision
    ) -> Placed | NotPlaced:
        # A retry of a placed consumer must see its claim, even on a now-full fleet.
        held = await self.store.allocations_of(request.consumer_id)
        if held:
            host = self.cache.get(held[0].host) or await self.cache.refresh_host(held[0].host)
            if host is not None:
                return Placed(host, ())
        return NotPlaced(decision, decision.explain())

    async def claim_on_host(self, request: PlacementRequest, host_name: str) -> HostClaim:
        """Claims on one named host (an alternate), if it is enabled, up and has room.

        Idempotent per consumer and host: claiming again where the consumer already holds
        its allocation succeeds and changes nothing; an allocation elsewhere is refused.
        """
        host = self.cache.get(host_name) or await self.cache.refresh_host(host_name)
        if host is None:
            return HostClaim(False, REASON_UNKNOWN_HOST)
        if not host.enabled:
            return HostClaim(False, REASON_HOST_DISABLED)
        if not self.is_up(host):
            return HostClaim(False, REASON_HOST_DOWN)
        if request.group is not None:
            result = await self.store.claim_in_group(
                host, request.consumer_id, request.project_id, request.resources, request.group
            )
        else:
            result = await self.store.claim(
                host.id, request.consumer_id, request.project_id, request.resources
            )
        count_conflict(result)
        if result.status is ClaimStatus.GROUP_CONFLICT:
            return HostClaim(False, result.reason)
        if result.status is ClaimStatus.CLAIMED:
            assert result.host is not None
            self.cache.put(result.host)
            return HostClaim(True)
        if result.status is ClaimStatus.EXISTING:
            assert result.host is not None
            if result.host.name == host_name:
                return HostClaim(True)
            return HostClaim(False, f"consumer already holds resources on {result.host.name}")
        await self.cache.refresh_host(host_name)
        return HostClaim(False, REASON_NO_ROOM)

    async def release(self, consumer_id: str, host_name: str = "") -> bool:
        """Frees the consumer's allocation; True only for the call that freed it."""
        result = await self.store.release(consumer_id, host_name)
        if result.host is not None:
            self.cache.put(result.host)
        return result.released

    async def report_inventory(self, inv: InventoryUpdate) -> HostState | None:
        """Creates or updates a provider; None when refused (below current usage).

        A new host reported with a zone joins that zone's aggregate (made when missing).
        """
        host = await self.store.upsert_inventory(inv)
        if host is None:
            return None
        if host.availability_zone and "availability_zone" not in host.metadata:
            # Stored by the insert, not yet an aggregate (a crash in between is repaired
            # by the next report, which finds the same state).
            try:
                host = await self.aggregates.set_host_zone(host.name, host.availability_zone)
            except DomainError as exc:
                log.warning(
                    "could not put a new host in its configured zone: %s",
                    exc,
                    extra={"host": host.name},
                )
        return self.cache.put(host)

    async def set_enabled(self, name: str, enabled: bool, reason: str) -> HostState | None:
        host = await self.store.set_enabled(name, enabled, reason)
        return self.cache.put(host) if host is not None else None

    async def set_availability_zone(self, name: str, zone: str) -> HostState:
        """The host, now in `zone`'s aggregate and no other zone's ("" for the default
        zone). Raises NotFound for an unknown host, InvalidArgument for a bad zone name."""
        return self.cache.put(await self.aggregates.set_host_zone(name, zone))

    async def set_forced_down(self, name: str, forced_down: bool) -> HostState | None:
        host = await self.store.set_forced_down(name, forced_down)
        return self.cache.put(host) if host is not None else None

    def learn(self, hosts: Iterable[HostState]) -> None:
        """Puts rows another store just wrote (an aggregate change) in the cache."""
        for host in hosts:
            self.cache.put(host)

    async def get_host(self, name: str) -> HostState | None:
        """The host as the database holds it now, with the liveness this process knows."""
        return await self.cache.refresh_host(name)

    async def list_hosts(self) -> list[HostState]:
        """Every host as the database holds it now, by name."""
        await self.cache.refresh_all()
        return sorted(self.cache.snapshot(), key=lambda h: h.name)

    async def allocations_of(self, consumer_id: str) -> list[AllocationRecord]:
        return await self.store.allocations_of(consumer_id)

    async def move_allocation(self, source_consumer: str, target_consumer: str) -> MoveResult:
        """Hands one consumer's allocation to another; no host's usage changes."""
        return await self.store.move_allocation(source_consumer, target_consumer)
