"""Keeps only hosts holding at least one of the instances the same_host hint names (Nova's
SameHostFilter). Where each instance is comes from the scheduler's allocations (consumer =
instance UUID), read once per decision into the cycle state; an instance that holds no
allocation is on no host, so a hint naming only such instances leaves no host."""

from __future__ import annotations

from controlplane.scheduler.filters.base import PASSED, Verdict
from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.request import CycleState

NAME = "same_host"
REASON_NOT_SAME_HOST = "holds none of the instances named by same_host"


class SameHostFilter:
    name = NAME

    def filter_host(self, host: HostState, cycle: CycleState) -> Verdict:
        wanted = cycle.hint_hosts.same_host
        if wanted is None or host.name in wanted:
            return PASSED
        return Verdict.reject(REASON_NOT_SAME_HOST)
