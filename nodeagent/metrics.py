"""The node agent's metrics, labelled by host: a fleet process of simulated hosts serves
them all on one endpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from nats.js import JetStreamContext
from prometheus_client import Counter
from prometheus_client.metrics_core import Metric

from controlplane.runtime import bus, metrics

HEARTBEATS_SENT = Counter(
    "loom_agent_heartbeats_sent",
    "Heartbeats the agent published for its host.",
    ["host"],
)
RECONCILE_ACTIONS = Counter(
    "loom_agent_reconcile_actions",
    "What the agent did to bring libvirt and the control plane's record together, by phase "
    "(start: the reconcile when the agent starts; power_sync: the periodic power-state "
    "sync) and kind (destroy_orphan, recreate, report_missing, report_power_state).",
    ["host", "phase", "kind"],
)
STALE_COMMANDS = Counter(
    "loom_agent_stale_commands_skipped",
    "Commands the agent acknowledged without carrying out because a newer command for the "
    "same instance had been carried out already (a redelivery overtaken by later work).",
    ["host"],
)


class HostCounters:
    """One host's counters, bound once so a heartbeat costs one increment."""

    def __init__(self, host: str) -> None:
        self.heartbeats_sent = HEARTBEATS_SENT.labels(host)
        self._stale_commands = STALE_COMMANDS.labels(host)
        self._host = host

    def stale_command(self) -> None:
        self._stale_commands.inc()

    def reconcile_action(self, phase: str, kind: str) -> None:
        RECONCILE_ACTIONS.labels(self._host, phase, kind).inc()


def watch_consumers(js: JetStreamContext, durables: Iterable[str]) -> Callable[[], None]:
    """Registers the scrape-time lag of the hosts' command consumers; call on the loop."""
    names = sorted(durables)

    async def read() -> list[Metric]:
        return metrics.consumer_lag_families_of(
            await bus.consumer_lags(js, bus.COMPUTE_STREAM, names)
        )

    return metrics.on_scrape("agent-consumers", metrics.consumer_lag_families(), read)
