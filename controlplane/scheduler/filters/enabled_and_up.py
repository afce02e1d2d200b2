"""Rejects hosts an operator disabled or forced down, and hosts whose heartbeats stopped."""

from __future__ import annotations

from controlplane.scheduler.filters.base import PASSED, Verdict
from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.request import CycleState

NAME = "enabled_and_up"
REASON_DISABLED = "host disabled"
REASON_DOWN = "host down"
REASON_FORCED_DOWN = "host forced down"


class EnabledAndUpFilter:
    name = NAME

    def filter_host(self, host: HostState, cycle: CycleState) -> Verdict:
        if not host.enabled:
            return Verdict.reject(REASON_DISABLED)
        if host.forced_down:
            return Verdict.reject(REASON_FORCED_DOWN)
        if not host.is_up(cycle.now, cycle.down_after):
            return Verdict.reject(REASON_DOWN)
        return PASSED
