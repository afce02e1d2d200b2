"""os-aggregates through the gateway to a real scheduler (AggregatesService on PostgreSQL):
shapes per microversion, Nova's status codes, admin only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.gateway.conftest import Cloud
from tests.gateway.scheduler_cloud import scheduled_cloud
from tests.gateway.shapes import assert_shape

AGG = "/compute/v2.1/os-aggregates"


@pytest.fixture
async def cloud(pg_url: str, tmp_path: Path) -> AsyncIterator[Cloud]:
    """The gateway in front of a catalog and of a scheduler knowing hosts h1 and h2."""
    async with scheduled_cloud(pg_url, tmp_path) as sc:
        yield sc.cloud


async def test_an_admin_creates_shows_updates_lists_and_deletes_an_aggregate(cloud: Cloud) -> None:
    h = await cloud.headers("admin", version="2.41")
    r = await cloud.client.post(
        AGG, json={"aggregate": {"name": "a1", "availability_zone": "z1"}}, headers=h
    )
    assert r.status_code == 200, r.text
    assert_shape("aggregate_create_v2.41", r.json())
    agg = r.json()["aggregate"]
    assert (agg["name"], agg["availability_zone"], agg["updated_at"]) == ("a1", "z1", None)

    r = await cloud.client.post(
        f"{AGG}/{agg['id']}/action", json={"add_host": {"host": "h1"}}, headers=h
    )
    assert r.status_code == 200, r.text
    r = await cloud.client.post(
        f"{AGG}/{agg['id']}/action",
        json={"set_metadata": {"metadata": {"ssd": "true", "gone": None}}},
        headers=h,
    )
    assert r.status_code == 200, r.text
    assert_shape("aggregate_v2.41", r.json())
    assert r.json()["aggregate"]["metadata"] == {"availability_zone": "z1", "ssd": "true"}
    assert r.json()["aggregate"]["hosts"] == ["h1"]

    r = await cloud.client.put(f"{AGG}/{agg['id']}", json={"aggregate": {"name": "a2"}}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["aggregate"]["name"] == "a2"

    listed = await cloud.client.get(AGG, headers=h)
    assert_shape("aggregates_list_v2.41", listed.json())
    assert [a["uuid"] for a in listed.json()["aggregates"]] == [agg["uuid"]]

    old = await cloud.client.get(f"{AGG}/{agg['id']}", headers=await cloud.headers("admin"))
    assert_shape("aggregate_v2.1", old.json())

    r = await cloud.client.post(
        f"{AGG}/{agg['id']}/action", json={"remove_host": {"host": "h1"}}, headers=h
    )
    assert r.status_code == 200, r.text
    r = await cloud.client.delete(f"{AGG}/{agg['id']}", headers=h)
    assert (r.status_code, r.content) == (200, b"")
    assert (await cloud.client.get(f"{AGG}/{agg['id']}", headers=h)).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        pytest.param("get", "/nope", None, 404, id="a non-integer id is not found"),
        pytest.param("get", "/999", None, 404, id="an unknown id is not found"),
        pytest.param(
            "post", "", {"aggregate": {"name": "taken"}}, 409, id="a taken name is a conflict"
        ),
        pytest.param(
            "post", "", {"aggregate": {"name": "x", "az": "z"}}, 400, id="an unknown field"
        ),
        pytest.param(
            "post",
            "",
            {"aggregate": {"name": "x", "availability_zone": "a:b"}},
            400,
            id="a zone name with a colon",
        ),
        pytest.param("put", "/{id}", {"aggregate": {}}, 400, id="an update changing nothing"),
        pytest.param(
            "post", "/{id}/action", {"add_host": {"host": "ghost"}}, 404, id="an unknown host"
        ),
        pytest.param(
            "post", "/{id}/action", {"add_host": {"host": "h2"}}, 409, id="a member added twice"
        ),
        pytest.param(
            "post",
            "/{id}/action",
            {"remove_host": {"host": "h1"}},
            404,
            id="removing a host that is not a member",
        ),
        pytest.param("delete", "/{id}", None, 400, id="deleting an aggregate that holds hosts"),
        pytest.param(
            "post",
            "/{id}/action",
            {"set_metadata": {"metadata": {"cpu_allocation_ratio": "fast"}}},
            400,
            id="a ratio that is not a number",
        ),
        pytest.param(
            "post",
            "/{id}/action",
            {"add_host": {"host": "h2"}, "remove_host": {"host": "h2"}},
            400,
            id="two actions at once",
        ),
        pytest.param(
            "post",
            "/{id}/action",
            {"set_metadata": {"metadata": {"availability_zone": "other"}}},
            200,
            id="a zone for a host in no other zone",
        ),
    ],
)
async def test_bad_aggregate_requests_get_novas_status_codes(
    cloud: Cloud, method: str, path: str, body: object, status: int
) -> None:
    h = await cloud.headers("admin")
    r = await cloud.client.post(AGG, json={"aggregate": {"name": "taken"}}, headers=h)
    agg_id = r.json()["aggregate"]["id"]
    r = await cloud.client.post(
        f"{AGG}/{agg_id}/action", json={"add_host": {"host": "h2"}}, headers=h
    )
    assert r.status_code == 200
    url = AGG + path.replace("{id}", str(agg_id))
    kw = {"json": body} if body is not None else {}
    r = await cloud.client.request(method.upper(), url, headers=h, **kw)
    assert r.status_code == status, r.text


async def test_a_second_zone_for_a_host_is_refused_as_nova_refuses_it(cloud: Cloud) -> None:
    h = await cloud.headers("admin")
    east = (
        await cloud.client.post(
            AGG, json={"aggregate": {"name": "e", "availability_zone": "east"}}, headers=h
        )
    ).json()["aggregate"]
    plain = (await cloud.client.post(AGG, json={"aggregate": {"name": "p"}}, headers=h)).json()[
        "aggregate"
    ]
    west = (
        await cloud.client.post(
            AGG, json={"aggregate": {"name": "w", "availability_zone": "west"}}, headers=h
        )
    ).json()["aggregate"]
    for agg in (east, plain):
        r = await cloud.client.post(
            f"{AGG}/{agg['id']}/action", json={"add_host": {"host": "h1"}}, headers=h
        )
        assert r.status_code == 200, r.text

    add = await cloud.client.post(
        f"{AGG}/{west['id']}/action", json={"add_host": {"host": "h1"}}, headers=h
    )
    assert add.status_code == 409
    assert "east" in add.json()["conflictingRequest"]["message"]
    meta = await cloud.client.post(
        f"{AGG}/{plain['id']}/action",
        json={"set_metadata": {"metadata": {"availability_zone": "west"}}},
        headers=h,
    )
    assert meta.status_code == 400
    put = await cloud.client.put(
        f"{AGG}/{plain['id']}", json={"aggregate": {"availability_zone": "west"}}, headers=h
    )
    assert put.status_code == 400


async def test_a_member_may_not_see_or_change_aggregates(cloud: Cloud) -> None:
    h = await cloud.headers()
    assert (await cloud.client.get(AGG, headers=h)).status_code == 403
    r = await cloud.client.post(AGG, json={"aggregate": {"name": "mine"}}, headers=h)
    assert r.status_code == 403


async def test_a_member_is_refused_an_aggregate_action_before_its_body_is_read(
    cloud: Cloud,
) -> None:
    h = await cloud.headers()
    for body in ({}, {"add_host": {"host": "h1"}}):
        r = await cloud.client.post(f"{AGG}/1/action", json=body, headers=h)
        assert r.status_code == 403, r.text


async def test_image_pre_caching_is_refused_plainly_from_2_81_and_absent_before(
    cloud: Cloud,
) -> None:
    h = await cloud.headers("admin", version="2.81")
    agg = (await cloud.client.post(AGG, json={"aggregate": {"name": "c"}}, headers=h)).json()[
        "aggregate"
    ]
    body = {"cache": [{"id": "00000000-0000-0000-0000-000000000001"}]}
    r = await cloud.client.post(f"{AGG}/{agg['id']}/images", json=body, headers=h)
    assert r.status_code == 501
    assert "pre-cache" in r.json()["notImplemented"]["message"]
    old = await cloud.client.post(
        f"{AGG}/{agg['id']}/images", json=body, headers=await cloud.headers("admin", version="2.80")
    )
    assert old.status_code == 404
