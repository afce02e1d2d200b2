"""The /metrics endpoint every service serves, readings taken at scrape time on the
service's loop, and the latency of every gRPC call served and made."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from controlplane.runtime import metrics
from controlplane.runtime.grpcserver import (
    Registration,
    insecure_or_secure_channel,
    start_grpc_server,
)
from controlplane.runtime.metrics import MetricsListenError, on_scrape, serve_metrics
from controlplane.runtime.stats import STATS, start_stats_writer


async def fetch(url: str) -> str:
    # From a thread, as Prometheus would: the loop stays free to take the readings.
    response = await asyncio.to_thread(httpx.get, url, timeout=10)
    assert response.status_code == 200
    return response.text


def test_the_endpoint_serves_the_registry_over_http_where_it_says() -> None:
    endpoint = serve_metrics("test", "127.0.0.1:0")
    assert endpoint is not None
    assert endpoint.port > 0
    STATS.count_statement()
    text = httpx.get(endpoint.url, timeout=10).text
    assert "# TYPE loom_sql_statements_total counter" in text
    assert "loom_grpc_server_handling_seconds" in text
    assert "process_cpu_seconds_total" in text


def test_an_empty_address_turns_the_endpoint_off() -> None:
    assert serve_metrics("test", "") is None


def test_a_taken_port_is_an_error_naming_the_service_and_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsListenError, match=f"conductor at 127.0.0.1:{port}"):
            serve_metrics("conductor", f"127.0.0.1:{port}")


def _gauge(name: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, "A reading for a test.")


async def test_a_reading_runs_on_the_service_loop_each_time_the_endpoint_is_scraped() -> None:
    endpoint = serve_metrics("test", "127.0.0.1:0")
    assert endpoint is not None
    reads: list[asyncio.AbstractEventLoop] = []

    async def read() -> list[Metric]:
        reads.append(asyncio.get_running_loop())
        family = _gauge("loom_test_reading")
        family.add_metric([], 40 + len(reads))
        return [family]

    remove = on_scrape("test-reading", [_gauge("loom_test_reading")], read)
    try:
        first = await fetch(endpoint.url)
        second = await fetch(endpoint.url)
    finally:
        remove()
    assert "loom_test_reading 41.0" in first
    assert "loom_test_reading 42.0" in second
    assert reads == [asyncio.get_running_loop()] * 2
    assert "loom_test_reading" not in await fetch(endpoint.url)


async def test_a_slow_reading_is_left_out_of_the_scrape_but_its_family_is_announced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "READ_DEADLINE_S", 0.2)
    endpoint = serve_metrics("test", "127.0.0.1:0")
    assert endpoint is not None

    started, finished = asyncio.Event(), asyncio.Event()

    async def slow() -> list[Metric]:
        started.set()
        # Part of the scenario: a reading far slower than the read deadline (and than the
        # fetch's own timeout, so a scrape that waited for it would fail).
        await asyncio.sleep(30)
        finished.set()
        return []

    remove = on_scrape("test-slow", [_gauge("loom_test_slow")], slow)
    try:
        text = await fetch(endpoint.url)
    finally:
        remove()
    # The scrape answered while the reading it started was still running.
    assert started.is_set()
    assert not finished.is_set()
    assert "# TYPE loom_test_slow gauge" in text
    assert "\nloom_test_slow " not in text


async def test_a_scrape_from_the_loop_thread_itself_gets_the_families_without_waiting() -> None:
    from prometheus_client import generate_latest

    asked: list[str] = []

    async def never_read() -> list[Metric]:
        raise AssertionError("not read from the loop's own thread")

    def read() -> Coroutine[Any, Any, list[Metric]]:
        # Called (making the coroutine) only by a scrape that means to run the reading.
        asked.append("read")
        return never_read()

    remove = on_scrape("test-inline", [_gauge("loom_test_inline")], read)
    try:
        text = generate_latest().decode()
    finally:
        remove()
    # Never asked for, so nothing was waited for: a reading scheduled on the loop the
    # scrape blocks could only have been waited out.
    assert asked == []
    assert "# TYPE loom_test_inline gauge" in text


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _fail(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("a servicer bug")


def _add_failing(_servicer: object, server: grpc.aio.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        "loom.test.v1.FailingService", {"Fail": grpc.unary_unary_rpc_method_handler(_fail)}
    )
    server.add_generic_rpc_handlers((handler,))


async def test_every_unary_call_is_timed_by_the_server_and_the_client_by_method_and_code() -> None:
    server = await start_grpc_server(
        "127.0.0.1:0",
        [Registration(None, _add_failing, "loom.test.v1.FailingService")],
    )
    channel = insecure_or_secure_channel(f"127.0.0.1:{server.port}")
    health = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
    failing = {"grpc_service": "loom.test.v1.FailingService", "grpc_method": "Fail"}
    names = ("loom_grpc_server_handling_seconds_count", "loom_grpc_client_handling_seconds_count")
    cases = [(health, "OK"), (health, "NOT_FOUND"), (failing, "UNKNOWN")]
    before = {(n, c): _sample(n, **labels, grpc_code=c) for n in names for labels, c in cases}
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as not_found:
            await stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert not_found.value.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await channel.unary_unary("/loom.test.v1.FailingService/Fail")(b"", timeout=5)
        assert unknown.value.code() is grpc.StatusCode.UNKNOWN
    finally:
        await channel.close()
        await server.stop(0)
    for name in names:
        after = {c: _sample(name, **labels, grpc_code=c) for labels, c in cases}
        assert after["OK"] - before[(name, "OK")] == 2, name
        assert after["NOT_FOUND"] - before[(name, "NOT_FOUND")] == 1, name
        assert after["UNKNOWN"] - before[(name, "UNKNOWN")] == 1, name


def test_the_stats_file_carries_the_statement_counter_metrics_serves(tmp_path: Path) -> None:
    stop = start_stats_writer("svc", str(tmp_path))
    for _ in range(5):
        STATS.count_statement()
    stop()
    (written,) = tmp_path.glob("svc-*.json")
    counted = json.loads(written.read_text())["statements"]
    assert counted == STATS.snapshot()["statements"] == _sample("loom_sql_statements_total")
    assert counted >= 5
