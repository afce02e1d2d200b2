"""The scheduler's metrics: claims the database refused after a decision, by reason, and the
hosts it knows by liveness, read from its cache at scrape time."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.runtime.metrics import serve_metrics
from controlplane.scheduler.metrics import watch_hosts
from controlplane.scheduler.placement import Placed
from controlplane.scheduler.request import GroupPolicy
from tests.scheduler.factories import make_request
from tests.scheduler.test_placement import Clock, add_live_hosts, make_placement
from tests.scheduler.test_server_groups import member, place


def conflicts(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("loom_scheduler_claim_conflicts_total", {"reason": reason}) or 0
    )


async def test_a_claim_lost_to_another_scheduler_counts_one_capacity_conflict(
    engine: AsyncEngine,
) -> None:
    clock = Clock()
    mine, theirs = make_placement(engine, clock), make_placement(engine, clock)
    await add_live_hosts(mine, "roomy", memory_mb=2000)
    await add_live_hosts(mine, "snug", memory_mb=1000)
    await theirs.cache.refresh_all()
    for name in ("roomy", "snug"):
        theirs.cache.record_heartbeat(name)
    assert isinstance(
        await theirs.select_destinations(make_request(consumer_id="x", memory_mb=2000)), Placed
    )
    before = conflicts("capacity"), conflicts("group")

    # This scheduler's cache still thinks "roomy" is empty: its claim there loses.
    outcome = await mine.select_destinations(make_request(consumer_id="y", memory_mb=500))

    assert isinstance(outcome, Placed)
    assert (conflicts("capacity"), conflicts("group")) == (before[0] + 1, before[1])


async def test_an_alternate_claim_that_breaks_anti_affinity_counts_one_group_conflict(
    engine: AsyncEngine,
) -> None:
    p = make_placement(engine, Clock())
    await add_live_hosts(p, "h1", "h2")
    group = GroupPolicy(id="g-metrics", policy="anti-affinity")
    taken = await place(p, member(0, group))
    before = conflicts("group")

    assert not (await p.claim_on_host(member(1, group), taken)).claimed

    assert conflicts("group") == before + 1


async def test_a_scrape_counts_the_hosts_up_down_and_disabled_as_the_cache_holds_them(
    engine: AsyncEngine,
) -> None:
    clock = Clock()
    p = make_placement(engine, clock, service_down_time=60)
    await add_live_hosts(p, "quiet", "chatty", "parked")
    await p.set_enabled("parked", False, "maintenance")
    clock.now += timedelta(seconds=61)
    p.cache.record_heartbeat("chatty")
    endpoint = serve_metrics("scheduler-test", "127.0.0.1:0")
    assert endpoint is not None

    remove = watch_hosts(p.cache, p.down_after)
    try:
        text = (await asyncio.to_thread(httpx.get, endpoint.url, timeout=10)).text
    finally:
        remove()

    for state, n in (("up", 1), ("down", 1), ("disabled", 1)):
        assert f'loom_scheduler_hosts{{state="{state}"}} {n}.0' in text, text
