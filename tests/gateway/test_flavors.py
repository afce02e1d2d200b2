"""Compute flavors: shapes per microversion, admin management, validation, paging."""

from __future__ import annotations

from typing import Any

import pytest

from tests.gateway.conftest import Cloud
from tests.gateway.shapes import assert_shape


@pytest.mark.parametrize(
    ("version", "path", "shape"),
    [
        ("2.1", "/flavors", "flavors_list_v2.1"),
        ("2.55", "/flavors", "flavors_list_v2.55"),
        ("2.1", "/flavors/detail", "flavors_detail_v2.1"),
        ("2.55", "/flavors/detail", "flavors_detail_v2.55"),
        ("2.61", "/flavors/detail", "flavors_detail_v2.61"),
        ("2.96", "/flavors/detail", "flavors_detail_v2.75"),
    ],
)
async def test_flavor_lists_match_the_published_shape(
    cloud: Cloud, version: str, path: str, shape: str
) -> None:
    r = await cloud.client.get(f"/compute/v2.1{path}", headers=await cloud.headers(version=version))
    assert r.status_code == 200
    assert_shape(shape, r.json())
    assert len(r.json()["flavors"]) == 5


async def test_swap_is_an_empty_string_before_2_75_and_zero_after(cloud: Cloud) -> None:
    old = await cloud.client.get(
        "/compute/v2.1/flavors/1", headers=await cloud.headers(version="2.74")
    )
    new = await cloud.client.get(
        "/compute/v2.1/flavors/1", headers=await cloud.headers(version="2.75")
    )
    assert old.json()["flavor"]["swap"] == ""
    assert new.json()["flavor"]["swap"] == 0
    assert_shape("flavor_show_v2.75", new.json())


async def test_an_admin_creates_updates_and_deletes_a_flavor(cloud: Cloud) -> None:
    h = await cloud.headers("admin", version="2.61")
    body = {
        "flavor": {
            "name": "c1",
            "ram": 256,
            "vcpus": 1,
            "disk": 0,
            "id": "c1",
            "description": "tiny",
        }
    }
    r = await cloud.client.post("/compute/v2.1/flavors", json=body, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["flavor"]["description"] == "tiny"
    r = await cloud.client.put(
        "/compute/v2.1/flavors/c1", json={"flavor": {"description": "changed"}}, headers=h
    )
    assert r.json()["flavor"]["description"] == "changed"
    dup = await cloud.client.post("/compute/v2.1/flavors", json=body, headers=h)
    assert dup.status_code == 409
    assert "conflictingRequest" in dup.json()
    assert (await cloud.client.delete("/compute/v2.1/flavors/c1", headers=h)).status_code == 202
    gone = await cloud.client.get("/compute/v2.1/flavors/c1", headers=h)
    assert gone.status_code == 404


async def test_a_flavor_takes_an_integer_id_and_is_public_as_nova_s_boolean_words(
    cloud: Cloud,
) -> None:
    h = await cloud.headers("admin")
    base = {"ram": 256, "vcpus": 1, "disk": 0}
    made = await cloud.client.post(
        "/compute/v2.1/flavors",
        json={"flavor": {**base, "name": "n1", "id": 4242, "os-flavor-access:is_public": "True"}},
        headers=h,
    )
    assert made.status_code == 200, made.text
    assert made.json()["flavor"]["id"] == "4242"
    assert made.json()["flavor"]["os-flavor-access:is_public"] is True
    private = await cloud.client.post(
        "/compute/v2.1/flavors",
        json={"flavor": {**base, "name": "n2", "os-flavor-access:is_public": "off"}},
        headers=h,
    )
    assert private.json()["flavor"]["os-flavor-access:is_public"] is False
    bad = await cloud.client.post(
        "/compute/v2.1/flavors",
        json={"flavor": {**base, "name": "n3", "os-flavor-access:is_public": "maybe"}},
        headers=h,
    )
    assert bad.status_code == 400


async def test_a_member_cannot_create_or_delete_flavors(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    body = {"flavor": {"name": "c2", "ram": 256, "vcpus": 1, "disk": 0}}
    r = await cloud.client.post("/compute/v2.1/flavors", json=body, headers=h)
    assert r.status_code == 403
    assert r.json()["forbidden"]["code"] == 403
    assert (await cloud.client.delete("/compute/v2.1/flavors/1", headers=h)).status_code == 403


@pytest.mark.parametrize(
    ("flavor", "words"),
    [
        ({"name": "x", "ram": 256, "vcpus": 1}, "'disk' is a required property"),
        ({"name": "x", "ram": "lots", "vcpus": 1, "disk": 0}, "ram"),
        ({"name": "x", "ram": 0, "vcpus": 1, "disk": 0}, "minimum"),
        ({"name": "x", "ram": 1, "vcpus": True, "disk": 0}, "vcpus"),
        ({"name": "x", "ram": 1, "vcpus": 1, "disk": 0, "color": "red"}, "'color' was unexpected"),
        ({"name": "x", "ram": 1, "vcpus": 1, "disk": 0, "description": "d"}, "'description'"),
    ],
    ids=[
        "missing disk",
        "ram not a number",
        "zero ram",
        "boolean vcpus",
        "unknown key",
        "description before 2.55",
    ],
)
async def test_bad_flavor_bodies_are_400_with_a_reason(
    cloud: Cloud, flavor: dict[str, Any], words: str
) -> None:
    r = await cloud.client.post(
        "/compute/v2.1/flavors", json={"flavor": flavor}, headers=await cloud.headers("admin")
    )
    assert r.status_code == 400, r.text
    assert words in r.json()["badRequest"]["message"]


async def test_a_body_that_is_not_json_is_400(cloud: Cloud) -> None:
    r = await cloud.client.post(
        "/compute/v2.1/flavors", content=b"{not json", headers=await cloud.headers("admin")
    )
    assert r.status_code == 400
    assert "badRequest" in r.json()


@pytest.mark.parametrize(
    "query", ["limit=-1", "limit=abc", "sort_dir=sideways", "colour=red", "minRam=x"]
)
async def test_bad_query_strings_are_400(cloud: Cloud, query: str) -> None:
    r = await cloud.client.get(f"/compute/v2.1/flavors?{query}", headers=await cloud.headers())
    assert r.status_code == 400
    assert "badRequest" in r.json()


async def test_flavor_pages_carry_a_next_link_until_the_last(cloud: Cloud) -> None:
    h = await cloud.headers()
    first = await cloud.client.get("/compute/v2.1/flavors?limit=3", headers=h)
    assert [f["id"] for f in first.json()["flavors"]] == ["1", "2", "3"]
    nxt = first.json()["flavors_links"][0]
    assert nxt["rel"] == "next"
    assert "marker=3" in nxt["href"]
    assert "limit=3" in nxt["href"]
    second = await cloud.client.get("/compute/v2.1/flavors?limit=3&marker=3", headers=h)
    assert [f["id"] for f in second.json()["flavors"]] == ["4", "5"]
    assert "flavors_links" not in second.json()


async def test_min_ram_filters_and_private_flavors_stay_hidden_from_members(cloud: Cloud) -> None:
    admin = await cloud.headers("admin")
    body = {
        "flavor": {
            "name": "secret",
            "ram": 64,
            "vcpus": 1,
            "disk": 0,
            "os-flavor-access:is_public": False,
        }
    }
    assert (
        await cloud.client.post("/compute/v2.1/flavors", json=body, headers=admin)
    ).status_code == 200
    demo = await cloud.headers()
    big = await cloud.client.get("/compute/v2.1/flavors?minRam=8192", headers=demo)
    assert [f["name"] for f in big.json()["flavors"]] == ["m1.large", "m1.xlarge"]
    names = [
        f["name"]
        for f in (await cloud.client.get("/compute/v2.1/flavors", headers=demo)).json()["flavors"]
    ]
    assert "secret" not in names
    everything = await cloud.client.get("/compute/v2.1/flavors?is_public=none", headers=admin)
    assert "secret" in [f["name"] for f in everything.json()["flavors"]]


async def test_extra_specs_round_trip_for_an_admin(cloud: Cloud) -> None:
    h = await cloud.headers("admin")
    base = "/compute/v2.1/flavors/1/os-extra_specs"
    r = await cloud.client.post(
        base, json={"extra_specs": {"hw:cpu_policy": "dedicated"}}, headers=h
    )
    assert r.status_code == 200
    assert (await cloud.client.get(base, headers=h)).json() == {
        "extra_specs": {"hw:cpu_policy": "dedicated"}
    }
    r = await cloud.client.put(f"{base}/hw:cpu_policy", json={"hw:cpu_policy": "shared"}, headers=h)
    assert r.json() == {"hw:cpu_policy": "shared"}
    mismatch = await cloud.client.put(f"{base}/a", json={"b": "1"}, headers=h)
    assert mismatch.status_code == 400
    # 200, not 202 or 204: what the API has always answered (and Tempest checks).
    deleted = await cloud.client.delete(f"{base}/hw:cpu_policy", headers=h)
    assert (deleted.status_code, deleted.content) == (200, b"")
    assert (await cloud.client.get(f"{base}/hw:cpu_policy", headers=h)).status_code == 404
    member = await cloud.client.post(
        base, json={"extra_specs": {"a": "b"}}, headers=await cloud.headers()
    )
    assert member.status_code == 403


async def test_public_flavors_have_no_access_list(cloud: Cloud) -> None:
    r = await cloud.client.get(
        "/compute/v2.1/flavors/1/os-flavor-access", headers=await cloud.headers("admin")
    )
    assert r.status_code == 404


async def test_a_private_flavor_shared_with_a_project_is_seen_there_until_unshared(
    cloud: Cloud,
) -> None:
    admin = await cloud.headers("admin")
    demo = await cloud.headers()
    projects = await cloud.client.get("/identity/v3/projects?name=demo", headers=admin)
    demo_project = projects.json()["projects"][0]["id"]
    body = {
        "flavor": {
            "name": "shared",
            "id": "p1",
            "ram": 64,
            "vcpus": 1,
            "disk": 0,
            "os-flavor-access:is_public": False,
        }
    }
    assert (
        await cloud.client.post("/compute/v2.1/flavors", json=body, headers=admin)
    ).status_code == 200
    flavor = "/compute/v2.1/flavors/p1"
    assert (await cloud.client.get(flavor, headers=demo)).status_code == 404

    add = {"addTenantAccess": {"tenant": demo_project}}
    r = await cloud.client.post(f"{flavor}/action", json=add, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json() == {"flavor_access": [{"flavor_id": "p1", "tenant_id": demo_project}]}
    again = await cloud.client.post(f"{flavor}/action", json=add, headers=admin)
    assert again.status_code == 409
    unknown = {"addTenantAccess": {"tenant": "no-such-project"}}
    assert (
        await cloud.client.post(f"{flavor}/action", json=unknown, headers=admin)
    ).status_code == 400
    public = await cloud.client.post("/compute/v2.1/flavors/1/action", json=add, headers=admin)
    assert public.status_code == 409
    assert (await cloud.client.post(f"{flavor}/action", json=add, headers=demo)).status_code == 403

    assert (await cloud.client.get(flavor, headers=demo)).status_code == 200
    listed = await cloud.client.get("/compute/v2.1/flavors", headers=demo)
    assert "shared" in [f["name"] for f in listed.json()["flavors"]]
    access = await cloud.client.get(f"{flavor}/os-flavor-access", headers=admin)
    assert access.json()["flavor_access"] == [{"flavor_id": "p1", "tenant_id": demo_project}]

    remove = {"removeTenantAccess": {"tenant": demo_project}}
    r = await cloud.client.post(f"{flavor}/action", json=remove, headers=admin)
    assert (r.status_code, r.json()) == (200, {"flavor_access": []})
    missing = await cloud.client.post(f"{flavor}/action", json=remove, headers=admin)
    assert missing.status_code == 404
    assert (await cloud.client.get(flavor, headers=demo)).status_code == 404
