"""Every filter, case by case: which hosts pass, and the reason for those that do not."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from controlplane.scheduler.filters import (
    REGISTRY,
    Filter,
    UnknownFilterError,
    build_filters,
    capacity,
    enabled_and_up,
    requested_hosts,
)
from controlplane.scheduler.filters import availability_zone as az
from controlplane.scheduler.hoststate import HostState, Resources
from controlplane.scheduler.request import PlacementRequest
from tests.scheduler.factories import make_cycle, make_host, make_request


@dataclass(frozen=True)
class Case:
    name: str
    filter: Filter
    host: HostState
    request: PlacementRequest
    reason: str  # "" when the host passes


CASES = [
    Case(
        "an enabled host with a recent heartbeat passes",
        enabled_and_up.EnabledAndUpFilter(),
        make_host(),
        make_request(),
        "",
    ),
    Case(
        "a disabled host is rejected as disabled",
        enabled_and_up.EnabledAndUpFilter(),
        make_host(enabled=False),
        make_request(),
        enabled_and_up.REASON_DISABLED,
    ),
    Case(
        "a host whose heartbeats stopped is rejected as down",
        enabled_and_up.EnabledAndUpFilter(),
        make_host(up=False),
        make_request(),
        enabled_and_up.REASON_DOWN,
    ),
    Case(
        "any zone is fine when the request names none",
        az.AvailabilityZoneFilter(),
        make_host(zone="az-east"),
        make_request(),
        "",
    ),
    Case(
        "a host in the requested zone passes",
        az.AvailabilityZoneFilter(),
        make_host(zone="az-east"),
        make_request(zone="az-east"),
        "",
    ),
    Case(
        "a host in another zone is rejected",
        az.AvailabilityZoneFilter(),
        make_host(zone="az-west"),
        make_request(zone="az-east"),
        az.REASON_OTHER_ZONE,
    ),
    Case(
        "a host in no zone belongs to the default zone nova",
        az.AvailabilityZoneFilter(),
        make_host(zone=None),
        make_request(zone="nova"),
        "",
    ),
    Case(
        "a host in no zone is rejected for a named zone",
        az.AvailabilityZoneFilter(),
        make_host(zone=None),
        make_request(zone="az-east"),
        az.REASON_OTHER_ZONE,
    ),
    Case(
        "a request that fits exactly passes",
        capacity.CapacityFilter(),
        make_host(vcpus=4, memory_mb=1024, disk_gb=20, used=Resources(3, 512, 10)),
        make_request(vcpus=1, memory_mb=512, disk_gb=10),
        "",
    ),
    Case(
        "one vcpu too many is rejected for VCPU",
        capacity.CapacityFilter(),
        make_host(vcpus=4, used=Resources(vcpus=4)),
        make_request(vcpus=1),
        capacity.REASON_INSUFFICIENT_VCPU,
    ),
    Case(
        "memory beyond total times ratio minus reserved is rejected for MEMORY_MB",
        capacity.CapacityFilter(),
        make_host(memory_mb=1000, ratios=(1.0, 1.5, 1.0), reserved=Resources(memory_mb=100)),
        make_request(memory_mb=1401),
        capacity.REASON_INSUFFICIENT_MEMORY_MB,
    ),
    Case(
        "memory up to total times ratio minus reserved passes",
        capacity.CapacityFilter(),
        make_host(memory_mb=1000, ratios=(1.0, 1.5, 1.0), reserved=Resources(memory_mb=100)),
        make_request(memory_mb=1400),
        "",
    ),
    Case(
        "overcommitted vcpus count the ratio",
        capacity.CapacityFilter(),
        make_host(vcpus=2, ratios=(16.0, 1.0, 1.0), used=Resources(vcpus=31)),
        make_request(vcpus=1),
        "",
    ),
    Case(
        "a full disk is rejected for DISK_GB",
        capacity.CapacityFilter(),
        make_host(disk_gb=10, used=Resources(disk_gb=5)),
        make_request(disk_gb=6),
        capacity.REASON_INSUFFICIENT_DISK_GB,
    ),
    Case(
        "a host the request ignores is rejected",
        requested_hosts.RequestedHostsFilter(),
        make_host("bad-host"),
        make_request(ignore_hosts=frozenset({"bad-host"})),
        requested_hosts.REASON_IGNORED,
    ),
    Case(
        "a host other than the forced one is rejected",
        requested_hosts.RequestedHostsFilter(),
        make_host("other"),
        make_request(force_host="chosen"),
        requested_hosts.REASON_NOT_FORCED,
    ),
    Case(
        "the forced host passes",
        requested_hosts.RequestedHostsFilter(),
        make_host("chosen"),
        make_request(force_host="chosen"),
        "",
    ),
    Case(
        "a host neither ignored nor excluded by a forced host passes",
        requested_hosts.RequestedHostsFilter(),
        make_host("fine"),
        make_request(ignore_hosts=frozenset({"other"})),
        "",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_filter_verdict(case: Case) -> None:
    verdict = case.filter.filter_host(case.host, make_cycle(case.request))
    assert verdict.passed == (case.reason == "")
    assert verdict.reason == case.reason


def test_every_registered_filter_carries_the_name_it_is_registered_under() -> None:
    for name, factory in REGISTRY.items():
        assert factory().name == name


def test_filters_are_built_in_the_configured_order() -> None:
    built = build_filters(["capacity", "enabled_and_up"])
    assert [f.name for f in built] == ["capacity", "enabled_and_up"]


def test_an_unknown_filter_name_is_an_error_naming_it_and_the_known_ones() -> None:
    with pytest.raises(UnknownFilterError, match=r"'no_such_filter'.*known: .*capacity"):
        build_filters(["capacity", "no_such_filter"])
