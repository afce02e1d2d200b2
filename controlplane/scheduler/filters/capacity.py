"""Rejects hosts without room for the request in any one resource class.

Room is total x ratio - reserved - used, the very expression the claim's conditional
UPDATE checks, so a host this filter passes is one the claim can succeed on.
"""

from __future__ import annotations

from controlplane.scheduler.filters.base import PASSED, Verdict
from controlplane.scheduler.hoststate import HostState, ResourceClass
from controlplane.scheduler.request import CycleState

NAME = "capacity"
REASONS = {rc: f"insufficient {rc.value}" for rc in ResourceClass}
REASON_INSUFFICIENT_VCPU = REASONS[ResourceClass.VCPU]
REASON_INSUFFICIENT_MEMORY_MB = REASONS[ResourceClass.MEMORY_MB]
REASON_INSUFFICIENT_DISK_GB = REASONS[ResourceClass.DISK_GB]


class CapacityFilter:
    name = NAME

    def filter_host(self, host: HostState, cycle: CycleState) -> Verdict:
        short = host.first_class_short(cycle.request.resources)
        return PASSED if short is None else Verdict.reject(REASONS[short])
