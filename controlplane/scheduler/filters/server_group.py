"""Keeps a server group's policy: affinity, anti-affinity (with max_server_per_host), and
the soft policies' current tier. Members per host come from the scheduler's allocations."""

from __future__ import annotations

from controlplane.scheduler.filters.base import PASSED, Verdict
from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.request import CycleState

NAME = "server_group"


class ServerGroupFilter:
    name = NAME

    def filter_host(self, host: HostState, cycle: CycleState) -> Verdict:
        rule = cycle.group_rule
        if rule is None:
            return PASSED
        reason = rule.reason(host.name)
        return Verdict.reject(reason) if reason else PASSED
