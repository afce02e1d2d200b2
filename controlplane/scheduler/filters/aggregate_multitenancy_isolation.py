"""Keeps hosts of tenant-isolated aggregates for their tenants.

A host in an aggregate with `filter_tenant_id` metadata (or `filter_tenant_id_<suffix>`,
for lists too long for one value; values may be comma-separated) takes only consumers of
those projects. Hosts in no such aggregate take anyone.
"""

from __future__ import annotations

from controlplane.scheduler.filters.base import PASSED, Verdict
from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.request import CycleState

NAME = "aggregate_multitenancy_isolation"
KEY = "filter_tenant_id"
REASON_OTHER_TENANTS = "host isolated for other projects (filter_tenant_id)"


def tenants_of(host: HostState) -> set[str]:
    """The projects the host is reserved for; empty when it is not."""
    out: set[str] = set()
    for key in host.metadata:
        if key.startswith(KEY):
            out |= host.metadata_values(key)
    out.discard("")
    return out


class AggregateMultiTenancyIsolationFilter:
    name = NAME

    def filter_host(self, host: HostState, cycle: CycleState) -> Verdict:
        if not host.metadata:
            return PASSED
        tenants = tenants_of(host)
        if tenants and cycle.request.project_id not in tenants:
            return Verdict.reject(REASON_OTHER_TENANTS)
        return PASSED
