"""Tracing across the whole boot path: one boot through the REST API, with every service
recording spans to one file, is one trace from the gateway to the agent and back."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import boot_one_through_api, wait_for_hosts
from tests.support.nats import RestartableNats
from tests.support.stack import Stack

pytestmark = pytest.mark.slow


def read_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def spans_of_boot(path: Path, server_id: str, within: float = 30.0) -> list[dict[str, Any]]:
    """The spans of the trace that boots `server_id` in the file so far, once the
    conductor's span for the agent's BUILD_SUCCEEDED event is there."""
    deadline = time.monotonic() + within
    while True:
        spans = read_spans(path)
        done = [
            s
            for s in spans
            if s["name"] == "conductor instance event"
            and s["attributes"].get("loom.instance_id") == server_id
            and s["attributes"].get("loom.event") == "INSTANCE_EVENT_KIND_BUILD_SUCCEEDED"
        ]
        if done:
            return [s for s in spans if s["trace_id"] == done[0]["trace_id"]]
        assert time.monotonic() < deadline, f"no finished trace of {server_id} in {path}"
        time.sleep(0.2)


def one(spans: list[dict[str, Any]], name: str, service: str) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name and s["service"] == service]
    assert len(found) == 1, f"{name} in {service}: {found}"
    return found[0]


async def test_one_boot_is_one_trace_across_gateway_conductor_scheduler_and_agent(
    pg_url: str, nats: RestartableNats, tmp_path: Path
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    stack = Stack(
        db_url=pg_url,
        nats_url=nats.url,
        data_dir=tmp_path / "loom",
        extra_env={
            "LOOM_AGENT__HEARTBEAT_INTERVAL": "1",
            "LOOM_TRACING__EXPORTER": f"file:{spans_file}",
        },
    )
    try:
        stack.start("scheduler")
        stack.start("conductor")
        stack.start("agent", "--simulate", "2", "--host-prefix", "traced")
        stack.start("gateway")
        await wait_for_hosts(stack, 2)
        server_id = boot_one_through_api(stack, "traced-vm")
        trace_id = spans_of_boot(spans_file, server_id)[0]["trace_id"]
    finally:
        # Each process writes its spans every half second and the rest as it stops: once
        # all have stopped, the file holds every span of the boot.
        stack.stop_all()
    spans = [s for s in read_spans(spans_file) if s["trace_id"] == trace_id]

    by_id = {s["span_id"]: s for s in spans}
    pids = {s["service"]: s["pid"] for s in spans}
    # Four processes took part, each under its own service name.
    assert set(pids) == {"loom-gateway", "loom-conductor", "loom-scheduler", "loom-agent"}
    assert len(set(pids.values())) == 4
    # One root: the REST request, named by its route template.
    roots = [s for s in spans if s["parent_id"] is None]
    assert [(r["name"], r["service"]) for r in roots] == [
        ("POST /compute/v2.1/servers", "loom-gateway")
    ]
    assert roots[0]["attributes"]["http.response.status_code"] == 202
    assert roots[0]["attributes"]["loom.request_id"].startswith("req-")
    # Every other span's parent is in the same trace.
    assert all(s["parent_id"] in by_id for s in spans if s["parent_id"] is not None)

    def parent(span: dict[str, Any]) -> dict[str, Any]:
        return by_id[span["parent_id"]]

    # gateway -> conductor over gRPC
    create = one(spans, "/loom.conductor.v1.ServersService/CreateServers", "loom-conductor")
    assert create["kind"] == "server"
    assert parent(create)["service"] == "loom-gateway"
    assert parent(create)["kind"] == "client"
    # ... -> the outbox and NATS -> the scheduling worker, a child of CreateServers
    schedule = one(spans, "conductor schedule", "loom-conductor")
    assert schedule["kind"] == "consumer"
    assert parent(schedule) == create
    assert schedule["attributes"]["loom.instance_id"] == server_id
    # conductor -> scheduler over gRPC
    select = one(
        spans, "/loom.scheduler.v1.SchedulerService/SelectDestinationsBatch", "loom-scheduler"
    )
    assert parent(parent(select))["name"] == "conductor select destinations"
    assert parent(parent(parent(select))) == schedule
    # ... -> the build command through the outbox and NATS -> the agent
    build = one(spans, "agent build", "loom-agent")
    assert parent(build) == schedule
    assert build["attributes"]["loom.instance_id"] == server_id
    assert {
        parent(one(spans, n, "loom-agent"))["span_id"] for n in ("libvirt define", "libvirt start")
    } == {build["span_id"]}
    # agent -> its event on NATS -> the conductor's event consumer
    event = one(spans, "conductor instance event", "loom-conductor")
    assert parent(event)["name"] == "agent publish event"
    assert parent(parent(event)) == build
    # Children start no earlier than their parents (one clock on this machine).
    assert all(s["start"] >= parent(s)["start"] for s in spans if s["parent_id"] is not None)
