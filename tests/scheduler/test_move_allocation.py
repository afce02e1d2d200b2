"""Handing an allocation from one consumer to another (a move's source allocation goes to
its migration record and back): one write, usage unchanged, idempotent, one winner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from controlplane.db.engine import make_engine
from controlplane.scheduler.hoststate import Resources
from controlplane.scheduler.store import ClaimStatus, MoveStatus, ProviderStore
from tests.scheduler.dbcheck import add_host, assert_consistent

MB100 = Resources(vcpus=1, memory_mb=100, disk_gb=1)


@pytest.fixture(params=["postgresql", "sqlite"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ProviderStore]:
    fixture = "pg_url" if request.param == "postgresql" else "sqlite_url"
    engine = make_engine(request.getfixturevalue(fixture), pool_size=10)
    try:
        yield ProviderStore(engine)
    finally:
        await engine.dispose()


async def test_a_moved_allocation_keeps_its_host_and_amounts_and_usage_does_not_change(
    store: ProviderStore,
) -> None:
    host = await add_host(store, "h1", memory_mb=1000)
    assert (await store.claim(host.id, "inst", "p", MB100)).status is ClaimStatus.CLAIMED
    before = await assert_consistent(store.engine)

    result = await store.move_allocation("inst", "mig")

    assert (result.status, result.host) == (MoveStatus.MOVED, "h1")
    assert await store.allocations_of("inst") == []
    [held] = await store.allocations_of("mig")
    assert (held.host, held.resources) == ("h1", MB100)
    assert await assert_consistent(store.engine) == before


async def test_moving_again_or_moving_nothing_changes_nothing(store: ProviderStore) -> None:
    host = await add_host(store, "h1", memory_mb=1000)
    await store.claim(host.id, "inst", "p", MB100)
    await store.move_allocation("inst", "mig")

    again = await store.move_allocation("inst", "mig")
    assert (again.status, again.host) == (MoveStatus.NOTHING, "h1")
    nothing = await store.move_allocation("nobody", "someone")
    assert (nothing.status, nothing.host) == (MoveStatus.NOTHING, "")
    assert [a.host for a in await store.allocations_of("mig")] == ["h1"]


async def test_a_target_holding_another_allocation_refuses_the_move(store: ProviderStore) -> None:
    host = await add_host(store, "h1", memory_mb=1000)
    await store.claim(host.id, "mig", "p", MB100)
    await store.claim(host.id, "inst", "p", MB100)

    result = await store.move_allocation("mig", "inst")

    assert result.status is MoveStatus.TARGET_HOLDS_ANOTHER
    assert len(await store.allocations_of("mig")) == 1
    assert len(await store.allocations_of("inst")) == 1
    await assert_consistent(store.engine)


async def test_concurrent_moves_of_one_allocation_have_one_winner(store: ProviderStore) -> None:
    host = await add_host(store, "h1", memory_mb=1000)
    await store.claim(host.id, "inst", "p", MB100)

    results = await asyncio.gather(*(store.move_allocation("inst", "mig") for _ in range(8)))

    assert [r.status for r in results].count(MoveStatus.MOVED) == 1
    assert [a.host for a in await store.allocations_of("mig")] == ["h1"]
    usage = await assert_consistent(store.engine)
    assert usage["h1"].used == (1, 100, 1)
