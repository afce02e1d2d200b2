"""Placement on a real database: rank on the cache, claim in the database, retry on races."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.config import SchedulerConfig
from controlplane.scheduler.hostcache import HostCache
from controlplane.scheduler.pipeline import build_pipeline
from controlplane.scheduler.placement import (
    REASON_HOST_DISABLED,
    REASON_HOST_DOWN,
    REASON_NO_ROOM,
    REASON_UNKNOWN_HOST,
    NotPlaced,
    Placed,
    PlacementService,
)
from controlplane.scheduler.store import ProviderStore
from tests.scheduler.dbcheck import add_host, assert_consistent
from tests.scheduler.factories import NOW, make_request


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_placement(engine: AsyncEngine, clock: Clock, **cfg: object) -> PlacementService:
    sched = SchedulerConfig.model_validate(cfg)
    store = ProviderStore(engine)
    return PlacementService(store, HostCache(store, clock), build_pipeline(sched), sched)


async def add_live_hosts(p: PlacementService, *names: str, memory_mb: int = 1000) -> None:
    for name in names:
        await add_host(p.store, name, memory_mb=memory_mb)
        p.cache.record_heartbeat(name)
    await p.cache.refresh_all()


async def test_the_best_host_is_claimed_and_the_next_best_come_back_unclaimed(
    engine: AsyncEngine,
) -> None:
    p = make_placement(engine, Clock())
    await add_live_hosts(p, "small", memory_mb=500)
    await add_live_hosts(p, "big", memory_mb=4000)
    await add_live_hosts(p, "medium", memory_mb=2000)

    outcome = await p.select_destinations(make_request(memory_mb=100, num_alternates=2))

    assert isinstance(outcome, Placed)
    assert outcome.selected.name == "big"
    assert [h.name for h in outcome.alternates] == ["medium", "small"]
    usage = await assert_consistent(engine)
    assert usage["big"].allocations == 1
    assert usage["medium"].allocations == usage["small"].allocations == 0


async def test_selecting_again_for_a_placed_consumer_returns_its_host_and_claims_nothing(
    engine: AsyncEngine,
) -> None:
    p = make_placement(engine, Clock())
    await add_live_hosts(p, "a", "b")
    first = await p.select_destinations(make_request(memory_mb=600))
    again = await p.select_destinations(make_request(memory_mb=600))
    assert isinstance(first, Placed)
    assert isinstance(again, Placed)
    assert again.selected.name == first.selected.name
    usage = await assert_consistent(engine)
    assert sum(u.allocations for u in usage.values()) == 1


async def test_a_retry_for_a_placed_consumer_succeeds_even_when_the_fleet_is_now_full(
    engine: AsyncEngine,
) -> None:
    p = make_placement(engine, Clock())
    await add_live_hosts(p, "only")
    assert isinstance(await p.select_destinations(make_request(memory_mb=1000)), Placed)
    again = await p.select_destinations(make_request(memory_mb=1000))
    assert isinstance(again, Placed)
    assert again.selected.name == "only"


async def test_a_scheduler_with_a_stale_cache_loses_the_race_and_places_on_the_next_host(
    engine: AsyncEngine,
) -> None:
    clock = Clock()
    mine, theirs = make_placement(engine, clock), make_placement(engine, clock)
    await add_live_hosts(mine, "roomy", memory_mb=2000)
    await add_live_hosts(mine, "snug", memory_mb=1000)
    await theirs.cache.refresh_all()
    for name in ("roomy", "snug"):
        theirs.cache.record_heartbeat(name)

    # The other scheduler fills "roomy"; this one's cache still thinks it is empty.
    taken = await theirs.select_destinations(make_request(consumer_id="x", memory_mb=2000))
    assert isinstance(taken, Placed)
    assert taken.selected.name == "roomy"
    outcome = await mine.select_destinations(make_request(consumer_id="y", memory_mb=500))

    assert isinstance(outcome, Placed)
    assert outcome.selected.name == "snug"
    cached = mine.cache.get("roomy")
    assert cached is not None
    assert cached.memory_mb.used == 2000
    await assert_consistent(engine)


async def test_no_valid_host_on_a_stale_cache_is_rechecked_against_the_database(
    engine: AsyncEngine,
) -> None:
    clock = Clock()
    p = make_placement(engine, clock)
    other = ProviderStore(engine)
    await add_host(other, "new-host")  # created by another replica; not in p's cache
    p.cache.record_heartbeat("new-host")

    outcome = await p.select_destinations(make_request())

    assert isinstance(outcome, Placed)
    assert outcome.selected.name == "new-host"


async def test_no_valid_host_says_which_filters_removed_the_hosts(engine: AsyncEngine) -> None:
    p = make_placement(engine, Clock())
    await add_live_hosts(p, "a", "b")
    await p.set_enabled("a", False, "maintenance")

    outcome = await p.select_destinations(make_request(memory_mb=5000))

    assert isinstance(outcome, NotPlaced)
    assert outcome.message == (
        "No valid host among 2 considered: enabled_and_up removed 1 (host disabled: 1); "
        "capacity removed 1 (insufficient MEMORY_MB: 1)."
    )
    assert (await assert_consistent(engine))["b"].allocations == 0


async def test_a_host_whose_heartbeats_stop_gets_no_new_work(engine: AsyncEngine) -> None:
    clock = Clock()
    p = make_placement(engine, clock, service_down_time=60)
    await add_live_hosts(p, "quiet", "chatty", memory_mb=4000)
    assert isinstance(await p.select_destinations(make_request(consumer_id="c0")), Placed)

    clock.now += timedelta(seconds=61)
    p.cache.record_heartbeat("chatty")
    outcomes = [await p.select_destinations(make_request(consumer_id=f"c{i}")) for i in range(1, 4)]

    assert all(isinstance(o, Placed) and o.selected.name == "chatty" for o in outcomes)


async def test_a_restarted_scheduler_takes_liveness_from_the_stored_heartbeats(
    engine: AsyncEngine,
) -> None:
    clock = Clock()
    before = make_placement(engine, clock)
    await add_live_hosts(before, "alive")
    await add_host(before.store, "long-dead")
    before.cache.record_heartbeat("long-dead", NOW - timedelta(hours=2))
    await before.cache.flush_heartbeats()

    after = make_placement(engine, clock)  # no heartbeat heard yet by this process
    await after.cache.refresh_all()
    hosts = {h.name: after.is_up(h) for h in after.cache.snapshot()}

    assert hosts == {"alive": True, "long-dead": False}


async def test_claiming_on_a_named_host_checks_it_exists_is_enabled_up_and_has_room(
    engine: AsyncEngine,
) -> None:
    clock = Clock()
    p = make_placement(engine, clock)
    await add_live_hosts(p, "ok", "off", "full")
    await add_host(p.store, "dead")
    await p.set_enabled("off", False, "")
    assert (await p.claim_on_host(make_request(consumer_id="f", memory_mb=1000), "full")).claimed

    cases = {
        "nowhere": REASON_UNKNOWN_HOST,
        "off": REASON_HOST_DISABLED,
        "dead": REASON_HOST_DOWN,
        "full": REASON_NO_ROOM,
    }
    for host, reason in cases.items():
        claim = await p.claim_on_host(make_request(consumer_id="c"), host)
        assert (claim.claimed, claim.reason) == (False, reason), host
    assert (await p.claim_on_host(make_request(consumer_id="c"), "ok")).claimed
    assert (await p.claim_on_host(make_request(consumer_id="c"), "ok")).claimed
    elsewhere = await p.claim_on_host(make_request(consumer_id="c"), "full")
    assert not elsewhere.claimed
    assert "already holds resources on ok" in elsewhere.reason
    await assert_consistent(engine)
