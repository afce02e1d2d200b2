"""Image v2 members: an owner shares an image with other projects, each member answers,
and what each project sees follows (show, download, list and its filters)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gateway.conftest import Cloud, gateway_cloud
from tests.gateway.images import IMAGES, PATCH, make_image


@dataclass
class Projects:
    """The owner (demo), a project the image is offered to (alt) and one it is not (eve)."""

    owner: dict[str, str]
    alt: dict[str, str]
    alt_id: str
    eve: dict[str, str]
    eve_id: str


async def _project_id(cloud: Cloud, name: str) -> str:
    admin = await cloud.headers("admin")
    r = await cloud.client.get("/identity/v3/projects", params={"name": name}, headers=admin)
    return str(r.json()["projects"][0]["id"])


@pytest.fixture
async def projects(cloud: Cloud) -> Projects:
    await cloud.make_user("alt", "member", "alt")
    await cloud.make_user("eve", "member", "eve")
    return Projects(
        owner=await cloud.headers(),
        alt={"X-Auth-Token": await cloud.token("alt", project="alt", password="pw-alt")},
        alt_id=await _project_id(cloud, "alt"),
        eve={"X-Auth-Token": await cloud.token("eve", project="eve", password="pw-eve")},
        eve_id=await _project_id(cloud, "eve"),
    )


async def _image(cloud: Cloud, h: dict[str, str], data: bytes = b"", **fields: object) -> str:
    return await make_image(cloud.client, h, data, **fields)


async def _listed(cloud: Cloud, h: dict[str, str], query: str = "") -> set[str]:
    r = await cloud.client.get(f"{IMAGES}{query}", headers=h)
    assert r.status_code == 200, r.text
    return {i["id"] for i in r.json()["images"]}


async def _share(cloud: Cloud, p: Projects, image_id: str) -> dict[str, object]:
    r = await cloud.client.post(
        f"{IMAGES}/{image_id}/members", json={"member": p.alt_id}, headers=p.owner
    )
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


async def _answer(cloud: Cloud, p: Projects, image_id: str, status: str) -> int:
    r = await cloud.client.put(
        f"{IMAGES}/{image_id}/members/{p.alt_id}", json={"status": status}, headers=p.alt
    )
    return r.status_code


async def test_a_new_member_is_pending_and_listed_only_once_it_accepts(
    cloud: Cloud, projects: Projects
) -> None:
    p = projects
    image_id = await _image(cloud, p.owner, name="shared-one")
    member = await _share(cloud, p, image_id)
    assert set(member) == {"created_at", "updated_at", "image_id", "member_id", "status", "schema"}
    assert (member["image_id"], member["member_id"], member["status"]) == (
        image_id,
        p.alt_id,
        "pending",
    )
    assert member["schema"] == "/v2/schemas/member"
    assert image_id not in await _listed(cloud, p.alt)
    assert await _answer(cloud, p, image_id, "accepted") == 200
    assert image_id in await _listed(cloud, p.alt)
    r = await cloud.client.get(f"{IMAGES}/{image_id}/members", headers=p.owner)
    assert r.json()["schema"] == "/v2/schemas/members"
    assert [(m["member_id"], m["status"]) for m in r.json()["members"]] == [(p.alt_id, "accepted")]
    shown = await cloud.client.get(f"{IMAGES}/{image_id}/members/{p.alt_id}", headers=p.alt)
    assert (shown.status_code, shown.json()["status"]) == (200, "accepted")


async def test_a_rejected_or_withdrawn_image_leaves_the_member_s_list(
    cloud: Cloud, projects: Projects
) -> None:
    p = projects
    image_id = await _image(cloud, p.owner)
    await _share(cloud, p, image_id)
    assert await _answer(cloud, p, image_id, "rejected") == 200
    assert image_id not in await _listed(cloud, p.alt)
    assert await _answer(cloud, p, image_id, "accepted") == 200
    assert image_id in await _listed(cloud, p.alt)
    r = await cloud.client.delete(f"{IMAGES}/{image_id}/members/{p.alt_id}", headers=p.owner)
    assert r.status_code == 204
    assert image_id not in await _listed(cloud, p.alt)
    assert (await cloud.client.get(f"{IMAGES}/{image_id}", headers=p.alt)).status_code == 404


async def test_member_status_and_visibility_filters_choose_which_shared_images_are_listed(
    cloud: Cloud, projects: Projects
) -> None:
    p = projects
    pending = await _image(cloud, p.owner, name="pending")
    accepted = await _image(cloud, p.owner, name="accepted")
    rejected = await _image(cloud, p.owner, name="rejected")
    for image_id in (pending, accepted, rejected):
        await _share(cloud, p, image_id)
    assert await _answer(cloud, p, accepted, "accepted") == 200
    assert await _answer(cloud, p, rejected, "rejected") == 200
    own = await _image(cloud, p.alt, name="alt-own", visibility="private")
    assert await _listed(cloud, p.alt) == {accepted, own}
    assert await _listed(cloud, p.alt, "?visibility=shared") == {accepted}
    assert await _listed(cloud, p.alt, "?visibility=shared&member_status=pending") == {pending}
    assert await _listed(cloud, p.alt, "?member_status=rejected") == {rejected, own}
    assert await _listed(cloud, p.alt, "?member_status=all&visibility=shared") == {
        pending,
        accepted,
        rejected,
    }
    # The owner's own shared images are listed whatever their members answered.
    assert {pending, accepted, rejected} <= await _listed(cloud, p.owner, "?member_status=pending")
    r = await cloud.client.get(f"{IMAGES}?member_status=maybe", headers=p.alt)
    assert r.status_code == 400


async def test_a_member_sees_and_downloads_a_shared_image_whatever_its_answer(
    cloud: Cloud, projects: Projects
) -> None:
    p = projects
    image_id = await _image(cloud, p.owner, data=b"shared bytes")
    await _share(cloud, p, image_id)
    for status in ("pending", "rejected", "accepted"):
        assert await _answer(cloud, p, image_id, status) == 200
        assert (await cloud.client.get(f"{IMAGES}/{image_id}", headers=p.alt)).status_code == 200
        got = await cloud.client.get(f"{IMAGES}/{image_id}/file", headers=p.alt)
        assert (got.status_code, got.content) == (200, b"shared bytes")


async def test_a_member_sees_only_its_own_entry_and_a_stranger_gets_404(
    cloud: Cloud, projects: Projects
) -> None:
    p = projects
    image_id = await _image(cloud, p.owner)
    await _share(cloud, p, image_id)
    r = await cloud.client.post(
        f"{IMAGES}/{image_id}/members", json={"member": p.eve_id}, headers=p.owner
    )
    assert r.status_code == 200, r.text
    listed = await cloud.client.get(f"{IMAGES}/{image_id}/members", headers=p.alt)
    assert [m["member_id"] for m in listed.json()["members"]] == [p.alt_id]
    other = await cloud.client.get(f"{IMAGES}/{image_id}/members/{p.eve_id}", headers=p.alt)
    assert other.status_code == 404
    everyone = await cloud.client.get(f"{IMAGES}/{image_id}/members", headers=p.owner)
    assert {m["member_id"] for m in everyone.json()["members"]} == {p.alt_id, p.eve_id}
    await cloud.make_user("mallory", "member", "mallory")
    stranger = {"X-Auth-Token": await cloud.token("mallory", "mallory", "pw-mallory")}
    for path in ("/members", f"/members/{p.alt_id}"):
        r = await cloud.client.get(f"{IMAGES}/{image_id}{path}", headers=stranger)
        assert r.status_code == 404, path
    r = await cloud.client.post(
        f"{IMAGES}/{image_id}/members", json={"member": "x"}, headers=stranger
    )
    assert r.status_code == 404


async def test_only_the_member_answers_the_owner_cannot_accept_and_a_bad_status_is_400(
    cloud: Cloud, projects: Projects
) -> None:
    p = projects
    image_id = await _image(cloud, p.owner)
    await _share(cloud, p, image_id)
    path = f"{IMAGES}/{image_id}/members/{p.alt_id}"
    r = await cloud.client.put(path, json={"status": "accepted"}, headers=p.owner)
    assert r.status_code == 403, r.text
    assert image_id not in await _listed(cloud, p.alt)
    assert await _answer(cloud, p, image_id, "notavalidstatus") == 400
    r = await cloud.client.put(path, json={}, headers=p.alt)
    assert r.status_code == 400
    # A member may not withdraw itself, nor offer the image to others.
    assert (await cloud.client.delete(path, headers=p.alt)).status_code == 403
    r = await cloud.client.post(
        f"{IMAGES}/{image_id}/members", json={"member": p.eve_id}, headers=p.alt
    )
    assert r.status_code == 403


async def test_only_a_shared_image_has_members_and_a_duplicate_is_409(
    cloud: Cloud, projects: Projects
) -> None:
    p = projects
    private = await _image(cloud, p.owner, visibility="private")
    r = await cloud.client.post(
        f"{IMAGES}/{private}/members", json={"member": p.alt_id}, headers=p.owner
    )
    assert r.status_code == 403, r.text
    assert "Only shared images have members" in r.text
    shared = await _image(cloud, p.owner)
    await _share(cloud, p, shared)
    again = await cloud.client.post(
        f"{IMAGES}/{shared}/members", json={"member": p.alt_id}, headers=p.owner
    )
    assert again.status_code == 409
    missing = await cloud.client.post(f"{IMAGES}/{shared}/members", json={}, headers=p.owner)
    assert missing.status_code == 400


async def test_members_stop_granting_access_when_the_image_is_no_longer_shared(
    cloud: Cloud, projects: Projects
) -> None:
    p = projects
    image_id = await _image(cloud, p.owner)
    await _share(cloud, p, image_id)
    assert await _answer(cloud, p, image_id, "accepted") == 200
    ops = [{"op": "replace", "path": "/visibility", "value": "private"}]
    r = await cloud.client.patch(f"{IMAGES}/{image_id}", json=ops, headers={**p.owner, **PATCH})
    assert r.status_code == 200, r.text
    assert (await cloud.client.get(f"{IMAGES}/{image_id}", headers=p.alt)).status_code == 404
    assert image_id not in await _listed(cloud, p.alt)
    # The member rows are kept: sharing the image again restores the member's access.
    ops = [{"op": "replace", "path": "/visibility", "value": "shared"}]
    r = await cloud.client.patch(f"{IMAGES}/{image_id}", json=ops, headers={**p.owner, **PATCH})
    assert r.status_code == 200, r.text
    assert image_id in await _listed(cloud, p.alt)


async def test_deleting_an_image_deletes_its_members(cloud: Cloud, projects: Projects) -> None:
    from sqlalchemy import func, select

    from controlplane.db.models import ImageMember

    p = projects
    image_id = await _image(cloud, p.owner)
    await _share(cloud, p, image_id)
    assert (await cloud.client.delete(f"{IMAGES}/{image_id}", headers=p.owner)).status_code == 204
    async with cloud.catalog.sessions() as s:
        left = await s.scalar(
            select(func.count()).select_from(ImageMember).where(ImageMember.image_id == image_id)
        )
    assert left == 0
    r = await cloud.client.get(f"{IMAGES}/{image_id}/members", headers=p.owner)
    assert r.status_code == 404


async def test_the_member_schemas_are_served_without_a_token(cloud: Cloud) -> None:
    for name in ("member", "members", "image", "images"):
        r = await cloud.client.get(f"/image/v2/schemas/{name}")
        assert (r.status_code, r.json()["name"]) == (200, name)


async def test_past_the_member_limit_a_new_member_is_413(pg_url: str, tmp_path: Path) -> None:
    async with gateway_cloud(pg_url, tmp_path / "data", {"image": {"member_limit": 2}}) as cloud:
        h = await cloud.headers()
        image_id = await _image(cloud, h)
        for member in ("p1", "p2"):
            r = await cloud.client.post(
                f"{IMAGES}/{image_id}/members", json={"member": member}, headers=h
            )
            assert r.status_code == 200, r.text
        r = await cloud.client.post(
            f"{IMAGES}/{image_id}/members", json={"member": "p3"}, headers=h
        )
        assert r.status_code == 413, r.text
        listed = await cloud.client.get(f"{IMAGES}/{image_id}/members", headers=h)
        assert [m["member_id"] for m in listed.json()["members"]] == ["p1", "p2"]
