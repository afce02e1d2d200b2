"""Prefers hosts running fewer instances (spreads the failure domain, not only the load)."""

from __future__ import annotations

from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.request import CycleState

NAME = "few_instances"


class FewInstancesWeigher:
    name = NAME

    def weigh_host(self, host: HostState, cycle: CycleState) -> float:
        return self.host_score(host)

    def host_score(self, host: HostState) -> float:
        return -float(host.allocation_count)
