"""Tracing helpers: off by default and then inert; when on, messages carry W3C trace
context and consumers continue it; the span file stays whole lines with several writers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from controlplane.config import TracingConfig
from controlplane.runtime import tracing

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, into memory (the global provider is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


def test_without_an_exporter_setup_starts_nothing_and_the_helpers_are_inert() -> None:
    assert tracing.setup(TracingConfig(), "conductor") is False
    assert not tracing.enabled()
    headers = {"Nats-Msg-Id": "m-1"}
    assert tracing.headers_with_trace(headers) == {"Nats-Msg-Id": "m-1"}
    assert tracing.current_traceparent() is None
    assert tracing.consumer_spans(
        "x", [{"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}]
    ) == [None]
    with tracing.span("nothing") as s, tracing.child_span("nothing", None) as c:
        assert s is None
        assert c is None


def test_a_message_queued_inside_a_span_carries_that_span_as_its_traceparent(
    recorded: InMemorySpanExporter,
) -> None:
    with tracing.span("request") as s:
        assert s is not None
        headers = tracing.headers_with_trace({"Nats-Msg-Id": "m-1"})
        ctx = s.get_span_context()
    assert headers["Nats-Msg-Id"] == "m-1"
    assert (
        headers["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    )
    assert ctx.trace_flags.sampled


def test_a_consumer_span_is_a_child_of_the_span_that_sent_the_message(
    recorded: InMemorySpanExporter,
) -> None:
    with tracing.span("sender"):
        sent = tracing.headers_with_trace({})
    first, untraced = tracing.consumer_spans("consumer", [sent, {}])
    assert untraced is None
    assert first is not None
    with tracing.current(first), tracing.span("inside"):
        pass
    tracing.end([first, untraced])
    spans = {s.name: s for s in recorded.get_finished_spans()}
    sender, consumer, inside = spans["sender"], spans["consumer"], spans["inside"]
    assert consumer.context.trace_id == sender.context.trace_id
    assert consumer.parent is not None
    assert consumer.parent.span_id == sender.context.span_id
    assert inside.parent is not None
    assert inside.parent.span_id == consumer.context.span_id
    assert consumer.attributes == {"loom.batch_size": 2}


def test_an_error_marks_the_ended_span_failed(recorded: InMemorySpanExporter) -> None:
    s = tracing.start_span("failing")
    tracing.end(s, RuntimeError("no"))
    (done,) = recorded.get_finished_spans()
    assert done.status.status_code.name == "ERROR"
    assert done.status.description == "RuntimeError"


def test_a_span_file_line_holds_ids_parent_process_times_and_attributes(
    recorded: InMemorySpanExporter, tmp_path: Path
) -> None:
    with tracing.span("parent"), tracing.span("child", {"loom.host": "h1"}):
        pass
    exporter = tracing.JsonLinesExporter(tmp_path / "deep" / "spans.jsonl")
    exporter.export(recorded.get_finished_spans())
    exporter.shutdown()
    lines = [json.loads(x) for x in (tmp_path / "deep" / "spans.jsonl").read_text().splitlines()]
    child, parent = lines
    assert (child["name"], parent["name"]) == ("child", "parent")
    assert child["parent_id"] == parent["span_id"]
    assert parent["parent_id"] is None
    assert child["trace_id"] == parent["trace_id"]
    assert len(child["trace_id"]) == 32
    assert child["attributes"] == {"loom.host": "h1"}
    assert parent["start"] <= child["start"] <= child["end"] <= parent["end"]
    assert child["kind"] == "internal"
    assert child["status"] == "unset"
    assert set(child) == {
        "trace_id",
        "span_id",
        "parent_id",
        "name",
        "service",
        "pid",
        "kind",
        "start",
        "end",
        "status",
        "attributes",
        "links",
    }


_WRITER = """
import sys
from controlplane.config import TracingConfig
from controlplane.runtime import tracing
assert tracing.setup(TracingConfig(exporter="file:" + sys.argv[1]), sys.argv[2])
for i in range(int(sys.argv[3])):
    with tracing.span("work", {"i": i, "padding": "x" * 512}):
        pass
tracing.shutdown()
"""


def test_processes_appending_to_one_span_file_leave_only_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), f"writer{n}", "400"],
            env={"PYTHONPATH": f"{ROOT}:{ROOT / 'generated'}", "PATH": "/usr/bin:/bin"},
        )
        for n in range(4)
    ]
    assert [w.wait(60) for w in writers] == [0, 0, 0, 0]
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    by_service: dict[str, set[int]] = {}
    for line in lines:
        by_service.setdefault(line["service"], set()).add(line["attributes"]["i"])
    assert by_service == {f"loom-writer{n}": set(range(400)) for n in range(4)}
    assert len(lines) == 1600


_OTLP_SENDER = """
import sys
from controlplane.config import TracingConfig
from controlplane.runtime import tracing
assert tracing.setup(TracingConfig(exporter=sys.argv[1]), "gateway")
with tracing.span("outer"), tracing.span("inner", {"loom.host": "h1"}):
    pass
tracing.shutdown()
"""


def test_an_otlp_http_exporter_posts_the_spans_to_the_collectors_traces_path() -> None:
    received: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", _OTLP_SENDER, f"http://127.0.0.1:{server.server_port}"],
            env={"PYTHONPATH": f"{ROOT}:{ROOT / 'generated'}", "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    assert [path for path, _ in received] == ["/v1/traces"]
    request = ExportTraceServiceRequest.FromString(received[0][1])
    (resource_spans,) = request.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "loom-gateway"
    spans = {s.name: s for scope in resource_spans.scope_spans for s in scope.spans}
    assert set(spans) == {"outer", "inner"}
    assert spans["inner"].parent_span_id == spans["outer"].span_id
