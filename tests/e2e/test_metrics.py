"""Every service's /metrics, fetched over HTTP from a real stack after a boot through the
REST API: the boot shows up where an operator would look for it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.e2e.support import boot_one_through_api, wait_for_hosts
from tests.support.dashboard import dashboard_metric_names, exported
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

SERVICES = ("scheduler", "conductor", "agent", "gateway")


def scrape(url: str) -> tuple[set[str], list[Sample]]:
    """The metric families a /metrics page announces (HELP lines), and its samples."""
    text = httpx.get(url, timeout=10).text
    families = list(text_string_to_metric_families(text))
    return {f.name for f in families}, [s for f in families for s in f.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_each_service_serves_metrics_that_show_a_server_booted_through_the_api(
    cloud: Stack, tmp_path: Path
) -> None:
    await wait_for_hosts(cloud, 3)
    boot_one_through_api(cloud, "metrics-vm")

    pages = {name: scrape(cloud.services[name].metrics_url) for name in SERVICES}
    conductor, scheduler = pages["conductor"][1], pages["scheduler"][1]
    agent, gateway = pages["agent"][1], pages["gateway"][1]

    assert value(conductor, "loom_boots_total", outcome="active") >= 1
    assert value(conductor, "loom_sql_statements_total") > 0
    assert value(scheduler, "loom_sql_statements_total") > 0
    # The conductor served CreateServers and asked the scheduler to place the server.
    assert (
        value(
            conductor,
            "loom_grpc_server_handling_seconds_count",
            grpc_service="loom.conductor.v1.ServersService",
            grpc_method="CreateServers",
            grpc_code="OK",
        )
        >= 1
    )
    assert (
        value(
            conductor,
            "loom_grpc_client_handling_seconds_count",
            grpc_service="loom.scheduler.v1.SchedulerService",
        )
        >= 1
    )
    assert (
        value(
            scheduler,
            "loom_grpc_server_handling_seconds_count",
            grpc_service="loom.scheduler.v1.SchedulerService",
        )
        >= 1
    )
    # The gateway timed the POST by its route template, and its calls to the conductor.
    assert (
        value(
            gateway,
            "loom_http_request_duration_seconds_count",
            method="POST",
            route="/compute/v2.1/servers",
            status="202",
        )
        == 1
    )
    assert (
        value(
            gateway,
            "loom_http_request_duration_seconds_count",
            method="GET",
            route="/compute/v2.1/servers/{server_id}",
            status="200",
        )
        >= 1
    )
    assert not [
        s.labels["route"]
        for s in gateway
        if s.name == "loom_http_request_duration_seconds_count" and "metrics-vm" in str(s.labels)
    ]
    assert (
        value(gateway, "loom_grpc_client_handling_seconds_count", grpc_method="CreateServers") == 1
    )
    # Scrape-time readings: the outbox is drained, the consumers have nothing waiting.
    assert value(conductor, "loom_outbox_messages") == 0
    assert {s.labels["consumer"] for s in conductor if s.name.startswith("loom_jetstream")} == {
        "conductor-schedule",
        "conductor-events",
    }
    assert value(scheduler, "loom_scheduler_hosts", state="up") == 3
    # One agent process serves its three hosts, each with its own series.
    beats = {s.labels["host"] for s in agent if s.name == "loom_agent_heartbeats_sent_total"}
    assert beats == {"cloud-0000", "cloud-0001", "cloud-0002"}
    lag = {
        s.labels["consumer"]: s.value
        for s in agent
        if s.name == "loom_jetstream_consumer_pending_messages"
    }
    assert lag == {"agent-cloud-0000": 0, "agent-cloud-0001": 0, "agent-cloud-0002": 0}

    # Every metric the Grafana dashboard queries is announced by one of these services.
    announced = set().union(*(families for families, _ in pages.values()))
    missing = {name for name in dashboard_metric_names() if not exported(name, announced)}
    assert not missing, f"the dashboard queries metrics no service exports: {missing}"
