"""Keeps hosts whose aggregates agree with the image's properties.

For every metadata key of the host's aggregates that the image also has as a property,
the image's value must be one of the values the aggregates give (comma-separated lists
split). Properties the aggregates do not name, and metadata the image does not have, do
not matter.
"""

from __future__ import annotations

from controlplane.scheduler.filters.base import PASSED, Verdict
from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.request import CycleState

NAME = "aggregate_image_properties_isolation"
REASON_MISMATCH = "aggregate metadata does not match the image's properties"


class AggregateImagePropertiesIsolationFilter:
    name = NAME

    def filter_host(self, host: HostState, cycle: CycleState) -> Verdict:
        props = cycle.request.image_properties
        if not props or not host.metadata:
            return PASSED
        for key in host.metadata:
            if key in props and str(props[key]).strip() not in host.metadata_values(key):
                return Verdict.reject(REASON_MISMATCH)
        return PASSED
