"""The host cache: refreshes rebuild only what changed, and the order follows every change."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.scheduler.hostcache import HostCache
from controlplane.scheduler.hostorder import HostOrder, OrderSpec
from controlplane.scheduler.hoststate import HostState, Resources
from controlplane.scheduler.store import ProviderStore
from controlplane.scheduler.weighers import WeightedWeigher
from controlplane.scheduler.weighers.free_ram import FreeRamWeigher
from tests.scheduler.dbcheck import add_host
from tests.scheduler.factories import NOW


async def test_a_refresh_keeps_the_snapshot_of_a_host_whose_row_did_not_change(
    engine: AsyncEngine,
) -> None:
    store = ProviderStore(engine)
    cache = HostCache(store, lambda: NOW)
    await add_host(store, "quiet")
    busy = await add_host(store, "busy")
    await cache.refresh_all()
    quiet_before = cache.get("quiet")

    await ProviderStore(engine).claim(busy.id, "c-1", "p", Resources(1, 100, 1))
    await cache.refresh_all()

    assert cache.get("quiet") is quiet_before
    busy_after = cache.get("busy")
    assert busy_after is not None
    assert busy_after.memory_mb.used == 100


async def test_a_refresh_takes_a_newer_stored_heartbeat_of_an_unchanged_host(
    engine: AsyncEngine,
) -> None:
    store = ProviderStore(engine)
    cache = HostCache(store, lambda: NOW)
    await add_host(store, "a")
    await cache.refresh_all()
    # Another replica heard the beat and stored it; this one did not hear it.
    await store.record_heartbeats({"a": NOW - timedelta(seconds=3)})
    await cache.refresh_all()
    host = cache.get("a")
    assert host is not None
    assert host.last_heartbeat_at == NOW - timedelta(seconds=3)


async def _hosts_a_and_b_by_free_ram(
    engine: AsyncEngine,
) -> tuple[ProviderStore, HostCache, HostOrder, HostState]:
    """Host "a" (1,000 MiB) and "b" (900 MiB) in a cache that keeps them ordered by free RAM."""
    store = ProviderStore(engine)
    cache = HostCache(store, lambda: NOW)
    order = HostOrder(OrderSpec(WeightedWeigher(FreeRamWeigher(), 1.0)))
    a = await add_host(store, "a", memory_mb=1000)
    await add_host(store, "b", memory_mb=900)
    await cache.refresh_all()
    cache.keep_ordered(order)
    return store, cache, order, a


async def test_the_kept_order_follows_claims_and_refreshes(engine: AsyncEngine) -> None:
    store, cache, order, a = await _hosts_a_and_b_by_free_ram(engine)
    assert list(order.best_first()) == ["a", "b"]

    claimed = await store.claim(a.id, "c-1", "p", Resources(1, 200, 1))
    assert claimed.host is not None
    cache.put(claimed.host)
    assert list(order.best_first()) == ["b", "a"]

    await ProviderStore(engine).release("c-1")
    await cache.refresh_all()
    assert list(order.best_first()) == ["a", "b"]


async def test_a_claim_in_flight_counts_in_the_order_and_survives_a_refresh_until_answered(
    engine: AsyncEngine,
) -> None:
    store, cache, order, a = await _hosts_a_and_b_by_free_ram(engine)
    wanted = Resources(1, 200, 1)

    cache.reserve("a", wanted)
    held = cache.get("a")
    assert held is not None
    assert (held.memory_mb.used, held.vcpu.used, held.allocation_count) == (200, 1, 1)
    assert list(order.best_first()) == ["b", "a"]
    # A refresh reads the row as stored, which does not hold the claim yet: the
    # reservation stays on top of it.
    await store.record_heartbeats({"a": NOW})
    await cache.refresh_all()
    refreshed = cache.get("a")
    assert refreshed is not None
    assert refreshed.memory_mb.used == 200

    claimed = await store.claim(a.id, "c-1", "p", wanted)
    assert claimed.host is not None
    cache.unreserve("a", wanted)
    answered = cache.put(claimed.host)
    # Counted once: the stored row now holds the claim and no reservation is left.
    assert (answered.memory_mb.used, answered.allocation_count) == (200, 1)
    assert list(order.best_first()) == ["b", "a"]


async def test_a_claim_that_failed_gives_its_reservation_back(engine: AsyncEngine) -> None:
    store = ProviderStore(engine)
    cache = HostCache(store, lambda: NOW)
    await add_host(store, "a", memory_mb=1000)
    await cache.refresh_all()
    before = cache.get("a")
    assert before is not None
    cache.reserve("a", Resources(1, 300, 1))
    cache.reserve("a", Resources(2, 100, 1))
    cache.unreserve("a", Resources(1, 300, 1))
    one_left = cache.get("a")
    assert one_left is not None
    assert (one_left.vcpu.used, one_left.memory_mb.used, one_left.allocation_count) == (2, 100, 1)
    cache.unreserve("a", Resources(2, 100, 1))
    after = cache.get("a")
    assert after is not None
    assert (after.vcpu, after.memory_mb, after.disk_gb) == (
        before.vcpu,
        before.memory_mb,
        before.disk_gb,
    )
    assert after.allocation_count == before.allocation_count
