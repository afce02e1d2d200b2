"""Host filters: each removes hosts that cannot take a request, with a reason.

Operators name filters in SchedulerConfig.filters; `build_filters` turns the names into
instances through the registry, and an unknown name stops the scheduler at start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from controlplane.scheduler.filters import (
    aggregate_image_properties_isolation,
    aggregate_instance_extra_specs,
    aggregate_multitenancy_isolation,
    availability_zone,
    capacity,
    different_host,
    enabled_and_up,
    requested_hosts,
    same_host,
    server_group,
)
from controlplane.scheduler.filters.base import PASSED, Filter, Verdict

FilterFactory = Callable[[], Filter]

REGISTRY: dict[str, FilterFactory] = {
    requested_hosts.NAME: requested_hosts.RequestedHostsFilter,
    enabled_and_up.NAME: enabled_and_up.EnabledAndUpFilter,
    availability_zone.NAME: availability_zone.AvailabilityZoneFilter,
    same_host.NAME: same_host.SameHostFilter,
    different_host.NAME: different_host.DifferentHostFilter,
    capacity.NAME: capacity.CapacityFilter,
    server_group.NAME: server_group.ServerGroupFilter,
    aggregate_instance_extra_specs.NAME: (
        aggregate_instance_extra_specs.AggregateInstanceExtraSpecsFilter
    ),
    aggregate_multitenancy_isolation.NAME: (
        aggregate_multitenancy_isolation.AggregateMultiTenancyIsolationFilter
    ),
    aggregate_image_properties_isolation.NAME: (
        aggregate_image_properties_isolation.AggregateImagePropertiesIsolationFilter
    ),
}


class UnknownFilterError(ValueError):
    """A configured filter name is not in the registry."""


def build_filters(names: Iterable[str]) -> list[Filter]:
    """One filter per name, in the given order.

    Raises UnknownFilterError naming every unknown name and the known ones.
    """
    names = list(names)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UnknownFilterError(
            f"unknown scheduler filter(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(REGISTRY))}"
        )
    return [REGISTRY[n]() for n in names]


__all__ = ["PASSED", "REGISTRY", "Filter", "UnknownFilterError", "Verdict", "build_filters"]
