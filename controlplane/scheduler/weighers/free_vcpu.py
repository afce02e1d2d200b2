"""Prefers hosts with more free virtual CPUs."""

from __future__ import annotations

from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.request import CycleState

NAME = "free_vcpu"


class FreeVcpuWeigher:
    name = NAME

    def weigh_host(self, host: HostState, cycle: CycleState) -> float:
        return self.host_score(host)

    def host_score(self, host: HostState) -> float:
        return float(host.vcpu.free)
