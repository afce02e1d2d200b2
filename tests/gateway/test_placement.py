"""The Placement API's reads through the gateway to a real scheduler on PostgreSQL:
providers, inventories, usages, allocations and aggregates as the claims left them;
placement's microversions and error shapes; admin only; read-only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from controlplane.scheduler.hoststate import HostState, Resources
from controlplane.scheduler.store import ProviderStore
from controlplane.servicetoken import password_auth
from tests.gateway.conftest import Cloud
from tests.gateway.scheduler_cloud import scheduled_cloud

P = "/placement"


@dataclass
class Placement:
    cloud: Cloud
    hosts: dict[str, HostState]
    store: ProviderStore

    async def headers(self, user: str = "admin", version: str = "") -> dict[str, str]:
        h = await self.cloud.headers(user)
        if version:
            h["OpenStack-API-Version"] = f"placement {version}"
        return h

    async def get(self, path: str, user: str = "admin", version: str = "") -> httpx.Response:
        return await self.cloud.client.get(P + path, headers=await self.headers(user, version))


@pytest.fixture
async def placement(pg_url: str, tmp_path: Path) -> AsyncIterator[Placement]:
    """The gateway in front of a catalog and of a scheduler knowing hosts h1 and h2."""
    async with scheduled_cloud(pg_url, tmp_path) as sc:
        yield Placement(sc.cloud, sc.hosts, sc.store)


async def test_the_version_document_names_the_served_range_without_a_token(
    placement: Placement,
) -> None:
    r = await placement.cloud.client.get(P)
    assert r.status_code == 200, r.text
    (v,) = r.json()["versions"]
    assert (v["id"], v["min_version"], v["max_version"]) == ("v1.0", "1.0", "1.27")
    assert r.headers["openstack-api-version"] == "placement 1.0"


async def test_providers_list_every_host_with_root_and_parent_at_1_14(
    placement: Placement,
) -> None:
    r = await placement.get("/resource_providers", version="1.14")
    assert r.status_code == 200, r.text
    assert r.headers["openstack-api-version"] == "placement 1.14"
    rps = r.json()["resource_providers"]
    assert [rp["name"] for rp in rps] == ["h1", "h2"]
    h1 = rps[0]
    assert h1["uuid"] == placement.hosts["h1"].uuid
    assert (h1["parent_provider_uuid"], h1["root_provider_uuid"]) == (None, h1["uuid"])
    assert {link["rel"] for link in h1["links"]} == {
        "self",
        "aggregates",
        "inventories",
        "usages",
        "traits",
        "allocations",
    }
    old = (await placement.get("/resource_providers")).json()["resource_providers"][0]
    assert "root_provider_uuid" not in old
    assert {link["rel"] for link in old["links"]} == {"self", "inventories", "usages"}


async def test_inventories_and_usages_follow_the_claims(placement: Placement) -> None:
    h1 = placement.hosts["h1"]
    await placement.store.claim(h1.id, "c-1", "proj-a", Resources(2, 256, 10))
    await placement.store.claim(h1.id, "c-2", "proj-b", Resources(1, 128, 5))
    inv = (await placement.get(f"/resource_providers/{h1.uuid}/inventories")).json()
    assert inv["inventories"]["VCPU"] == {
        "total": 16,
        "reserved": 0,
        "min_unit": 1,
        "max_unit": 16,
        "step_size": 1,
        "allocation_ratio": 1.0,
    }
    assert set(inv["inventories"]) == {"VCPU", "MEMORY_MB", "DISK_GB"}
    usages = (await placement.get(f"/resource_providers/{h1.uuid}/usages")).json()
    assert usages["usages"] == {"VCPU": 3, "MEMORY_MB": 384, "DISK_GB": 15}
    assert usages["resource_provider_generation"] == inv["resource_provider_generation"]

    allocs = (await placement.get(f"/resource_providers/{h1.uuid}/allocations")).json()
    assert allocs["allocations"] == {
        "c-1": {"resources": {"VCPU": 2, "MEMORY_MB": 256, "DISK_GB": 10}},
        "c-2": {"resources": {"VCPU": 1, "MEMORY_MB": 128, "DISK_GB": 5}},
    }
    mine = (await placement.get("/allocations/c-1", version="1.12")).json()
    assert mine["allocations"][h1.uuid]["resources"] == {"VCPU": 2, "MEMORY_MB": 256, "DISK_GB": 10}
    assert mine["project_id"] == "proj-a"
    none = (await placement.get("/allocations/nobody")).json()
    assert none == {"allocations": {}}

    project = (await placement.get("/usages?project_id=proj-a", version="1.9")).json()
    assert project == {"usages": {"VCPU": 2, "MEMORY_MB": 256, "DISK_GB": 10}}


async def test_providers_filter_by_free_resources_and_aggregate(placement: Placement) -> None:
    h1, h2 = placement.hosts["h1"], placement.hosts["h2"]
    await placement.store.claim(h1.id, "big", "p", Resources(15, 100, 1))
    r = await placement.get("/resource_providers?resources=VCPU:2", version="1.4")
    assert [rp["name"] for rp in r.json()["resource_providers"]] == ["h2"]

    h = await placement.cloud.headers("admin", version="2.41")
    made = await placement.cloud.client.post(
        "/compute/v2.1/os-aggregates", json={"aggregate": {"name": "a1"}}, headers=h
    )
    agg = made.json()["aggregate"]
    await placement.cloud.client.post(
        f"/compute/v2.1/os-aggregates/{agg['id']}/action",
        json={"add_host": {"host": "h2"}},
        headers=h,
    )
    r = await placement.get(f"/resource_providers?member_of={agg['uuid']}", version="1.3")
    assert [rp["uuid"] for rp in r.json()["resource_providers"]] == [h2.uuid]
    r = await placement.get(f"/resource_providers/{h2.uuid}/aggregates", version="1.19")
    assert r.json()["aggregates"] == [agg["uuid"]]
    assert (await placement.get(f"/resource_providers/{h1.uuid}/aggregates", version="1.1")).json()[
        "aggregates"
    ] == []


async def test_a_required_trait_matches_no_host_and_a_forbidden_one_matches_all(
    placement: Placement,
) -> None:
    req = await placement.get("/resource_providers?required=HW_CPU_X86_AVX2", version="1.22")
    assert req.json()["resource_providers"] == []
    forbid = await placement.get("/resource_providers?required=!HW_CPU_X86_AVX2", version="1.22")
    assert len(forbid.json()["resource_providers"]) == 2


async def test_errors_come_in_placement_shape(placement: Placement) -> None:
    r = await placement.get("/resource_providers/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404
    (err,) = r.json()["errors"]
    assert (err["status"], err["title"]) == (404, "Not Found")
    assert "00000000-0000-0000-0000-000000000000" in err["detail"]

    too_new = await placement.get("/resource_providers", version="1.28")
    assert too_new.status_code == 406
    (err,) = too_new.json()["errors"]
    assert (err["status"], err["min_version"], err["max_version"]) == (406, "1.0", "1.27")
    bad = await placement.get("/resource_providers", version="one")
    assert bad.status_code == 400
    early = await placement.get("/resource_providers?resources=VCPU:1", version="1.3")
    assert early.status_code == 400
    malformed = await placement.get("/resource_providers?resources=VCPU", version="1.4")
    assert malformed.status_code == 400
    assert "resources" in malformed.json()["errors"][0]["detail"]


async def test_placement_is_admin_only(placement: Placement) -> None:
    r = await placement.get("/resource_providers", user="demo")
    assert r.status_code == 403
    assert r.json()["errors"][0]["status"] == 403
    assert (await placement.cloud.client.get(P + "/resource_providers")).status_code == 401


async def test_writes_are_refused_as_not_allowed_and_change_nothing(
    placement: Placement,
) -> None:
    h1 = placement.hosts["h1"]
    h = await placement.headers()
    body = {"resource_provider_generation": 0, "inventories": {"VCPU": {"total": 999}}}
    r = await placement.cloud.client.put(
        f"{P}/resource_providers/{h1.uuid}/inventories", json=body, headers=h
    )
    assert r.status_code == 405
    assert "read-only" in r.json()["errors"][0]["detail"]
    inv = (await placement.get(f"/resource_providers/{h1.uuid}/inventories")).json()
    assert inv["inventories"]["VCPU"]["total"] == 16


async def test_the_catalog_names_a_placement_endpoint(placement: Placement) -> None:
    admin = placement.cloud.seed.user("admin")
    assert admin is not None
    r = await placement.cloud.client.post(
        "/identity/v3/auth/tokens", json=password_auth("admin", admin.password, "admin")
    )
    assert r.status_code == 201, r.text
    kinds = {s["type"]: s for s in r.json()["token"]["catalog"]}
    assert kinds["placement"]["endpoints"][0]["url"].endswith("/placement")
