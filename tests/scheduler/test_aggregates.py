"""Aggregates in the scheduler's store: zones, allocation ratios and the claims they bound,
on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.config import SchedulerConfig, sync_database_url
from controlplane.db import migrate
from controlplane.db.engine import make_engine
from controlplane.runtime.errors import Conflict, InvalidArgument, NotFound
from controlplane.scheduler.aggregates import AggregateStore
from controlplane.scheduler.hostcache import HostCache
from controlplane.scheduler.hoststate import Inventory, InventoryUpdate, Resources
from controlplane.scheduler.pipeline import build_pipeline
from controlplane.scheduler.placement import NotPlaced, Placed, PlacementService
from controlplane.scheduler.store import ClaimStatus, ProviderStore
from tests.scheduler.dbcheck import add_host
from tests.scheduler.factories import make_request

CPU = Resources(vcpus=1)


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    return url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(db_url, pool_size=10)
    try:
        yield eng
    finally:
        await eng.dispose()


async def _claims(store: ProviderStore, host_id: int, n: int, prefix: str = "c") -> int:
    results = [await store.claim(host_id, f"{prefix}-{i}", "p", CPU) for i in range(n)]
    return sum(r.status is ClaimStatus.CLAIMED for r in results)


async def test_an_aggregate_ratio_bounds_claims_and_leaving_it_restores_the_hosts_own(
    engine: AsyncEngine,
) -> None:
    store, aggs = ProviderStore(engine), AggregateStore(engine)
    host = await add_host(store, "h", vcpus=4)  # its own vCPU ratio: 1.0
    agg = await aggs.create("dense")
    await aggs.add_host(agg.id, "h")
    change = await aggs.set_metadata(agg.id, {"cpu_allocation_ratio": "2.5"})
    assert change.hosts[0].vcpu.ratio == 2.5

    assert await _claims(store, host.id, 12) == 10  # 4 x 2.5
    for i in range(10):
        await store.release(f"c-{i}")

    (alone,) = (await aggs.remove_host(agg.id, "h")).hosts
    assert alone.vcpu.ratio == 1.0
    assert await _claims(store, host.id, 6, prefix="d") == 4


async def test_a_change_that_would_put_a_host_below_its_usage_is_refused_and_changes_nothing(
    engine: AsyncEngine,
) -> None:
    store, aggs = ProviderStore(engine), AggregateStore(engine)
    host = await add_host(store, "h", vcpus=4)
    agg = await aggs.create("dense")
    await aggs.add_host(agg.id, "h")
    await aggs.set_metadata(agg.id, {"cpu_allocation_ratio": "2"})
    assert await _claims(store, host.id, 6) == 6

    with pytest.raises(Conflict, match="already uses 6 VCPU"):
        await aggs.set_metadata(agg.id, {"cpu_allocation_ratio": "1.0"})
    with pytest.raises(Conflict, match="already uses 6 VCPU"):
        await aggs.remove_host(agg.id, "h")

    stored = await store.load_host("h")
    assert stored is not None
    assert stored.vcpu.ratio == 2.0
    assert (await aggs.get(agg.id)).metadata == {"cpu_allocation_ratio": "2"}


async def test_the_lowest_ratio_wins_and_the_hosts_own_returns_when_it_leaves(
    engine: AsyncEngine,
) -> None:
    store, aggs = ProviderStore(engine), AggregateStore(engine)
    await add_host(store, "h", vcpus=4)
    high, low = await aggs.create("high"), await aggs.create("low")
    await aggs.set_metadata(high.id, {"cpu_allocation_ratio": "8"})
    await aggs.set_metadata(low.id, {"cpu_allocation_ratio": "3"})
    await aggs.add_host(high.id, "h")
    (in_both,) = (await aggs.add_host(low.id, "h")).hosts
    assert in_both.vcpu.ratio == 3.0
    (only_high,) = (await aggs.remove_host(low.id, "h")).hosts
    assert only_high.vcpu.ratio == 8.0
    (alone,) = (await aggs.remove_host(high.id, "h")).hosts
    assert alone.vcpu.ratio == 1.0
    assert alone.metadata == {}


async def test_an_inventory_report_keeps_the_aggregate_ratio_and_records_the_hosts_own(
    engine: AsyncEngine,
) -> None:
    store, aggs = ProviderStore(engine), AggregateStore(engine)
    await add_host(store, "h", vcpus=4)
    agg = await aggs.create("dense")
    await aggs.add_host(agg.id, "h")
    await aggs.set_metadata(agg.id, {"cpu_allocation_ratio": "4"})

    report = InventoryUpdate(
        host="h",
        vcpu=Inventory(8, 0, 2.0),
        memory_mb=Inventory(1000, 0, 1.0),
        disk_gb=Inventory(100, 0, 1.0),
    )
    reported = await store.upsert_inventory(report)
    assert reported is not None
    assert (reported.vcpu.total, reported.vcpu.ratio) == (8, 4.0)

    (left,) = (await aggs.remove_host(agg.id, "h")).hosts
    assert left.vcpu.ratio == 2.0  # the report's own ratio, not the one before it


async def test_a_host_is_in_one_zone_only(engine: AsyncEngine) -> None:
    store, aggs = ProviderStore(engine), AggregateStore(engine)
    await add_host(store, "h")
    await add_host(store, "g")
    east, west = await aggs.create("east", "east"), await aggs.create("west", "west")
    plain = await aggs.create("plain")
    (in_east,) = (await aggs.add_host(east.id, "h")).hosts
    assert in_east.availability_zone == "east"

    with pytest.raises(Conflict, match="availability zone 'east'"):
        await aggs.add_host(west.id, "h")
    await aggs.add_host(plain.id, "h")
    with pytest.raises(InvalidArgument, match="east"):
        await aggs.set_metadata(plain.id, {"availability_zone": "west"})
    with pytest.raises(InvalidArgument, match="east"):
        await aggs.update(plain.id, zone="west")
    # The same zone twice is one zone.
    await aggs.update(plain.id, zone="east")
    await aggs.add_host(west.id, "g")
    assert (await store.load_host("g")) is not None
    assert {a.name: a.hosts for a in await aggs.list_all()} == {
        "east": ("h",),
        "west": ("g",),
        "plain": ("h",),
    }


async def test_zone_names_and_ratios_are_checked(engine: AsyncEngine) -> None:
    aggs = AggregateStore(engine)
    agg = await aggs.create("a")
    for bad in ("x:y", "internal", ""):
        with pytest.raises(InvalidArgument):
            await aggs.set_metadata(agg.id, {"availability_zone": bad})
    for bad in ("0", "-1", "lots", "nan"):
        with pytest.raises(InvalidArgument):
            await aggs.set_metadata(agg.id, {"ram_allocation_ratio": bad})
    with pytest.raises(Conflict):
        await aggs.create("a")
    with pytest.raises(NotFound):
        await aggs.add_host(agg.id, "no-such-host")
    with pytest.raises(NotFound):
        await aggs.get(agg.id + 100)


async def test_the_zone_of_hosts_holding_instances_does_not_change_and_a_full_aggregate_stays(
    engine: AsyncEngine,
) -> None:
    store, aggs = ProviderStore(engine), AggregateStore(engine)
    host = await add_host(store, "h")
    agg = await aggs.create("z", "z1")
    await aggs.add_host(agg.id, "h")
    await store.claim(host.id, "c-1", "p", CPU)
    with pytest.raises(InvalidArgument, match="hold instances"):
        await aggs.update(agg.id, zone="z2")
    with pytest.raises(InvalidArgument, match="still holds hosts"):
        await aggs.delete(agg.id)
    await store.release("c-1")
    await aggs.update(agg.id, zone="z2")
    await aggs.remove_host(agg.id, "h")
    await aggs.delete(agg.id)
    assert await aggs.list_all() == []


async def test_setting_a_hosts_zone_moves_it_between_zone_aggregates(engine: AsyncEngine) -> None:
    store, aggs = ProviderStore(engine), AggregateStore(engine)
    await add_host(store, "h")
    assert (await aggs.set_host_zone("h", "east")).availability_zone == "east"
    assert (await aggs.set_host_zone("h", "west")).availability_zone == "west"
    back = await aggs.set_host_zone("h", "")
    assert back.availability_zone is None
    assert {a.name: a.hosts for a in await aggs.list_all()} == {"east": (), "west": ()}


async def test_claims_racing_a_lowered_ratio_never_exceed_the_limit(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=20)
    try:
        store, aggs = ProviderStore(engine), AggregateStore(engine)
        host = await add_host(store, "h", vcpus=10)
        agg = await aggs.create("dense")
        await aggs.add_host(agg.id, "h")
        await aggs.set_metadata(agg.id, {"cpu_allocation_ratio": "4"})

        async def lower() -> str:
            try:
                await aggs.set_metadata(agg.id, {"cpu_allocation_ratio": "1.5"})
            except Conflict:
                return "refused"
            return "lowered"

        outcome, *claims = await asyncio.gather(
            lower(), *(store.claim(host.id, f"c-{i}", "p", CPU) for i in range(40))
        )
        stored = await store.load_host("h")
        assert stored is not None
        claimed = sum(c.status is ClaimStatus.CLAIMED for c in claims)
        assert stored.vcpu.used == claimed
        assert stored.vcpu.used <= stored.vcpu.limit
        assert stored.vcpu.ratio == (1.5 if outcome == "lowered" else 4.0)
    finally:
        await engine.dispose()


async def test_placement_counts_what_tenant_isolation_removed_and_skips_forced_down_hosts(
    engine: AsyncEngine,
) -> None:
    cfg = SchedulerConfig()
    store = ProviderStore(engine)
    p = PlacementService(store, HostCache(store), build_pipeline(cfg), cfg)
    for name in ("a", "b", "c"):
        await add_host(store, name)
        p.cache.record_heartbeat(name)
    await p.set_forced_down("a", True)
    agg = await p.aggregates.create("mine")
    p.learn((await p.aggregates.add_host(agg.id, "b")).hosts)
    p.learn((await p.aggregates.set_metadata(agg.id, {"filter_tenant_id": "p-mine"})).hosts)
    await p.cache.refresh_all()

    others = await p.select_destinations(make_request(consumer_id="x-1", project_id="p-other"))
    assert isinstance(others, Placed)
    assert others.selected.name == "c"
    mine = await p.select_destinations(make_request(consumer_id="x-2", project_id="p-mine"))
    assert isinstance(mine, Placed)
    assert mine.selected.name in {"b", "c"}

    await p.set_forced_down("c", True)
    refused = await p.select_destinations(make_request(consumer_id="x-3", project_id="p-other"))
    assert isinstance(refused, NotPlaced)
    assert "enabled_and_up removed 2 (host forced down: 2)" in refused.message
    assert "aggregate_multitenancy_isolation removed 1" in refused.message


def test_the_migration_turns_host_zones_into_zone_aggregates(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(url, "0006")
    sync = create_engine(sync_database_url(url))
    try:
        with sync.begin() as conn:
            for i, (name, zone) in enumerate([("h1", "east"), ("h2", "east"), ("h3", None)]):
                conn.execute(
                    text(
                        "INSERT INTO resource_providers (uuid, name, availability_zone,"
                        " vcpu_total, vcpu_reserved, vcpu_ratio, vcpu_used, memory_mb_total,"
                        " memory_mb_reserved, memory_mb_ratio, memory_mb_used, disk_gb_total,"
                        " disk_gb_reserved, disk_gb_ratio, disk_gb_used, allocation_count,"
                        " enabled, hypervisor_type, hypervisor_version, compute_endpoint,"
                        " host_ip, cpu_info, generation, created_at) VALUES (:u, :n, :z,"
                        " 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1, '', 0, '', '', '', 0,"
                        " '2026-01-01')"
                    ),
                    {"u": f"u-{i}", "n": name, "z": zone},
                )
        migrate.upgrade(url)
        with sync.connect() as conn:
            aggregates = conn.execute(text("SELECT id, name FROM aggregates")).all()
            meta = conn.execute(text("SELECT key, value FROM aggregate_metadata")).all()
            members = conn.execute(
                text(
                    "SELECT rp.name FROM aggregate_hosts ah"
                    " JOIN resource_providers rp ON rp.id = ah.provider_id ORDER BY rp.name"
                )
            ).scalars()
            zones = dict(
                conn.execute(text("SELECT name, availability_zone FROM resource_providers")).all()
            )
            assert [a.name for a in aggregates] == ["east"]
            assert [tuple(m) for m in meta] == [("availability_zone", "east")]
            assert list(members) == ["h1", "h2"]
            assert zones == {"h1": "east", "h2": "east", "h3": None}
    finally:
        sync.dispose()
