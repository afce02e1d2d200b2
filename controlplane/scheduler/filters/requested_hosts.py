"""Applies the request's own host constraints: ignore_hosts, and force_host.

A forced host still passes every other filter: forcing names where to go, it does not
lift capacity or liveness (the claim would refuse an over-full host anyway).
"""

from __future__ import annotations

from controlplane.scheduler.filters.base import PASSED, Verdict
from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.request import CycleState

NAME = "requested_hosts"
REASON_IGNORED = "host in ignore_hosts"
REASON_NOT_FORCED = "not the forced host"


class RequestedHostsFilter:
    name = NAME

    def filter_host(self, host: HostState, cycle: CycleState) -> Verdict:
        request = cycle.request
        if request.force_host and host.name != request.force_host:
            return Verdict.reject(REASON_NOT_FORCED)
        if host.name in request.ignore_hosts:
            return Verdict.reject(REASON_IGNORED)
        return PASSED
