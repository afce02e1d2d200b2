"""Whole-stack helpers: every service a separate process, real PostgreSQL, NATS and libvirt."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import httpx
from loom.catalog.v1 import quotas_pb2, quotas_pb2_grpc
from loom.conductor.v1 import servers_pb2, servers_pb2_grpc
from loom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from bench.client import resolve_cloud
from controlplane.config import sync_database_url
from tests.conductor.factories import make_flavor, make_image
from tests.support import polling
from tests.support.invariants import OVERCOMMITTED_HOSTS_SQL, USAGE_MISMATCH_SQL
from tests.support.stack import Stack

__all__ = ["OVERCOMMITTED_HOSTS_SQL", "USAGE_MISMATCH_SQL"]

PROJECT = "e2e-project"
USER = "e2e-user"
IMAGE_ID = "11111111-2222-3333-4444-555555555555"
T = TypeVar("T")


def seed_catalog(db_url: str, **flavor: Any) -> None:
    """A flavor "1" (1 vCPU, 512 MiB, 1 GiB unless given) and an active public image."""
    engine = create_engine(sync_database_url(db_url))
    try:
        with Session(engine) as session, session.begin():
            session.add_all([make_flavor("1", **flavor), make_image(IMAGE_ID)])
    finally:
        engine.dispose()


def db_scalar(db_url: str, sql: str) -> Any:
    engine = create_engine(sync_database_url(db_url))
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


@dataclass
class Client:
    channel: grpc.aio.Channel
    servers: servers_pb2_grpc.ServersServiceStub
    quotas: quotas_pb2_grpc.QuotasServiceStub

    @classmethod
    def connect(cls, target: str) -> Client:
        channel = grpc.aio.insecure_channel(target)
        return cls(
            channel,
            servers_pb2_grpc.ServersServiceStub(channel),
            quotas_pb2_grpc.QuotasServiceStub(channel),
        )

    async def unlimited_quota(self) -> None:
        await self.quotas.UpdateQuotas(
            quotas_pb2.UpdateQuotasRequest(
                request_id=uuid.uuid4().hex,
                project_id=PROJECT,
                limits={"instances": -1, "cores": -1, "ram": -1},
            ),
            timeout=10,
        )

    async def create(self, name: str, count: int = 1) -> list[str]:
        resp = await self.servers.CreateServers(
            servers_pb2.CreateServersRequest(
                request_id=uuid.uuid4().hex,
                project_id=PROJECT,
                user_id=USER,
                name=name,
                flavor_id="1",
                image_id=IMAGE_ID,
                networks="none",
                min_count=count,
                max_count=count,
            ),
            timeout=30,
        )
        return [s.id for s in resp.servers]

    async def delete(self, server_id: str) -> None:
        await self.servers.DeleteServer(
            servers_pb2.DeleteServerRequest(
                request_id=uuid.uuid4().hex, id=server_id, project_id=PROJECT, user_id=USER
            ),
            timeout=30,
        )

    async def all_servers(self, include_deleted: bool = False) -> list[servers_pb2.Server]:
        out: list[servers_pb2.Server] = []
        marker = ""
        while True:
            resp = await self.servers.ListServers(
                servers_pb2.ListServersRequest(
                    project_id=PROJECT, limit=1000, marker=marker, include_deleted=include_deleted
                ),
                timeout=30,
            )
            out.extend(resp.servers)
            if not resp.next_marker:
                return out
            marker = resp.next_marker

    async def close(self) -> None:
        await self.channel.close()


Status = servers_pb2.ServerStatus
TERMINAL = {Status.SERVER_STATUS_ACTIVE, Status.SERVER_STATUS_ERROR, Status.SERVER_STATUS_SHUTOFF}


async def eventually(
    check: Callable[[], Awaitable[T | None]], within: float, what: str, every: float = 0.1
) -> T:
    return await polling.eventually(check, within, what, every)


async def wait_for_hosts(stack: Stack, count: int, within: float = 60.0) -> None:
    async with grpc.aio.insecure_channel(stack.scheduler_target) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)

        async def up() -> bool:
            resp = await stub.ListHosts(scheduler_pb2.ListHostsRequest(), timeout=10)
            return sum(1 for h in resp.hosts if h.up and h.enabled) >= count

        await eventually(up, within, f"{count} hosts up in the scheduler")


async def settle(client: Client, ids: set[str], within: float) -> dict[str, servers_pb2.Server]:
    """Waits until every server in ids is ACTIVE, ERROR or SHUTOFF; returns them by id."""

    async def done() -> dict[str, servers_pb2.Server] | None:
        servers = {s.id: s for s in await client.all_servers() if s.id in ids}
        if len(servers) == len(ids) and all(s.status in TERMINAL for s in servers.values()):
            return servers
        return None

    return await eventually(done, within, f"{len(ids)} servers settle", every=0.2)


async def start_boot_path(
    stack: Stack, client: Client, hosts: int, prefix: str, *, unlimited: bool = True
) -> None:
    """Scheduler, conductor and a fleet process of `hosts` simulated agents named
    `<prefix>-NNNN`, all up; with unlimited, the test project has no quota limits."""
    stack.start("scheduler")
    stack.start("conductor")
    stack.start("agent", "--simulate", str(hosts), "--host-prefix", prefix)
    await wait_for_hosts(stack, hosts)
    if unlimited:
        await client.unlimited_quota()


def boot_one_through_api(cloud: Stack, name: str) -> str:
    """Uploads an image (as admin) and boots one server as the tenant; returns its id once
    ACTIVE."""
    clouds = cloud.data_dir / "clouds.yaml"
    admin = resolve_cloud("loom-admin", clouds)
    tenant = resolve_cloud("loom", clouds)
    base = admin.compute_url.split("/compute")[0]
    with httpx.Client(headers={"X-Auth-Token": admin.token}, timeout=30) as http:
        resp = http.post(
            f"{base}/image/v2/images",
            json={
                "name": f"{name}-image",
                "disk_format": "raw",
                "container_format": "bare",
                "visibility": "public",
            },
        )
        resp.raise_for_status()
        image = resp.json()["id"]
        http.put(
            f"{base}/image/v2/images/{image}/file",
            content=b"\0" * 65536,
            headers={"Content-Type": "application/octet-stream"},
        ).raise_for_status()
    headers = {"X-Auth-Token": tenant.token, "OpenStack-API-Version": "compute 2.37"}
    with httpx.Client(headers=headers, timeout=30) as http:
        flavors = http.get(f"{tenant.compute_url}/flavors").json()["flavors"]
        flavor = next(f["id"] for f in flavors if f["name"] == "m1.tiny")
        resp = http.post(
            f"{tenant.compute_url}/servers",
            json={
                "server": {
                    "name": name,
                    "imageRef": image,
                    "flavorRef": flavor,
                    "networks": "none",
                }
            },
        )
        assert resp.status_code == 202, resp.text
        server = resp.json()["server"]["id"]

        def active() -> bool:
            url = f"{tenant.compute_url}/servers/{server}"
            status = http.get(url).json()["server"]["status"]
            assert status != "ERROR"
            return bool(status == "ACTIVE")

        polling.wait_until(active, polling.boot_s(), f"server {server} ACTIVE", every=0.2)
    return str(server)
