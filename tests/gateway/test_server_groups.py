"""os-server-groups per microversion, scoped to the project."""

from __future__ import annotations

from tests.gateway.conftest import Cloud
from tests.gateway.shapes import assert_shape

SG = "/compute/v2.1/os-server-groups"


async def test_before_2_64_a_group_has_a_policies_list(cloud: Cloud) -> None:
    h = await cloud.headers()
    r = await cloud.client.post(
        SG, json={"server_group": {"name": "g", "policies": ["anti-affinity"]}}, headers=h
    )
    assert r.status_code == 200, r.text
    assert_shape("server_group_v2.1", r.json())
    soft = await cloud.client.post(
        SG, json={"server_group": {"name": "s", "policies": ["soft-affinity"]}}, headers=h
    )
    assert soft.status_code == 400


async def test_from_2_64_a_group_has_a_policy_and_rules(cloud: Cloud) -> None:
    h = await cloud.headers(version="2.64")
    body = {
        "server_group": {
            "name": "g",
            "policy": "anti-affinity",
            "rules": {"max_server_per_host": 2},
        }
    }
    r = await cloud.client.post(SG, json=body, headers=h)
    assert r.status_code == 200, r.text
    assert_shape("server_group_v2.64", r.json())
    assert r.json()["server_group"]["rules"] == {"max_server_per_host": 2}
    gid = r.json()["server_group"]["id"]
    listed = await cloud.client.get(SG, headers=h)
    assert [g["id"] for g in listed.json()["server_groups"]] == [gid]
    shown = await cloud.client.get(f"{SG}/{gid}", headers=h)
    assert_shape("server_group_v2.64", shown.json())
    assert (await cloud.client.delete(f"{SG}/{gid}", headers=h)).status_code == 204
    assert (await cloud.client.get(f"{SG}/{gid}", headers=h)).status_code == 404


async def test_rules_other_than_anti_affinity_s_are_refused(cloud: Cloud) -> None:
    body = {
        "server_group": {"name": "g", "policy": "affinity", "rules": {"max_server_per_host": 2}}
    }
    r = await cloud.client.post(SG, json=body, headers=await cloud.headers(version="2.64"))
    assert r.status_code == 400


async def test_an_admin_lists_every_project_s_groups_with_all_projects(cloud: Cloud) -> None:
    demo = await cloud.headers()
    body = {"server_group": {"name": "g", "policies": ["affinity"]}}
    assert (await cloud.client.post(SG, json=body, headers=demo)).status_code == 200
    admin = await cloud.headers("admin")
    assert (await cloud.client.get(SG, headers=admin)).json()["server_groups"] == []
    every = await cloud.client.get(f"{SG}?all_projects=True", headers=admin)
    assert [g["name"] for g in every.json()["server_groups"]] == ["g"]
