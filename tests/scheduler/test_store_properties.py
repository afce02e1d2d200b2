"""Property: whatever sequence of claims, releases and moves of an allocation from one
consumer to another runs, concurrently or not, no host is ever over capacity and every
host's usage is exactly the sum of its allocations."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from controlplane.db.engine import make_engine
from controlplane.scheduler.hoststate import Resources
from controlplane.scheduler.store import ClaimStatus, ProviderStore
from tests.scheduler.dbcheck import add_host, assert_consistent

HOSTS = ("h0", "h1", "h2")


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    return url


@dataclass(frozen=True)
class Claim:
    consumer: int
    host: int
    resources: Resources


@dataclass(frozen=True)
class Release:
    consumer: int


@dataclass(frozen=True)
class Move:
    """Hand one consumer's allocation to another (a resize's source allocation going to
    its migration record, and back)."""

    source: int
    target: int


operations = st.one_of(
    st.builds(
        Claim,
        consumer=st.integers(0, 11),
        host=st.integers(0, len(HOSTS) - 1),
        resources=st.builds(
            Resources,
            vcpus=st.integers(0, 3),
            memory_mb=st.integers(0, 600),
            disk_gb=st.integers(0, 6),
        ),
    ),
    st.builds(Release, consumer=st.integers(0, 11)),
    st.builds(Move, source=st.integers(0, 11), target=st.integers(0, 11)).filter(
        lambda m: m.source != m.target
    ),
)
# Operations run in batches; the operations of one batch run concurrently.
batches = st.lists(st.lists(operations, min_size=1, max_size=6), min_size=1, max_size=6)


async def _run(url: str, plan: list[list[Claim | Release | Move]]) -> None:
    engine = make_engine(url, pool_size=6)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM allocations"))
            await conn.execute(text("DELETE FROM resource_providers"))
        store = ProviderStore(engine)
        ids = [
            (
                await add_host(
                    store,
                    n,
                    vcpus=4,
                    memory_mb=1000,
                    memory_ratio=1.5,
                    memory_reserved=100,
                    disk_gb=10,
                )
            ).id
            for n in HOSTS
        ]
        for batch in plan:
            results = await asyncio.gather(*(_apply(store, ids, op) for op in batch))
            assert all(r is not None for r in results)
            await assert_consistent(engine)
    finally:
        await engine.dispose()


async def _apply(store: ProviderStore, ids: list[int], op: Claim | Release | Move) -> object:
    if isinstance(op, Move):
        return (await store.move_allocation(f"c{op.source}", f"c{op.target}")).status
    if isinstance(op, Claim):
        result = await store.claim(ids[op.host], f"c{op.consumer}", "p", op.resources)
        return result.status if result.status in ClaimStatus else None
    return (await store.release(f"c{op.consumer}")).released


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=batches)
def test_no_sequence_of_claims_releases_and_moves_breaks_capacity_or_accounting(
    db_url: str, plan: list[list[Claim | Release | Move]]
) -> None:
    asyncio.run(_run(db_url, plan))
