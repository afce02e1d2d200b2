"""Starts Loom for a benchmark: separate processes on a real PostgreSQL and nats-server."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from controlplane.db import migrate
from controlplane.runtime.natsserver import NatsServerProcess, free_port, start_nats_server
from tests.support import postgres
from tests.support.stack import Stack


@dataclass
class LoomUnderTest:
    stack: Stack
    nats: NatsServerProcess
    db_name: str
    stats_dir: Path
    hosts: int

    @property
    def clouds_yaml(self) -> Path:
        return self.stack.data_dir / "clouds.yaml"

    def pids(self) -> dict[str, int]:
        out = {
            name: svc.process.pid
            for name, svc in self.stack.services.items()
            if svc.process is not None and svc.alive()
        }
        out["nats-server"] = self.nats.process.pid
        return out


def _wait_for_hosts(stack: Stack, hosts: int, timeout: float) -> None:
    """Waits until the scheduler lists every simulated host as up."""
    import grpc
    from loom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(stack.scheduler_target) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        seen = 0
        while time.monotonic() < deadline:
            resp = stub.ListHosts(scheduler_pb2.ListHostsRequest(), timeout=10)
            seen = sum(1 for h in resp.hosts if h.up and h.enabled)
            if seen >= hosts:
                return
            time.sleep(0.25)
    raise RuntimeError(f"only {seen} of {hosts} hosts came up within {timeout}s")


@contextmanager
def launch_loom(
    hosts: int,
    *,
    sim_memory_mb: int | None = None,
    keep: bool = False,
    settings: dict[str, str] | None = None,
    conductors: int = 1,
) -> Iterator[LoomUnderTest]:
    """Gateway, conductor, scheduler and a fleet process of `hosts` simulated agents.
    settings maps configuration keys ("conductor.scheduling_lanes") to values for every
    service (as LOOM_SECTION__KEY variables). With conductors > 1, that many conductor
    processes share the work and the gateway spreads its calls over them."""
    postgres.ensure_postgres_running()
    db_name = postgres.create_database(prefix="loom_bench")
    data_dir = Path(tempfile.mkdtemp(prefix="loom-bench-"))
    stats_dir = data_dir / "stats"
    nats = start_nats_server(data_dir / "nats", monitor_port=free_port())
    env = {"LOOM_STATS_DIR": str(stats_dir), "LOOM_LOGGING__LEVEL": "WARNING"}
    if sim_memory_mb:
        env["LOOM_AGENT__SIM_MEMORY_MB"] = str(sim_memory_mb)
    for key, value in (settings or {}).items():
        section, _, name = key.partition(".")
        env[f"LOOM_{section.upper()}__{name.upper()}"] = value
    stack = Stack(
        db_url=postgres.url_for(db_name), nats_url=nats.url, data_dir=data_dir, extra_env=env
    )
    try:
        migrate.upgrade(stack.db_url)
        # WARNING level hides the "ready" lines the stack waits for; keep INFO for start-up.
        conductor_targets = [stack.conductor_target] + [
            f"127.0.0.1:{free_port()}" for _ in range(conductors - 1)
        ]
        gateway_env = (
            {"LOOM_GATEWAY__CONDUCTOR_TARGET": "ipv4:" + ",".join(conductor_targets)}
            if conductors > 1
            else {}
        )
        plan: list[tuple[str, tuple[str, ...], dict[str, str]]] = [
            ("scheduler", (), {}),
            ("conductor", (), {}),
            *(
                (f"conductor#{i + 1}", (), {"LOOM_CONDUCTOR__LISTEN": target})
                for i, target in enumerate(conductor_targets[1:], start=1)
            ),
            ("agent", ("--simulate", str(hosts), "--host-prefix", "bench"), {}),
            ("gateway", (), gateway_env),
        ]
        for name, args, own_env in plan:
            stack.extra_env["LOOM_LOGGING__LEVEL"] = "INFO"
            stack.start(name, *args, timeout=300, env=own_env)
        _wait_for_hosts(stack, hosts, timeout=300)
        yield LoomUnderTest(stack, nats, db_name, stats_dir, hosts)
    finally:
        stack.stop_all()
        nats.stop()
        postgres.drop_database(db_name)
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)


async def prepare_tenant(loom: LoomUnderTest, cloud: str = "loom") -> tuple[str, str]:
    """Lifts the tenant's quotas (as admin) and uploads a tiny image; returns (flavor, image)."""
    from bench.client import resolve_cloud

    admin = resolve_cloud("loom-admin", loom.clouds_yaml)
    tenant = resolve_cloud(cloud, loom.clouds_yaml)
    async with httpx.AsyncClient(headers={"X-Auth-Token": admin.token}, timeout=60) as http:
        body = {"quota_set": {"instances": -1, "cores": -1, "ram": -1}}
        resp = await http.put(f"{admin.compute_url}/os-quota-sets/{tenant.project_id}", json=body)
        resp.raise_for_status()
        image_url = admin.compute_url.split("/compute")[0] + "/image/v2/images"
        resp = await http.post(
            image_url,
            json={
                "name": "bench-image",
                "disk_format": "raw",
                "container_format": "bare",
                "visibility": "public",
            },
        )
        resp.raise_for_status()
        image_id = resp.json()["id"]
        resp = await http.put(
            f"{image_url}/{image_id}/file",
            content=b"\0" * 65536,
            headers={"Content-Type": "application/octet-stream"},
        )
        resp.raise_for_status()
    return "m1.tiny", str(image_id)


async def prepare_network(loom: LoomUnderTest, servers: int, cloud: str = "loom") -> str:
    """A tenant network with one subnet large enough for `servers` ports, its port quota
    lifted (as admin); returns the network's id."""
    from bench.client import resolve_cloud

    admin = resolve_cloud("loom-admin", loom.clouds_yaml)
    tenant = resolve_cloud(cloud, loom.clouds_yaml)
    network_url = admin.compute_url.split("/compute")[0] + "/network/v2.0"
    prefix = max(8, min(24, 32 - (servers + 16).bit_length()))
    async with httpx.AsyncClient(timeout=60) as http:
        resp = await http.put(
            f"{network_url}/quotas/{tenant.project_id}",
            json={"quota": {"port": -1}},
            headers={"X-Auth-Token": admin.token},
        )
        resp.raise_for_status()
        h = {"X-Auth-Token": tenant.token}
        resp = await http.post(
            f"{network_url}/networks", json={"network": {"name": "bench-net"}}, headers=h
        )
        resp.raise_for_status()
        network_id = str(resp.json()["network"]["id"])
        resp = await http.post(
            f"{network_url}/subnets",
            json={
                "subnet": {
                    "network_id": network_id,
                    "ip_version": 4,
                    "cidr": f"10.192.0.0/{prefix}",
                }
            },
            headers=h,
        )
        resp.raise_for_status()
    return network_id


def summary_json(obj: object) -> str:
    return json.dumps(obj, indent=2, default=str)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]
