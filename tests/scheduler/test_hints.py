"""The same_host and different_host hints on a real database: where each named instance
is comes from the scheduler's own allocations, on the walk and on the full scan alike,
with or without a server group."""

from __future__ import annotations

from dataclasses import replace

import pytest
from loom.scheduler.v1 import scheduler_pb2
from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.config import SchedulerConfig
from controlplane.scheduler import convert
from controlplane.scheduler.placement import NotPlaced, Placed, PlacementService
from controlplane.scheduler.request import GroupPolicy, PlacementRequest
from tests.scheduler.dbcheck import assert_consistent
from tests.scheduler.factories import make_request
from tests.scheduler.test_placement import Clock, add_live_hosts, make_placement

# One host-only weigher: decisions walk the host order. Two: every host is scanned.
WEIGHERS = {
    "walk": {"free_ram": 1.0},
    "full scan": {"free_ram": 1.0, "few_instances": 1.0},
}


@pytest.fixture(params=sorted(WEIGHERS))
def weighers(request: pytest.FixtureRequest) -> dict[str, float]:
    return WEIGHERS[request.param]


async def fleet(engine: AsyncEngine, weighers: dict[str, float]) -> PlacementService:
    """Three live hosts, "big" the roomiest (the weighers' favourite), then "mid", "small"."""
    p = make_placement(engine, Clock(), weighers=weighers)
    await add_live_hosts(p, "small", memory_mb=2000)
    await add_live_hosts(p, "mid", memory_mb=3000)
    await add_live_hosts(p, "big", memory_mb=8000)
    return p


def hinted(
    consumer: str,
    *,
    same_host: tuple[str, ...] = (),
    different_host: tuple[str, ...] = (),
    num_alternates: int = 2,
) -> PlacementRequest:
    return replace(
        make_request(consumer_id=consumer, memory_mb=100, num_alternates=num_alternates),
        same_host=frozenset(same_host),
        different_host=frozenset(different_host),
    )


async def put(p: PlacementService, consumer: str, host: str) -> None:
    outcome = await p.select_destinations(
        replace(make_request(consumer_id=consumer, memory_mb=100), force_host=host)
    )
    assert isinstance(outcome, Placed)
    assert outcome.selected.name == host


async def test_same_host_places_on_the_named_instances_host_though_another_is_roomier(
    engine: AsyncEngine, weighers: dict[str, float]
) -> None:
    p = await fleet(engine, weighers)
    await put(p, "a", "small")
    for i in range(4):
        outcome = await p.select_destinations(hinted(f"s{i}", same_host=("a",)))
        assert isinstance(outcome, Placed)
        assert outcome.selected.name == "small"
        assert outcome.alternates == ()
    assert (await assert_consistent(engine))["small"].allocations == 5


async def test_same_host_naming_instances_on_two_hosts_takes_either(
    engine: AsyncEngine, weighers: dict[str, float]
) -> None:
    p = await fleet(engine, weighers)
    await put(p, "a", "small")
    await put(p, "b", "mid")
    outcome = await p.select_destinations(hinted("s", same_host=("a", "b", "unknown")))
    assert isinstance(outcome, Placed)
    assert {outcome.selected.name, *(h.name for h in outcome.alternates)} == {"small", "mid"}


async def test_different_host_never_places_on_a_named_instances_host(
    engine: AsyncEngine, weighers: dict[str, float]
) -> None:
    p = await fleet(engine, weighers)
    await put(p, "a", "big")
    chosen = []
    for i in range(6):
        outcome = await p.select_destinations(hinted(f"d{i}", different_host=("a",)))
        assert isinstance(outcome, Placed)
        chosen.append(outcome.selected.name)
        assert "big" not in {h.name for h in outcome.alternates}
    assert "big" not in chosen
    # Without the hint, the roomiest host takes the next server.
    plain = await p.select_destinations(hinted("plain"))
    assert isinstance(plain, Placed)
    assert plain.selected.name == "big"


async def test_same_host_naming_only_instances_that_hold_nothing_finds_no_valid_host(
    engine: AsyncEngine, weighers: dict[str, float]
) -> None:
    p = await fleet(engine, weighers)
    await put(p, "gone", "mid")
    assert await p.release("gone")
    outcome = await p.select_destinations(hinted("s", same_host=("gone", "never-existed")))
    assert isinstance(outcome, NotPlaced)
    assert (
        "same_host removed 3 (holds none of the instances named by same_host: 3)" in outcome.message
    )
    assert sum(u.allocations for u in (await assert_consistent(engine)).values()) == 0


async def test_different_host_naming_instances_that_hold_nothing_rules_out_no_host(
    engine: AsyncEngine, weighers: dict[str, float]
) -> None:
    p = await fleet(engine, weighers)
    outcome = await p.select_destinations(hinted("d", different_host=("never-existed",)))
    assert isinstance(outcome, Placed)
    assert outcome.selected.name == "big"


async def test_different_host_naming_every_host_says_the_hint_removed_them(
    engine: AsyncEngine, weighers: dict[str, float]
) -> None:
    p = await fleet(engine, weighers)
    for name in ("small", "mid", "big"):
        await put(p, f"on-{name}", name)
    outcome = await p.select_destinations(
        hinted("d", different_host=("on-small", "on-mid", "on-big"))
    )
    assert isinstance(outcome, NotPlaced)
    assert "different_host removed 3 (holds an instance named by different_host: 3)" in (
        outcome.message
    )


async def test_a_group_member_keeps_both_its_groups_policy_and_its_hints(
    engine: AsyncEngine, weighers: dict[str, float]
) -> None:
    p = await fleet(engine, weighers)
    await put(p, "a", "big")
    group = GroupPolicy(id="g-h", policy="anti-affinity")
    first = await p.select_destinations(replace(hinted("m0", different_host=("a",)), group=group))
    assert isinstance(first, Placed)
    assert first.selected.name == "mid"
    second = await p.select_destinations(replace(hinted("m1", different_host=("a",)), group=group))
    assert isinstance(second, Placed)
    assert second.selected.name == "small"
    third = await p.select_destinations(replace(hinted("m2", different_host=("a",)), group=group))
    assert isinstance(third, NotPlaced)


def test_a_request_naming_too_many_instances_or_a_bad_id_is_invalid() -> None:
    cfg = SchedulerConfig()
    base = {"consumer_id": "c", "resources": {"vcpus": 1}}
    ok = convert.placement_request(
        scheduler_pb2.SelectDestinationsRequest(
            **base, same_host=["a", "b", "a"], different_host=["c"]
        ),
        cfg,
    )
    assert (ok.same_host, ok.different_host) == (frozenset({"a", "b"}), frozenset({"c"}))
    too_many = [f"i-{n}" for n in range(convert.MAX_HINT_INSTANCES + 1)]
    for bad in (
        {"same_host": too_many},
        {"different_host": too_many},
        {"same_host": [""]},
        {"different_host": ["x" * 37]},
    ):
        with pytest.raises(convert.InvalidInput):
            convert.placement_request(
                scheduler_pb2.SelectDestinationsRequest(**base, **bad),  # type: ignore[arg-type]
                cfg,
            )
