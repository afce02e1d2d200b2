"""A thin, fast REST client for any OpenStack Compute endpoint.

openstacksdk reads the `clouds.yaml` entry and authenticates (so the same tool measures Loom
or any other OpenStack cloud); the requests themselves go through httpx with that token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


@dataclass(frozen=True)
class CloudEndpoint:
    compute_url: str
    token: str
    project_id: str


def resolve_cloud(cloud: str, clouds_yaml: Path | None = None) -> CloudEndpoint:
    """Authenticates with the clouds.yaml entry `cloud` and finds the compute endpoint."""
    import openstack.config

    files = [str(clouds_yaml)] if clouds_yaml else None
    region = openstack.config.OpenStackConfig(config_files=files).get_one(cloud=cloud)
    session = region.get_session()
    token = session.get_token()
    endpoint = session.get_endpoint(service_type="compute", interface="public")
    project_id = session.get_project_id()
    if not token or not endpoint or not project_id:
        raise RuntimeError(f"cloud {cloud!r}: authentication gave no token or compute endpoint")
    return CloudEndpoint(compute_url=endpoint.rstrip("/"), token=token, project_id=project_id)


class ComputeClient:
    """The few Compute calls a boot storm makes, with microversion 2.37 (networks: none)."""

    def __init__(self, endpoint: CloudEndpoint, *, max_connections: int = 64) -> None:
        self.endpoint = endpoint
        self.http = httpx.AsyncClient(
            base_url=endpoint.compute_url,
            headers={
                "X-Auth-Token": endpoint.token,
                "OpenStack-API-Version": "compute 2.37",
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(60.0),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def find_flavor(self, name: str) -> str:
        resp = await self.http.get("/flavors")
        resp.raise_for_status()
        for flavor in resp.json()["flavors"]:
            if flavor["name"] == name or flavor["id"] == name:
                return str(flavor["id"])
        raise RuntimeError(f"no flavor named {name!r}")

    async def create_server(self, name: str, flavor: str, image: str) -> str:
        body = {
            "server": {"name": name, "flavorRef": flavor, "imageRef": image, "networks": "none"}
        }
        resp = await self.http.post("/servers", json=body)
        if resp.status_code != 202:
            raise RuntimeError(f"POST /servers: {resp.status_code} {resp.text[:300]}")
        return str(resp.json()["server"]["id"])

    async def delete_server(self, server_id: str) -> None:
        resp = await self.http.delete(f"/servers/{server_id}")
        if resp.status_code not in (204, 404):
            raise RuntimeError(f"DELETE /servers/{server_id}: {resp.status_code} {resp.text[:300]}")

    async def servers_changed_since(self, since: str, name_regex: str) -> list[dict[str, Any]]:
        """Every server (deleted ones included) changed at or after `since`, all pages."""
        out: list[dict[str, Any]] = []
        params: dict[str, str] = {"changes-since": since, "name": name_regex, "limit": "1000"}
        while True:
            resp = await self.http.get("/servers/detail", params=params)
            resp.raise_for_status()
            page = resp.json()["servers"]
            out.extend(page)
            if len(page) < 1000:
                return out
            params["marker"] = page[-1]["id"]
