"""Weighers give raw scores; normalisation maps them to [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from controlplane.scheduler.hoststate import HostState, Resources
from controlplane.scheduler.pipeline import normalise
from controlplane.scheduler.weighers import (
    REGISTRY,
    UnknownWeigherError,
    Weigher,
    build_weighers,
)
from controlplane.scheduler.weighers.few_instances import FewInstancesWeigher
from controlplane.scheduler.weighers.free_ram import FreeRamWeigher
from controlplane.scheduler.weighers.free_vcpu import FreeVcpuWeigher
from tests.scheduler.factories import make_cycle, make_host


@dataclass(frozen=True)
class Case:
    name: str
    weigher: Weigher
    better: HostState
    worse: HostState


CASES = [
    Case(
        "free_ram scores the host with more free memory higher",
        FreeRamWeigher(),
        make_host(memory_mb=4096, used=Resources(memory_mb=1024)),
        make_host(memory_mb=4096, used=Resources(memory_mb=2048)),
    ),
    Case(
        "free_ram counts the allocation ratio and the reserved memory",
        FreeRamWeigher(),
        make_host(memory_mb=1000, ratios=(1.0, 2.0, 1.0)),
        make_host(memory_mb=1500, reserved=Resources(memory_mb=600)),
    ),
    Case(
        "free_vcpu scores the host with more free vcpus higher",
        FreeVcpuWeigher(),
        make_host(vcpus=8, used=Resources(vcpus=2)),
        make_host(vcpus=8, used=Resources(vcpus=6)),
    ),
    Case(
        "few_instances scores the host with fewer allocations higher",
        FewInstancesWeigher(),
        make_host(allocation_count=1),
        make_host(allocation_count=7),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_weigher_prefers(case: Case) -> None:
    cycle = make_cycle()
    assert case.weigher.weigh_host(case.better, cycle) > case.weigher.weigh_host(case.worse, cycle)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([10.0, 20.0, 15.0], [0.0, 1.0, 0.5]),
        ([-5.0, 5.0], [0.0, 1.0]),
        ([7.0, 7.0], [0.0, 0.0]),
        ([], []),
    ],
    ids=[
        "the lowest maps to 0, the highest to 1, the rest in between",
        "negative raw scores normalise like any others",
        "equal scores all normalise to 0 so they cannot decide",
        "no hosts give no scores",
    ],
)
def test_normalise(values: list[float], expected: list[float]) -> None:
    assert normalise(values) == expected


def test_every_registered_weigher_carries_the_name_it_is_registered_under() -> None:
    for name, factory in REGISTRY.items():
        assert factory().name == name


def test_weighers_are_built_with_their_configured_factors() -> None:
    built = build_weighers({"free_ram": -1.0, "free_vcpu": 2.5})
    assert [(w.weigher.name, w.factor) for w in built] == [("free_ram", -1.0), ("free_vcpu", 2.5)]


def test_an_unknown_weigher_name_is_an_error_naming_it() -> None:
    with pytest.raises(UnknownWeigherError, match="'free_unicorns'"):
        build_weighers({"free_unicorns": 1.0})


def test_a_non_finite_factor_is_refused() -> None:
    with pytest.raises(UnknownWeigherError, match="finite"):
        build_weighers({"free_ram": float("nan")})
