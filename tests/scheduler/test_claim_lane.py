"""Claims over connections the store keeps open: as atomic as per-claim connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.db.engine import make_engine
from controlplane.runtime.stats import STATS
from controlplane.scheduler.hoststate import Resources
from controlplane.scheduler.store import ClaimStatus, ProviderStore
from tests.scheduler.dbcheck import add_host, assert_consistent

MB100 = Resources(vcpus=1, memory_mb=100, disk_gb=1)


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(pg_url, pool_size=10)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
async def store(engine: AsyncEngine) -> AsyncIterator[ProviderStore]:
    kept = ProviderStore(engine, claim_connections=3)
    try:
        yield kept
    finally:
        await kept.close()


async def test_many_concurrent_claims_over_a_few_kept_connections_never_overcommit(
    store: ProviderStore, engine: AsyncEngine
) -> None:
    host = await add_host(store, "tight", memory_mb=1000)  # room for exactly 10
    results = await asyncio.gather(*(store.claim(host.id, f"c-{i}", "p", MB100) for i in range(40)))
    assert sum(r.status is ClaimStatus.CLAIMED for r in results) == 10
    usage = await assert_consistent(engine)
    assert usage["tight"].used == (10, 1000, 10)


async def test_concurrent_twins_of_one_claim_claim_once_and_keep_their_connections(
    store: ProviderStore, engine: AsyncEngine
) -> None:
    host = await add_host(store, "a")
    results = await asyncio.gather(*(store.claim(host.id, "twin", "p", MB100) for _ in range(12)))
    assert sum(r.status is ClaimStatus.CLAIMED for r in results) == 1
    assert all(r.status is not ClaimStatus.NO_ROOM for r in results)
    after = await store.claim(host.id, "next", "p", MB100)
    assert after.status is ClaimStatus.CLAIMED
    usage = await assert_consistent(engine)
    assert usage["a"].allocations == 2


async def test_a_claim_after_the_database_dropped_its_kept_connections_still_succeeds(
    store: ProviderStore, engine: AsyncEngine
) -> None:
    host = await add_host(store, "a")
    assert (await store.claim(host.id, "before", "p", MB100)).status is ClaimStatus.CLAIMED
    async with engine.connect() as conn:
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    after = await store.claim(host.id, "after", "p", MB100)
    assert after.status is ClaimStatus.CLAIMED
    usage = await assert_consistent(engine)
    assert usage["a"].allocations == 2


async def test_two_stores_batching_the_same_consumers_claim_each_exactly_once(
    store: ProviderStore, engine: AsyncEngine
) -> None:
    other = ProviderStore(engine, claim_connections=2)
    try:
        hosts = [await add_host(store, f"h{i}", memory_mb=100_000) for i in range(4)]
        # Each consumer is claimed by both stores at once, on different hosts: batches
        # meet unique violations, roll back whole, and their claims run again alone.
        results = await asyncio.gather(
            *(
                s.claim(hosts[(i + k) % 4].id, f"c-{i}", "p", MB100)
                for i in range(30)
                for k, s in enumerate((store, other))
            )
        )
    finally:
        await other.close()
    assert sum(r.status is ClaimStatus.CLAIMED for r in results) == 30
    assert all(r.status is not ClaimStatus.NO_ROOM for r in results)
    usage = await assert_consistent(engine)
    assert sum(u.allocations for u in usage.values()) == 30


async def test_claims_sent_straight_to_the_driver_count_as_statements(
    store: ProviderStore,
) -> None:
    # The benchmark's "SQL statements per boot" reads this counter: claims bypass
    # SQLAlchemy, so they must count themselves, one per statement, pipelined or alone.
    host = await add_host(store, "a", vcpus=64, memory_mb=10_000)
    before = STATS.snapshot()["statements"]
    assert (await store.claim(host.id, "alone", "p", MB100)).status is ClaimStatus.CLAIMED
    assert STATS.snapshot()["statements"] - before == 1
    before = STATS.snapshot()["statements"]
    results = await asyncio.gather(*(store.claim(host.id, f"c-{i}", "p", MB100) for i in range(20)))
    assert all(r.status is ClaimStatus.CLAIMED for r in results)
    assert STATS.snapshot()["statements"] - before == 20
