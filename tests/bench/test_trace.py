"""`python -m bench trace`: one boot's spans as a tree, with the process of each span."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, set_span_in_context

from bench.__main__ import main
from bench.bootstorm import storm_against
from bench.client import resolve_cloud
from bench.launch import launch_loom, prepare_tenant
from bench.trace import boots, read_spans, render
from controlplane.runtime.tracing import span_record

SERVICES = {"gateway", "conductor", "scheduler", "agent"}


def test_a_traced_storm_gives_each_boot_a_tree_spanning_every_process(tmp_path: Path) -> None:
    spans_file = tmp_path / "spans.jsonl"
    with launch_loom(4, settings={"tracing.exporter": f"file:{spans_file}"}) as loom:
        flavor_name, image = asyncio.run(prepare_tenant(loom))
        result = storm_against(
            resolve_cloud("loom", loom.clouds_yaml),
            flavor_name=flavor_name,
            image=image,
            servers=12,
            concurrency=4,
            progress=False,
        )
    booted = {r.server_id for r in result.records if r.status == "ACTIVE"}
    assert len(booted) == 12
    spans = read_spans(spans_file)  # the services flushed their spans as they stopped
    assert set(boots(spans)) == booted
    for server in booted:
        tree = render(spans, server)
        processes = set(re.findall(r"\[(\w+) \d+\]", tree))
        assert processes == SERVICES, tree
        assert "agent build" in tree
        assert "POST /compute/v2.1/servers" in tree
    slowest = render(spans)
    assert slowest.startswith("12 boots traced")
    longest = max(boots(spans).values(), key=lambda b: b.duration_ms)
    assert f"boot of server {longest.server_id}:" in slowest


def _batch_of_two_boots() -> list[dict[str, Any]]:
    """Spans as two conductors' worth of work would leave them: two boots whose scheduling
    was one batched call, recorded in the first boot's trace with a link to the second."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "loom-conductor"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    t0 = 1_000_000_000_000
    ms = 1_000_000
    schedule = {}
    for n, (server, length) in enumerate((("fast-vm", 10), ("slow-vm", 50))):
        root = tracer.start_span("POST /compute/v2.1/servers", start_time=t0 + n * ms)
        schedule[server] = tracer.start_span(
            "conductor schedule",
            context=set_span_in_context(root),
            attributes={"loom.instance_id": server, "loom.attempt": 1},
            start_time=t0 + (n + 2) * ms,
        )
        schedule[server].end(t0 + (n + length - 1) * ms)
        root.end(t0 + (n + length) * ms)
    batch = tracer.start_span(
        "conductor select destinations",
        context=set_span_in_context(schedule["fast-vm"]),
        links=[Link(schedule["slow-vm"].get_span_context())],
        start_time=t0 + 4 * ms,
    )
    batch.end(t0 + 6 * ms)
    return [span_record(s) for s in exporter.get_finished_spans()]


def test_the_slowest_boot_is_shown_with_the_batched_call_it_shared() -> None:
    tree = render(_batch_of_two_boots())
    lines = tree.splitlines()
    assert lines[0] == "2 boots traced; median 50.0 ms, slowest 50.0 ms"
    assert lines[1].startswith("boot of server slow-vm: 50.0 ms")
    assert [line.split(maxsplit=2)[2] for line in lines[3:]] == [
        "POST /compute/v2.1/servers  [conductor None]",
        "conductor schedule  [conductor None]",
        "conductor select destinations (shared)  [conductor None]",
    ]


def test_the_trace_command_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no span file"):
        main(["trace", str(tmp_path / "none.jsonl")])
