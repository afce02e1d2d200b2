"""Keeps hosts whose aggregates' metadata meets the flavor's extra specs.

Only keys scoped `aggregate_instance_extra_specs:` and keys with no scope at all are
matched (other scopes, `hw:` and the like, belong to other parts of Loom). A host passes
when, for every such key, one of its aggregates gives the key a value that meets the spec
(see extra_specs_ops for the operators). A flavor with none of these keys passes anywhere.
"""

from __future__ import annotations

from controlplane.scheduler.filters.base import PASSED, Verdict
from controlplane.scheduler.filters.extra_specs_ops import matches
from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.request import CycleState

NAME = "aggregate_instance_extra_specs"
REASON_NO_METADATA = "no aggregate metadata for the flavor's extra specs"
REASON_MISMATCH = "aggregate metadata does not match the flavor's extra specs"


class AggregateInstanceExtraSpecsFilter:
    name = NAME

    def filter_host(self, host: HostState, cycle: CycleState) -> Verdict:
        specs = cycle.aggregate_extra_specs
        if not specs:
            return PASSED
        for key, requirement in specs.items():
            values = host.metadata.get(key)
            if not values:
                return Verdict.reject(REASON_NO_METADATA)
            if not any(matches(v, requirement) for v in values):
                return Verdict.reject(REASON_MISMATCH)
        return PASSED
