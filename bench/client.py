"""A thin, fast REST client for any OpenStack Compute endpoint.

openstacksdk reads the `clouds.yaml` entry and authenticates (so the same tool measures Loom
or any other OpenStack cloud); the requests themselves go through aiohttp with that token.
The load generator shares the machine's cores with what it measures, so it is kept lean:
aiohttp and orjson cost about half the CPU per request of the first client (httpx).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson


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


class RequestFailed(RuntimeError):
    pass


class ComputeClient:
    """The few Compute calls a boot storm makes, with microversion 2.37 (networks: none).
    Make it inside the event loop that uses it."""

    def __init__(self, endpoint: CloudEndpoint, *, max_connections: int = 64) -> None:
        self.endpoint = endpoint
        self._base = endpoint.compute_url
        self.http = aiohttp.ClientSession(
            headers={
                "X-Auth-Token": endpoint.token,
                "OpenStack-API-Version": "compute 2.37",
                "Accept": "application/json",
            },
            timeout=aiohttp.ClientTimeout(total=60.0),
            connector=aiohttp.TCPConnector(limit=max_connections),
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )

    async def close(self) -> None:
        await self.http.close()

    async def _json(self, method: str, path: str, ok: tuple[int, ...], **kw: Any) -> Any:
        async with self.http.request(method, self._base + path, **kw) as resp:
            body = await resp.read()
            if resp.status not in ok:
                raise RequestFailed(f"{method} {path}: {resp.status} {body[:300]!r}")
            return orjson.loads(body) if body else None

    async def find_flavor(self, name: str) -> str:
        for flavor in (await self._json("GET", "/flavors", (200,)))["flavors"]:
            if flavor["name"] == name or flavor["id"] == name:
                return str(flavor["id"])
        raise RuntimeError(f"no flavor named {name!r}")

    async def create_server(self, name: str, flavor: str, image: str, network_id: str = "") -> str:
        """Boots a server; with `network_id`, on a port of that network, else with no NIC."""
        networks: Any = [{"uuid": network_id}] if network_id else "none"
        body = {
            "server": {"name": name, "flavorRef": flavor, "imageRef": image, "networks": networks}
        }
        created = await self._json("POST", "/servers", (202,), json=body)
        return str(created["server"]["id"])

    async def delete_server(self, server_id: str) -> None:
        await self._json("DELETE", f"/servers/{server_id}", (204, 404))

    async def servers_changed_since(self, since: str, name_regex: str) -> list[dict[str, Any]]:
        """Every server (deleted ones included) changed at or after `since`, all pages."""
        out: list[dict[str, Any]] = []
        params: dict[str, str] = {"changes-since": since, "name": name_regex, "limit": "1000"}
        while True:
            page = (await self._json("GET", "/servers/detail", (200,), params=params))["servers"]
            out.extend(page)
            if len(page) < 1000:
                return out
            params["marker"] = page[-1]["id"]
