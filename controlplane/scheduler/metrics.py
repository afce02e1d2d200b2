"""The scheduler's metrics: claims that lost a race, and hosts by liveness.

Claim conflicts are counted as the store answers them. The hosts gauge is read from this
process's host cache when /metrics is scraped (no query: the cache is in memory).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from controlplane.runtime import metrics
from controlplane.scheduler.hostcache import HostCache
from controlplane.scheduler.store import ClaimResult, ClaimStatus

CLAIM_CONFLICTS = Counter(
    "loom_scheduler_claim_conflicts",
    "Claims the database refused after the scheduler chose the host, by reason: capacity "
    "(another claim took the room first) or group (a server-group member was placed "
    "meanwhile).",
    ["reason"],
)
_CONFLICT_OF = {
    ClaimStatus.NO_ROOM: CLAIM_CONFLICTS.labels("capacity"),
    ClaimStatus.GROUP_CONFLICT: CLAIM_CONFLICTS.labels("group"),
}

HOSTS = "loom_scheduler_hosts"


def count_conflict(result: ClaimResult) -> None:
    """Counts the claim when it lost to a concurrent one."""
    counter = _CONFLICT_OF.get(result.status)
    if counter is not None:
        counter.inc()


def _hosts_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        HOSTS,
        "Hosts this scheduler knows, by state: up, down (enabled, no heartbeat within "
        "service_down_time: no new work) and disabled.",
        labels=["state"],
    )


def watch_hosts(cache: HostCache, down_after: timedelta) -> Callable[[], None]:
    """Registers the scrape-time hosts gauge; call on the service's loop. Returns the undo."""

    async def read() -> list[Metric]:
        now = cache.clock()
        counts = {"up": 0, "down": 0, "disabled": 0}
        for host in cache.snapshot():
            if not host.enabled:
                counts["disabled"] += 1
            elif host.is_up(now, down_after):
                counts["up"] += 1
            else:
                counts["down"] += 1
        family = _hosts_family()
        for state, n in counts.items():
            family.add_metric([state], n)
        return [family]

    return metrics.on_scrape("scheduler-hosts", [_hosts_family()], read)
