"""A gateway in-process (ASGI) in front of a real conductor catalog on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.seedfile import Seed, load_or_create
from controlplane.servicetoken import password_auth
from gateway.app import build_app
from gateway.service import make_gateway
from tests.support.catalog import RunningCatalog, running_catalog


@dataclass
class Cloud:
    """A gateway client plus the credentials of the seeded users."""

    client: httpx.AsyncClient
    seed: Seed
    catalog: RunningCatalog

    async def token(
        self, user: str = "demo", project: str | None = None, password: str | None = None
    ) -> str:
        seeded = self.seed.user(user)
        body = password_auth(
            user,
            password or (seeded.password if seeded else ""),
            project or (seeded.project if seeded else user),
        )
        r = await self.client.post("/identity/v3/auth/tokens", json=body)
        assert r.status_code == 201, r.text
        return r.headers["x-subject-token"]

    async def headers(
        self, user: str = "demo", version: str | None = None, **kw: Any
    ) -> dict[str, str]:
        h = {"X-Auth-Token": await self.token(user, **kw)}
        if version:
            h["OpenStack-API-Version"] = f"compute {version}"
        return h

    async def make_user(self, name: str, role: str, project: str) -> None:
        """A user holding `role` on `project` (created when missing), password 'pw-<name>'."""
        admin = await self.headers("admin")
        r = await self.client.get("/identity/v3/projects", params={"name": project}, headers=admin)
        found = r.json()["projects"]
        if found:
            pid = found[0]["id"]
        else:
            r = await self.client.post(
                "/identity/v3/projects", json={"project": {"name": project}}, headers=admin
            )
            pid = r.json()["project"]["id"]
        r = await self.client.post(
            "/identity/v3/users",
            json={"user": {"name": name, "password": f"pw-{name}", "default_project_id": pid}},
            headers=admin,
        )
        assert r.status_code == 201, r.text
        uid = r.json()["user"]["id"]
        roles = (
            await self.client.get("/identity/v3/roles", params={"name": role}, headers=admin)
        ).json()
        rid = roles["roles"][0]["id"]
        r = await self.client.put(
            f"/identity/v3/projects/{pid}/users/{uid}/roles/{rid}", headers=admin
        )
        assert r.status_code == 204, r.text


@asynccontextmanager
async def gateway_cloud(
    pg_url: str, data_dir: Path, overrides: dict[str, Any] | None = None
) -> AsyncIterator[Cloud]:
    """The gateway in-process before the services of `running_catalog` (with `overrides`
    to their configuration)."""
    async with running_catalog(pg_url, data_dir, overrides) as cat:
        gateway = make_gateway(cat.cfg)
        app = build_app(gateway)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://loom.test") as client:
            yield Cloud(client=client, seed=load_or_create(cat.cfg.data_path), catalog=cat)
        await gateway.conductor.close()


@pytest.fixture
async def cloud(pg_url: str, tmp_path: Path) -> AsyncIterator[Cloud]:
    async with gateway_cloud(pg_url, tmp_path / "data") as cloud:
        yield cloud
