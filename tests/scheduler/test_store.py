"""Claims and releases against real databases: atomic, idempotent, exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.db.engine import make_engine
from controlplane.scheduler.aggregates import AggregateStore
from controlplane.scheduler.hoststate import Inventory, InventoryUpdate, Resources
from controlplane.scheduler.store import ClaimStatus, ProviderStore
from tests.scheduler.dbcheck import add_host, assert_consistent
from tests.support import polling

MB100 = Resources(vcpus=1, memory_mb=100, disk_gb=1)


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    fixture = "pg_url" if request.param == "postgresql" else "sqlite_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
async def engines(db_url: str) -> AsyncIterator[Callable[[], AsyncEngine]]:
    made: list[AsyncEngine] = []

    def new_engine() -> AsyncEngine:
        made.append(make_engine(db_url, pool_size=10))
        return made[-1]

    try:
        yield new_engine
    finally:
        for engine in made:
            await engine.dispose()


async def test_concurrent_claims_through_two_engines_never_overcommit(
    engines: Callable[[], AsyncEngine],
) -> None:
    first, second = ProviderStore(engines()), ProviderStore(engines())
    host = await add_host(first, "tight", memory_mb=1000)  # room for exactly 10

    results = await asyncio.gather(
        *((first if i % 2 else second).claim(host.id, f"c-{i}", "p", MB100) for i in range(40))
    )

    claimed = [r for r in results if r.status is ClaimStatus.CLAIMED]
    assert len(claimed) == 10
    assert all(r.status is ClaimStatus.NO_ROOM for r in results if r not in claimed)
    usage = await assert_consistent(first.engine)
    assert usage["tight"].used == (10, 1000, 10)


async def test_a_repeated_claim_for_the_same_consumer_changes_nothing(
    engines: Callable[[], AsyncEngine],
) -> None:
    store = ProviderStore(engines())
    a = await add_host(store, "a")
    b = await add_host(store, "b")

    first = await store.claim(a.id, "c-1", "p", MB100)
    again = await store.claim(a.id, "c-1", "p", MB100)
    elsewhere = await store.claim(b.id, "c-1", "p", MB100)

    assert first.status is ClaimStatus.CLAIMED
    assert again.status is ClaimStatus.EXISTING
    assert again.host is not None
    assert again.host.name == "a"
    assert again.existing == MB100
    assert elsewhere.status is ClaimStatus.EXISTING
    usage = await assert_consistent(store.engine)
    assert usage["a"].used == (1, 100, 1)
    assert usage["b"].used == (0, 0, 0)


async def test_concurrent_repeats_of_one_claim_claim_once(
    engines: Callable[[], AsyncEngine],
) -> None:
    first, second = ProviderStore(engines()), ProviderStore(engines())
    host = await add_host(first, "h")
    results = await asyncio.gather(
        *((first if i % 2 else second).claim(host.id, "same", "p", MB100) for i in range(10))
    )
    assert sum(r.status is ClaimStatus.CLAIMED for r in results) == 1
    usage = await assert_consistent(first.engine)
    assert usage["h"].allocations == 1


async def test_a_release_happens_exactly_once_even_when_raced(
    engines: Callable[[], AsyncEngine],
) -> None:
    first, second = ProviderStore(engines()), ProviderStore(engines())
    host = await add_host(first, "h")
    await first.claim(host.id, "c-1", "p", MB100)

    results = await asyncio.gather(*((first if i % 2 else second).release("c-1") for i in range(8)))

    assert sum(r.released for r in results) == 1
    usage = await assert_consistent(first.engine)
    assert usage["h"].used == (0, 0, 0)
    assert (await first.release("c-1")).released is False


async def test_a_release_on_another_host_than_the_allocation_frees_nothing(
    engines: Callable[[], AsyncEngine],
) -> None:
    store = ProviderStore(engines())
    a = await add_host(store, "a")
    await add_host(store, "b")
    await store.claim(a.id, "c-1", "p", MB100)

    assert (await store.release("c-1", "b")).released is False
    assert (await store.release("c-1", "a")).released is True
    await assert_consistent(store.engine)


async def test_a_claim_returns_the_host_as_it_now_is(
    engines: Callable[[], AsyncEngine],
) -> None:
    store = ProviderStore(engines())
    host = await add_host(store, "h", memory_mb=1000)
    result = await store.claim(host.id, "c-1", "p", MB100)
    assert result.host is not None
    assert result.host.memory_mb.used == 100
    assert result.host.allocation_count == 1
    assert result.host.generation == host.generation + 1


async def test_an_inventory_below_current_usage_is_refused_and_changes_nothing(
    engines: Callable[[], AsyncEngine],
) -> None:
    store = ProviderStore(engines())
    host = await add_host(store, "h", memory_mb=1000)
    for i in range(5):
        await store.claim(host.id, f"c-{i}", "p", MB100)

    shrunk = InventoryUpdate(
        host="h",
        vcpu=Inventory(16, 0, 1.0),
        memory_mb=Inventory(400, 0, 1.0),
        disk_gb=Inventory(100, 0, 1.0),
    )
    assert await store.upsert_inventory(shrunk) is None
    stored = await store.load_host("h")
    assert stored is not None
    assert stored.memory_mb.total == 1000


async def test_an_inventory_update_keeps_usage_and_the_operator_zone(
    engines: Callable[[], AsyncEngine],
) -> None:
    store = ProviderStore(engines())
    host = await add_host(store, "h", memory_mb=1000, zone="agent-zone")
    await store.claim(host.id, "c-1", "p", MB100)
    await AggregateStore(store.engine).set_host_zone("h", "operator-zone")

    grown = await add_host(store, "h", memory_mb=2000, zone="agent-zone")

    assert grown.memory_mb.total == 2000
    assert grown.memory_mb.used == 100
    assert grown.availability_zone == "operator-zone"


async def test_heartbeats_are_stored_and_never_move_backwards(
    engines: Callable[[], AsyncEngine],
) -> None:
    from tests.scheduler.factories import NOW

    store = ProviderStore(engines())
    await add_host(store, "h")
    await store.record_heartbeats({"h": NOW, "not-a-provider-yet": NOW})
    await store.record_heartbeats({"h": NOW.replace(hour=11)})
    host = await store.load_host("h")
    assert host is not None
    assert host.last_heartbeat_at == NOW


async def test_a_release_chosen_as_a_deadlock_victim_runs_again_and_frees_once(
    engine: AsyncEngine, pg_url: str
) -> None:
    store = ProviderStore(engine)
    host = await add_host(store, "a", memory_mb=1000)
    held = await store.claim(host.id, "c2", "p", Resources(1, 100, 1))
    assert held.status is ClaimStatus.CLAIMED
    # The other side of the cycle: a transaction that holds the host's row, then claims
    # for the same consumer (what a batch of claims with a twin does). Its own deadlock
    # check waits 20 s, so PostgreSQL aborts the release (which checks after 1 s).
    async with (
        await psycopg.AsyncConnection.connect(pg_url) as other,
        await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as watcher,
    ):
        await other.execute("SET deadlock_timeout = '20s'")
        await other.execute(
            "UPDATE resource_providers SET generation = generation WHERE id = %s", (host.id,)
        )
        release = asyncio.create_task(store.release("c2"))

        # The release has deleted c2's allocation and waits for the host's row.
        async def release_waits() -> bool:
            cur = await watcher.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
            waiting = await cur.fetchone()
            return waiting is not None and waiting[0] > 0

        # Bounded by the statement's own path: one round trip to a lock it cannot get.
        await polling.eventually(
            release_waits, polling.SCHEDULER_CALL_DEADLINE_S, "the release waits for the row"
        )
        with pytest.raises(psycopg.errors.UniqueViolation):
            # Waits on the release's DELETE: the cycle. Once the release is aborted, its
            # DELETE is undone and c2's allocation is there again.
            await other.execute(
                "INSERT INTO allocations"
                " (consumer_id, provider_id, project_id, vcpus, memory_mb, disk_gb, created_at)"
                " VALUES ('c2', %s, 'p', 1, 100, 1, now())",
                (host.id,),
            )
        await other.rollback()
        result = await asyncio.wait_for(release, 30)
    assert result.released
    assert result.host is not None
    assert (result.host.memory_mb.used, result.host.allocation_count) == (0, 0)
    usage = await assert_consistent(engine)
    assert usage["a"].allocations == 0
    assert not (await store.release("c2")).released
