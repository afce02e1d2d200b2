"""`serve()`: a simulated fleet in one process, and its gRPC ComputeService."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loom.compute.v1 import agent_bus_pb2, compute_pb2, compute_pb2_grpc
from nats.aio.client import Client as NATS

from controlplane.config import LoomConfig, load_config
from controlplane.runtime import bus
from controlplane.runtime.natsserver import NatsServerProcess, free_port
from nodeagent.service import make_dataplane, make_driver, serve
from tests.nodeagent.support import EventReader, build_command, make_spec, send
from tests.support import polling


@dataclass
class Fleet:
    port: int
    stub: compute_pb2_grpc.ComputeServiceAsyncStub
    channel: grpc.aio.Channel


def _config(tmp_path: Path, nats_url: str, latency_s: float = 0.0) -> LoomConfig:
    return load_config(
        environ={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "nats": {"url": nats_url},
            # Nobody listens here: reconcile keeps retrying in the background.
            "conductor": {"listen": f"127.0.0.1:{free_port()}"},
            "agent": {
                "heartbeat_interval": 3600,
                "power_sync_interval": 3600,
                "sim_hypervisor_latency_s": latency_s,
            },
        },
    )


@pytest.fixture
async def fleet(
    tmp_path: Path, fresh_nats: NatsServerProcess, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Fleet]:
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="nodeagent.service")
    task = asyncio.create_task(serve(_config(tmp_path, fresh_nats.url), stop, simulate=3))

    async def ready() -> logging.LogRecord | None:
        if task.done():
            task.result()
        return next((r for r in caplog.records if r.getMessage() == "ready"), None)

    record = await polling.eventually(ready, polling.SERVICE_READY_S, "serve() logging ready")
    assert getattr(record, "hosts", None) == 3
    port = int(getattr(record, "grpc_port", 0))
    assert port > 0
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Fleet(port=port, stub=compute_pb2_grpc.ComputeServiceStub(channel), channel=channel)
    finally:
        await channel.close()
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_serve_starts_every_simulated_host_and_each_reports_its_inventory(
    fleet: Fleet, bus_nc: NATS
) -> None:
    js = bus_nc.jetstream()
    for host in ("sim-0000", "sim-0001", "sim-0002"):
        msg = await js.get_last_msg(bus.INVENTORY_STREAM, bus.inventory_subject(host))
        report = agent_bus_pb2.HostInventoryReport.FromString(msg.data)
        assert report.host == host
        assert report.compute_endpoint == f"127.0.0.1:{fleet.port}"
        assert report.vcpu.total == 32


async def test_the_agent_process_answers_grpc_health_checks(fleet: Fleet) -> None:
    health = health_pb2_grpc.HealthStub(fleet.channel)
    resp = await health.Check(
        health_pb2.HealthCheckRequest(service="loom.compute.v1.ComputeService"), timeout=5
    )
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_compute_service_finds_an_instance_on_whichever_host_runs_it(
    fleet: Fleet, bus_nc: NATS
) -> None:
    events = await EventReader.open(bus_nc, "sim-0001")
    spec = make_spec(vcpus=2, memory_mb=512)
    await send(bus_nc.jetstream(), "sim-0001", "build", build_command(spec))
    assert (await events.next()).kind == agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED

    diag = await fleet.stub.GetInstanceDiagnostics(
        compute_pb2.GetInstanceDiagnosticsRequest(instance_id=spec.instance_id), timeout=5
    )
    assert (diag.power_state, diag.vcpus, diag.memory_mb) == (
        agent_bus_pb2.POWER_STATE_RUNNING,
        2,
        512,
    )
    assert (diag.driver, diag.hypervisor) == ("libvirt", "test")
    # Counters from libvirt: one time per vCPU, the root disk and each interface.
    assert len(diag.vcpu_times_ns) == 2
    assert diag.max_memory_mb == 512
    assert [d.device for d in diag.disks][:1] == ["vda"]

    up = await fleet.stub.GetHostUptime(
        compute_pb2.GetHostUptimeRequest(host="sim-0001"), timeout=5
    )
    assert up.uptime_seconds > 0
    assert up.load_1 >= 0
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await fleet.stub.GetHostUptime(compute_pb2.GetHostUptimeRequest(host="nope"), timeout=5)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    listed = await fleet.stub.ListHostInstances(
        compute_pb2.ListHostInstancesRequest(host="sim-0001"), timeout=5
    )
    assert listed.host == "sim-0001"
    assert [(i.instance_id, i.power_state) for i in listed.instances] == [
        (spec.instance_id, agent_bus_pb2.POWER_STATE_RUNNING)
    ]
    other = await fleet.stub.ListHostInstances(
        compute_pb2.ListHostInstancesRequest(host="sim-0002"), timeout=5
    )
    assert list(other.instances) == []

    for call in (
        fleet.stub.GetConsoleOutput(
            compute_pb2.GetConsoleOutputRequest(instance_id=spec.instance_id)
        ),
        fleet.stub.GetConsoleConnectInfo(
            compute_pb2.GetConsoleConnectInfoRequest(instance_id=spec.instance_id, protocol="vnc")
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "test hypervisor" in (err.value.details() or "")


async def test_an_instance_on_no_host_of_the_process_is_not_found(fleet: Fleet) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fleet.stub.GetInstanceDiagnostics(
            compute_pb2.GetInstanceDiagnosticsRequest(instance_id=make_spec().instance_id),
            timeout=5,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_listing_without_a_host_is_refused_when_the_process_serves_several(
    fleet: Fleet,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fleet.stub.ListHostInstances(compute_pb2.ListHostInstancesRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await fleet.stub.ListHostInstances(
            compute_pb2.ListHostInstancesRequest(host="nope"), timeout=5
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def _agent_config(tmp_path: Path, **agent: object) -> LoomConfig:
    return load_config(environ={}, overrides={"data_dir": str(tmp_path), "agent": agent})


def test_simulated_hosts_skip_the_network_data_plane_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nodeagent.service")
    cfg = _agent_config(tmp_path, network_dataplane=True, network_local_ip="192.0.2.1")
    assert make_driver(cfg, "sim-0001").dataplane is None
    assert "network data plane off" in caplog.text


def test_a_real_host_with_the_data_plane_on_gets_one_and_needs_its_vtep_address(
    tmp_path: Path,
) -> None:
    cfg = _agent_config(
        tmp_path,
        libvirt_uri="qemu:///system",
        network_dataplane=True,
        network_local_ip="192.0.2.1",
        network_vxlan_peers=["192.0.2.2"],
    )
    plane = make_dataplane(cfg, "h1", simulated=False)
    assert plane is not None
    assert plane.config.peers == ("192.0.2.2",)
    assert plane.config.state_dir.name == "network"
    with pytest.raises(ValueError, match="network_local_ip"):
        make_dataplane(_agent_config(tmp_path, network_dataplane=True), "h1", simulated=False)


async def test_simulated_hosts_with_a_slow_hypervisor_each_have_a_call_in_progress_at_once(
    tmp_path: Path, fresh_nats: NatsServerProcess, bus_nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    """A fleet of more simulated hosts than asyncio's default worker threads (cpu_count + 4):
    a build sent to each at once is in the hypervisor on every host at once. Each host's
    slow call waited for another host's to end (chaos scenario R2 saw them run 6 at a
    time, 8 s apart, on a 2-core machine)."""
    hosts = (os.cpu_count() or 1) + 6
    latency_s = 5.0
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="nodeagent")
    cfg = _config(tmp_path, fresh_nats.url, latency_s)
    task = asyncio.create_task(serve(cfg, stop, simulate=hosts))

    def calls() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "simulated hypervisor call"]

    try:

        async def ready() -> bool:
            if task.done():
                task.result()
            return any(r.getMessage() == "ready" for r in caplog.records)

        await polling.eventually(ready, polling.SERVICE_READY_S, "serve() logging ready")
        js = bus_nc.jetstream()
        for i in range(hosts):
            await send(js, f"sim-{i:04d}", "build", build_command(make_spec()))

        async def all_started() -> bool:
            return len(calls()) >= hosts

        await polling.eventually(all_started, 6 * latency_s, "every host's build in the hypervisor")
        starts = sorted(r.created for r in calls())
        # Every call started before the first could end: none waited for another's.
        assert starts[-1] - starts[0] < latency_s, starts
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
