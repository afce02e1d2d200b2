"""OpenTelemetry tracing for every Loom process: one boot followed from the gateway through
gRPC and NATS to the agent.

`setup(cfg, service)` is called once per process, by `loom <service>` before its serve();
`shutdown()` flushes what is buffered when the process stops. With `tracing.exporter`
empty (the default) neither does anything: no tracer provider, no gRPC interceptors, and
every helper here returns at its first line, so the boot path pays one global read.

How a trace crosses each wire:
- REST: the gateway starts a server span per request (continuing a W3C `traceparent` the
  client sent, if any).
- gRPC: opentelemetry-instrumentation-grpc's aio interceptors, client and server, carry the
  context in call metadata (installed by controlplane/runtime/grpcserver.py when on).
- NATS through the outbox: a row queued inside a traced transaction keeps the W3C
  `traceparent` of the span then current (outbox.traceparent); the relay sends it as a
  `traceparent` message header, and the consumer (scheduling worker, agent, event
  consumer) starts its span as a child of it (`consumer_spans`, `child_span`). Messages an
  agent publishes itself carry the header too (`headers_with_trace`).

Spans written to a file (`file:PATH`) are JSON lines, one span a line:
  {"trace_id", "span_id", "parent_id", "name", "service", "pid", "kind", "start", "end",
   "status", "attributes", "links"}
ids in lowercase hex (parent_id null for a root), times in nanoseconds since the epoch.
Every process appends to the same file: it is opened with O_APPEND and each export batch
goes out in one write() of whole lines, so lines of several processes never interleave.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link
from opentelemetry.trace import Span as Span
from opentelemetry.trace import SpanKind as SpanKind
from opentelemetry.trace import Status as Status
from opentelemetry.trace import StatusCode as StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from controlplane.config import TracingConfig

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
# Export batches leave every half second (and at shutdown), so a trace of a finished boot
# is in the file moments later.
_EXPORT_DELAY_MS = 500

_PROPAGATOR = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


def enabled() -> bool:
    """Whether this process records spans (setup ran with an exporter)."""
    return _tracer is not None


def setup(cfg: TracingConfig, service: str) -> bool:
    """Starts recording spans as `<prefix><service>` when an exporter is configured;
    True if it did. Idempotent per process (a second call changes nothing)."""
    global _provider, _tracer
    if not cfg.exporter or _provider is not None:
        return _provider is not None
    resource = Resource.create(
        {
            "service.name": f"{cfg.service_name_prefix}{service}",
            "process.pid": os.getpid(),
            "host.name": socket.gethostname(),
        }
    )
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio))
    )
    provider.add_span_processor(
        BatchSpanProcessor(exporter_for(cfg.exporter), schedule_delay_millis=_EXPORT_DELAY_MS)
    )
    # One process, one provider: set once, and the global propagator speaks W3C trace
    # context only (the gRPC interceptors use it; baggage would be a second header for
    # nothing).
    trace.set_tracer_provider(provider)
    from opentelemetry import propagate

    propagate.set_global_textmap(_PROPAGATOR)
    _provider = provider
    _tracer = provider.get_tracer("loom")
    log.info("tracing", extra={"exporter": cfg.exporter, "service": service})
    return True


def shutdown() -> None:
    """Flushes buffered spans and stops exporting (no-op when off)."""
    global _provider, _tracer
    if _provider is None:
        return
    provider, _provider, _tracer = _provider, None, None
    provider.shutdown()


def exporter_for(target: str) -> SpanExporter:
    """The exporter `tracing.exporter` names (validated by TracingConfig)."""
    if target.startswith("file:"):
        return JsonLinesExporter(Path(target[len("file:") :]))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    url = target.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    return OTLPSpanExporter(endpoint=url)


class JsonLinesExporter(SpanExporter):
    """Spans as JSON lines appended to one file shared by every process (see the module
    docstring for the fields). The file and its folder are made when missing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = b"".join(json.dumps(span_record(s)).encode() + b"\n" for s in spans)
        try:
            # One write of whole lines: with O_APPEND, never interleaved with another's.
            os.write(self._fd, data)
        except OSError as exc:
            log.warning("spans not written to %s: %s", self.path, exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One line of the span file."""
    ctx = span.get_span_context()
    assert ctx is not None
    attrs = dict(span.resource.attributes)
    return {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "name": span.name,
        "service": attrs.get("service.name"),
        "pid": attrs.get("process.pid"),
        "kind": span.kind.name.lower(),
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name.lower(),
        "attributes": {k: _plain(v) for k, v in (span.attributes or {}).items()},
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ],
    }


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# -- spans ---------------------------------------------------------------------------------


def span(
    name: str, attributes: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager[Span | None]:
    """A child of the current span for the block (nothing at all when tracing is off)."""
    if _tracer is None:
        return contextlib.nullcontext()
    return _tracer.start_as_current_span(name, attributes=attributes)


@contextlib.contextmanager
def child_span(
    name: str,
    traceparent: str | None,
    attributes: Mapping[str, Any] | None = None,
    kind: SpanKind = SpanKind.CONSUMER,
) -> Iterator[Span | None]:
    """A span continuing the trace of a message's `traceparent` (a new trace when the
    message carries none), current for the block. Nothing when tracing is off."""
    if _tracer is None:
        yield None
        return
    with _tracer.start_as_current_span(
        name, context=context_of(traceparent), kind=kind, attributes=attributes
    ) as s:
        yield s


def start_span(
    name: str,
    traceparent: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    links: Sequence[Span | None] = (),
) -> Span | None:
    """A started span, not made current: the caller ends it (`end`). Its parent is the
    `traceparent` given, else the current span. None when tracing is off."""
    if _tracer is None:
        return None
    parent = context_of(traceparent) if traceparent else None
    return _tracer.start_span(
        name,
        context=parent,
        kind=kind,
        attributes=attributes,
        links=[Link(s.get_span_context()) for s in links if s is not None],
    )


def consumer_spans(
    name: str,
    headers: Sequence[Mapping[str, str] | None],
    attributes: Mapping[str, Any] | None = None,
) -> list[Span | None]:
    """One started CONSUMER span per message of a batch, each a child of its message's
    `traceparent` header; None for a message that carries none (or all None when off).
    The caller ends them (`end`) once the batch is settled."""
    if _tracer is None:
        return [None] * len(headers)
    spans: list[Span | None] = []
    for h in headers:
        parent = h.get(TRACEPARENT) if h else None
        spans.append(
            None
            if parent is None
            else start_span(
                name,
                parent,
                {**(attributes or {}), "loom.batch_size": len(headers)},
                kind=SpanKind.CONSUMER,
            )
        )
    return spans


def end(spans: Sequence[Span | None] | Span | None, error: BaseException | None = None) -> None:
    """Ends the spans (an error marks them failed)."""
    if spans is None:
        return
    for s in spans if isinstance(spans, Sequence) else (spans,):
        if s is None:
            continue
        if error is not None:
            s.set_status(Status(StatusCode.ERROR, type(error).__name__))
        s.end()


@contextlib.contextmanager
def current(s: Span | None) -> Iterator[None]:
    """Makes `s` the current span for the block (nothing when it is None)."""
    if s is None:
        yield
        return
    token = otel_context.attach(trace.set_span_in_context(s))
    try:
        yield
    finally:
        otel_context.detach(token)


# -- propagation ---------------------------------------------------------------------------


def context_of(traceparent: str | None) -> otel_context.Context | None:
    """The context a W3C `traceparent` names (None for none)."""
    if not traceparent:
        return None
    return _PROPAGATOR.extract({TRACEPARENT: traceparent})


def traceparent_of(s: Span | None) -> str | None:
    """The W3C `traceparent` of a span (None when there is no recording span)."""
    if s is None or not s.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(s))
    return carrier.get(TRACEPARENT)


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span: what a message queued now carries. None
    when tracing is off or no span is current."""
    if _tracer is None:
        return None
    return traceparent_of(trace.get_current_span())


def headers_with_trace(headers: dict[str, str], traceparent: str | None = None) -> dict[str, str]:
    """`headers` plus the `traceparent` given, else the current span's (unchanged when
    there is none)."""
    if _tracer is None:
        return headers
    tp = traceparent or current_traceparent()
    if tp:
        headers[TRACEPARENT] = tp
    return headers
