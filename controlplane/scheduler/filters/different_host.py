"""Rejects hosts holding any of the instances the different_host hint names (Nova's
DifferentHostFilter). Where each instance is comes from the scheduler's allocations
(consumer = instance UUID), read once per decision into the cycle state; an instance that
holds no allocation is on no host and rules out none."""

from __future__ import annotations

from controlplane.scheduler.filters.base import PASSED, Verdict
from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.request import CycleState

NAME = "different_host"
REASON_SAME_HOST = "holds an instance named by different_host"


class DifferentHostFilter:
    name = NAME

    def filter_host(self, host: HostState, cycle: CycleState) -> Verdict:
        if host.name in cycle.hint_hosts.different_host:
            return Verdict.reject(REASON_SAME_HOST)
        return PASSED
