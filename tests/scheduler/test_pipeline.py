"""The pipeline: filters in order with their rejection counts, weighing, ranking."""

from __future__ import annotations

import random

import pytest

from controlplane.config import SchedulerConfig
from controlplane.scheduler.filters import UnknownFilterError
from controlplane.scheduler.hoststate import Resources
from controlplane.scheduler.pipeline import build_pipeline, rank_hosts
from tests.scheduler.factories import make_cycle, make_host, make_request


def test_each_filter_records_how_many_hosts_it_removed_and_why() -> None:
    hosts = [
        make_host("ignored"),
        make_host("off", enabled=False),
        make_host("dead", up=False),
        make_host("west", zone="west"),
        make_host("full", zone="east", used=Resources(memory_mb=32768)),
        make_host("small", zone="east", vcpus=1, used=Resources(vcpus=1)),
        make_host("good", zone="east"),
    ]
    pipeline = build_pipeline(SchedulerConfig())
    request = make_request(zone="east", ignore_hosts=frozenset({"ignored"}))
    decision = rank_hosts(hosts, make_cycle(request), pipeline)

    assert [wh.host.name for wh in decision.ranked] == ["good"]
    assert decision.hosts_considered == 7
    by_filter = {r.filter: (r.hosts_removed, dict(r.reasons)) for r in decision.rejections}
    assert by_filter == {
        "requested_hosts": (1, {"host in ignore_hosts": 1}),
        "enabled_and_up": (2, {"host disabled": 1, "host down": 1}),
        "availability_zone": (1, {"not in the requested availability zone": 1}),
        "same_host": (0, {}),
        "different_host": (0, {}),
        "aggregate_multitenancy_isolation": (0, {}),
        "aggregate_image_properties_isolation": (0, {}),
        "aggregate_instance_extra_specs": (0, {}),
        "capacity": (2, {"insufficient MEMORY_MB": 1, "insufficient VCPU": 1}),
        "server_group": (0, {}),
    }


def test_requested_hosts_first_and_the_hint_and_group_filters_last_even_unconfigured() -> None:
    pipeline = build_pipeline(SchedulerConfig(filters=("capacity",)))
    assert [f.name for f in pipeline.filters] == [
        "requested_hosts",
        "capacity",
        "same_host",
        "different_host",
        "server_group",
    ]


def test_hint_filters_an_operator_places_stay_where_they_are_named() -> None:
    pipeline = build_pipeline(SchedulerConfig(filters=("different_host", "capacity", "same_host")))
    assert [f.name for f in pipeline.filters] == [
        "requested_hosts",
        "different_host",
        "capacity",
        "same_host",
        "server_group",
    ]


def test_no_valid_host_explains_which_filters_removed_how_many_hosts() -> None:
    hosts = [make_host(enabled=False), make_host(vcpus=1, used=Resources(vcpus=1))]
    decision = rank_hosts(hosts, make_cycle(), build_pipeline(SchedulerConfig()))
    assert not decision.found
    assert decision.explain() == (
        "No valid host among 2 considered: enabled_and_up removed 1 (host disabled: 1); "
        "capacity removed 1 (insufficient VCPU: 1)."
    )


def test_an_empty_fleet_says_no_host_is_known() -> None:
    decision = rank_hosts([], make_cycle(), build_pipeline(SchedulerConfig()))
    assert "no host is known" in decision.explain()


def test_free_ram_with_a_positive_factor_spreads_onto_the_emptiest_host() -> None:
    hosts = [
        make_host("busy", used=Resources(memory_mb=30000)),
        make_host("empty"),
        make_host("half", used=Resources(memory_mb=16000)),
    ]
    pipeline = build_pipeline(SchedulerConfig(weighers={"free_ram": 1.0}))
    decision = rank_hosts(hosts, make_cycle(), pipeline)
    assert [wh.host.name for wh in decision.ranked] == ["empty", "half", "busy"]


def test_free_ram_with_a_negative_factor_stacks_onto_the_fullest_host() -> None:
    hosts = [
        make_host("busy", used=Resources(memory_mb=30000)),
        make_host("empty"),
        make_host("half", used=Resources(memory_mb=16000)),
    ]
    pipeline = build_pipeline(SchedulerConfig(weighers={"free_ram": -1.0}))
    decision = rank_hosts(hosts, make_cycle(), pipeline)
    assert [wh.host.name for wh in decision.ranked] == ["busy", "half", "empty"]


def test_weights_compose_as_normalised_scores_times_factors() -> None:
    # ram prefers a, vcpu prefers b; vcpu's factor is larger, so b wins with weight 2.
    a = make_host("a", vcpus=4, memory_mb=8000)
    b = make_host("b", vcpus=8, memory_mb=4000)
    pipeline = build_pipeline(SchedulerConfig(weighers={"free_ram": 1.0, "free_vcpu": 2.0}))
    decision = rank_hosts([a, b], make_cycle(), pipeline)
    assert [(wh.host.name, wh.weight) for wh in decision.ranked] == [("b", 2.0), ("a", 1.0)]


def test_a_host_subset_picks_among_the_best_few_only() -> None:
    hosts = [make_host(f"h{i}", used=Resources(memory_mb=1000 * i)) for i in range(6)]
    pipeline = build_pipeline(SchedulerConfig(host_subset_size=3))
    firsts = {
        rank_hosts(hosts, make_cycle(), pipeline, random.Random(seed)).ranked[0].host.name
        for seed in range(50)
    }
    assert firsts == {"h0", "h1", "h2"}


def test_an_unknown_configured_filter_stops_the_pipeline_from_being_built() -> None:
    with pytest.raises(UnknownFilterError):
        build_pipeline(SchedulerConfig(filters=("capacity", "typo_filter")))
