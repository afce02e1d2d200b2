"""docs/grafana-loom.json queries only metrics Loom's services export, so the dashboard
cannot drift from the code. (tests/e2e/test_metrics.py checks the same names against the
/metrics pages of a running stack.)"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controlplane.conductor import metrics as conductor_metrics
from controlplane.runtime import bus, grpcserver, stats
from controlplane.scheduler import metrics as scheduler_metrics
from gateway import metrics as gateway_metrics
from nodeagent import metrics as agent_metrics
from tests.support.dashboard import dashboard_metric_names, exported, expressions, metric_names

# Every module that defines metrics, imported as the services import them.
METRIC_MODULES = (grpcserver, stats, gateway_metrics, conductor_metrics, scheduler_metrics)


async def exported_families() -> set[str]:
    """Every family the services' registries announce, scrape-time readings included: they
    are registered as the services register them (never read: a scrape from the loop's own
    thread announces their families without reading)."""
    nothing = cast(Any, None)
    undo = [
        conductor_metrics.watch(nothing, nothing, [(bus.EVENTS_STREAM, "conductor-events")]),
        scheduler_metrics.watch_hosts(nothing, timedelta(seconds=60)),
        agent_metrics.watch_consumers(nothing, ["agent-a"]),
    ]
    try:
        text = generate_latest().decode()
    finally:
        for u in undo:
            u()
    return {f.name for f in text_string_to_metric_families(text)}


async def test_every_metric_the_dashboard_queries_is_exported_by_a_loom_service() -> None:
    families = await exported_families()
    names = dashboard_metric_names()
    assert len(names) >= 12
    missing = sorted(n for n in names if not exported(n, families))
    assert not missing, f"the dashboard queries metrics no service exports: {missing}"


async def test_the_check_catches_a_metric_no_service_exports() -> None:
    families = await exported_families()
    assert exported("loom_boots_total", families)
    assert exported("loom_http_request_duration_seconds_bucket", families)
    assert exported("loom_outbox_oldest_age_seconds", families)
    assert not exported("loom_boots_seconds_bucket", families)
    assert not exported("loom_outbox_depth", families)
    with pytest.raises(ValueError, match="grpc_server_handled_total"):
        metric_names("sum(rate(grpc_server_handled_total[5m]))")


def test_every_panel_query_reads_at_least_one_loom_metric() -> None:
    exprs = list(expressions())
    assert len(exprs) >= 20
    assert all(metric_names(e) for e in exprs), [e for e in exprs if not metric_names(e)]
