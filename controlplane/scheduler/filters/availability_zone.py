"""Keeps only hosts in the requested availability zone (any zone when none is asked)."""

from __future__ import annotations

from controlplane.scheduler.filters.base import PASSED, Verdict
from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.request import CycleState

NAME = "availability_zone"
REASON_OTHER_ZONE = "not in the requested availability zone"


class AvailabilityZoneFilter:
    name = NAME

    def filter_host(self, host: HostState, cycle: CycleState) -> Verdict:
        if cycle.zone is None or (host.availability_zone or cycle.default_zone) == cycle.zone:
            return PASSED
        return Verdict.reject(REASON_OTHER_ZONE)
