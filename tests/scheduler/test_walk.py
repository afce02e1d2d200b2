"""The walk over hosts kept in ranking order decides exactly as the full pipeline does."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.config import SchedulerConfig
from controlplane.scheduler.hostorder import HostOrder, order_spec_for
from controlplane.scheduler.hoststate import HostState, Resources
from controlplane.scheduler.pipeline import Pipeline, build_pipeline, rank_hosts
from controlplane.scheduler.request import CycleState
from controlplane.scheduler.walk import rank_walking
from tests.scheduler.factories import make_cycle, make_host, make_request

NAMES = [f"h{i:02d}" for i in range(24)]
# Tiny and huge factors make distinct scores round to equal weights (ties by name).
FACTORS = [1.0, -1.0, 2.5, -0.3, 0.0, 5e-324, -5e-324, 1e300]


@st.composite
def fleets(draw: st.DrawFn) -> list[HostState]:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=len(NAMES)))
    hosts = []
    for name in names:
        memory = draw(st.sampled_from([1000, 2000, 4000]))
        vcpus = draw(st.integers(1, 8))
        hosts.append(
            make_host(
                name,
                vcpus=vcpus,
                memory_mb=memory,
                used=Resources(
                    vcpus=draw(st.integers(0, vcpus)),
                    memory_mb=draw(st.sampled_from([0, 0, 500, 1000, memory])),
                ),
                zone=draw(st.sampled_from([None, "east", "west"])),
                enabled=draw(st.booleans().filter(lambda b: b) | st.booleans()),
                up=draw(st.booleans().filter(lambda b: b) | st.booleans()),
                allocation_count=draw(st.integers(0, 3)),
            )
        )
    return hosts


@st.composite
def cycles(draw: st.DrawFn) -> CycleState:
    return make_cycle(
        make_request(
            vcpus=draw(st.integers(0, 3)),
            memory_mb=draw(st.sampled_from([0, 256, 1000, 3000])),
            disk_gb=1,
            zone=draw(st.sampled_from(["", "east", "nova"])),
            ignore_hosts=frozenset(draw(st.lists(st.sampled_from(NAMES), max_size=3))),
            force_host=draw(st.sampled_from(["", "", "", "h03"])),
        )
    )


@st.composite
def pipelines(draw: st.DrawFn) -> Pipeline:
    weigher = draw(st.sampled_from(["free_ram", "free_vcpu", "few_instances"]))
    factor = draw(st.sampled_from(FACTORS))
    weighers = draw(
        st.sampled_from(
            [{}, {weigher: factor}, {weigher: factor, "few_instances": 0.0}, {weigher: 0.0}]
        )
    )
    cfg = SchedulerConfig(weighers=weighers, host_subset_size=draw(st.integers(1, 3)))
    return build_pipeline(cfg)


def ordered(pipeline: Pipeline, hosts: list[HostState]) -> HostOrder:
    spec = order_spec_for(pipeline.weighers)
    assert spec is not None
    order = HostOrder(spec)
    for host in hosts:
        order.put(host)
    return order


@settings(max_examples=400, deadline=None)
@given(
    hosts=fleets(),
    cycle=cycles(),
    pipeline=pipelines(),
    keep=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_the_walk_ranks_the_same_hosts_with_the_same_weights_as_the_full_pipeline(
    hosts: list[HostState], cycle: CycleState, pipeline: Pipeline, keep: int, seed: int
) -> None:
    full = rank_hosts(hosts, cycle, pipeline, random.Random(seed), keep=keep)
    walked = rank_walking(
        ordered(pipeline, hosts),
        {h.name: h for h in hosts},
        cycle,
        pipeline,
        keep,
        random.Random(seed),
    )
    assert [(wh.host.name, wh.weight) for wh in walked.ranked] == [
        (wh.host.name, wh.weight) for wh in full.ranked
    ]
    assert walked.hosts_considered == full.hosts_considered
    if not full.found:
        assert walked.rejections == full.rejections
        assert walked.explain() == full.explain()


@settings(max_examples=200, deadline=None)
@given(
    before=fleets(),
    after=fleets(),
    cycle=cycles(),
    pipeline=pipelines(),
)
def test_an_order_kept_up_to_date_host_by_host_ranks_as_one_built_afresh(
    before: list[HostState], after: list[HostState], cycle: CycleState, pipeline: Pipeline
) -> None:
    # Hosts are never forgotten: the fleet after is every host before, some changed.
    fleet = {h.name: h for h in before} | {h.name: h for h in after}
    kept = ordered(pipeline, before)
    for host in after:
        kept.put(host)
    fresh = ordered(pipeline, list(fleet.values()))
    assert list(kept.best_first()) == list(fresh.best_first())
    walked = rank_walking(kept, fleet, cycle, pipeline, 3, random.Random(1))
    full = rank_hosts(list(fleet.values()), cycle, pipeline, random.Random(1), keep=3)
    assert [wh.host.name for wh in walked.ranked] == [wh.host.name for wh in full.ranked]


def test_a_no_valid_host_from_the_walk_names_every_filter_that_removed_hosts() -> None:
    hosts = [
        make_host("off", enabled=False),
        make_host("dead", up=False),
        make_host("small", vcpus=1, used=Resources(vcpus=1)),
    ]
    pipeline = build_pipeline(SchedulerConfig())
    decision = rank_walking(
        ordered(pipeline, hosts), {h.name: h for h in hosts}, make_cycle(), pipeline, 1
    )
    assert not decision.found
    assert decision.explain() == (
        "No valid host among 3 considered: enabled_and_up removed 2 (host disabled: 1, "
        "host down: 1); capacity removed 1 (insufficient VCPU: 1)."
    )


def test_a_found_decision_evaluates_filters_only_on_the_hosts_it_walked_past() -> None:
    hosts = [make_host(f"h{i}", used=Resources(memory_mb=100 * i)) for i in range(50)]
    pipeline = build_pipeline(SchedulerConfig())
    decision = rank_walking(
        ordered(pipeline, hosts), {h.name: h for h in hosts}, make_cycle(), pipeline, 3
    )
    assert [wh.host.name for wh in decision.ranked] == ["h0", "h1", "h2"]
    assert all(r.hosts_removed == 0 for r in decision.rejections)


def test_two_weighers_with_nonzero_factors_allow_no_host_order() -> None:
    pipeline = build_pipeline(SchedulerConfig(weighers={"free_ram": 1.0, "free_vcpu": 1.0}))
    assert order_spec_for(pipeline.weighers) is None


def test_weighers_with_a_zero_factor_do_not_count_towards_the_order() -> None:
    pipeline = build_pipeline(SchedulerConfig(weighers={"free_ram": 0.0, "free_vcpu": -2.0}))
    spec = order_spec_for(pipeline.weighers)
    assert spec is not None
    assert spec.weighed is not None
    assert spec.weighed.weigher.name == "free_vcpu"
    assert not spec.descending


@settings(max_examples=300, deadline=None)
@given(
    used=st.lists(st.integers(0, 4000), min_size=2, max_size=24),
    names=st.permutations(NAMES),
    factor=st.sampled_from([5e-324, -5e-324, 1e-320, 1.0, -1.0]),
    keep=st.integers(1, 4),
)
def test_weights_rounded_equal_rank_by_name_in_the_walk_as_in_the_full_pipeline(
    used: list[int], names: list[str], factor: float, keep: int
) -> None:
    # Every host passes; only the tie-breaking by name decides among equal weights.
    hosts = [
        make_host(name, memory_mb=4000, used=Resources(memory_mb=u))
        for name, u in zip(names, used, strict=False)
    ]
    pipeline = build_pipeline(SchedulerConfig(weighers={"free_ram": factor}))
    cycle = make_cycle(make_request(memory_mb=0, disk_gb=1))
    full = rank_hosts(hosts, cycle, pipeline, keep=keep)
    walked = rank_walking(
        ordered(pipeline, hosts), {h.name: h for h in hosts}, cycle, pipeline, keep
    )
    assert [wh.host.name for wh in walked.ranked] == [wh.host.name for wh in full.ranked]


def test_a_better_score_rounded_to_the_same_weight_ranks_after_a_smaller_name() -> None:
    hosts = [
        make_host("z", memory_mb=4000),
        make_host("a", memory_mb=4000, used=Resources(memory_mb=500)),
        make_host("m", memory_mb=4000, used=Resources(memory_mb=3000)),
    ]
    pipeline = build_pipeline(SchedulerConfig(weighers={"free_ram": 5e-324}))
    cycle = make_cycle(make_request(memory_mb=0, disk_gb=1))
    walked = rank_walking(ordered(pipeline, hosts), {h.name: h for h in hosts}, cycle, pipeline, 1)
    assert [wh.host.name for wh in walked.ranked] == ["a"]
