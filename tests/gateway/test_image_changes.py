"""Image v2 changes beside the patch: tags one at a time, deactivation and reactivation,
the owner an admin sets, and a protected image's deletion."""

from __future__ import annotations

from pathlib import Path

from tests.gateway.conftest import Cloud, gateway_cloud
from tests.gateway.images import IMAGES, PATCH, make_image


async def _image(cloud: Cloud, h: dict[str, str], data: bytes = b"", **fields: object) -> str:
    return await make_image(cloud.client, h, data, **fields)


async def _tags(cloud: Cloud, h: dict[str, str], image_id: str) -> list[str]:
    r = await cloud.client.get(f"{IMAGES}/{image_id}", headers=h)
    assert r.status_code == 200, r.text
    return list(r.json()["tags"])


async def test_a_tag_is_added_idempotently_and_removed_and_a_missing_one_is_404(
    cloud: Cloud,
) -> None:
    h = await cloud.headers()
    image_id = await _image(cloud, h, visibility="private")
    for _ in range(2):
        assert (
            await cloud.client.put(f"{IMAGES}/{image_id}/tags/blue", headers=h)
        ).status_code == 204
    assert await _tags(cloud, h, image_id) == ["blue"]
    assert (
        await cloud.client.delete(f"{IMAGES}/{image_id}/tags/blue", headers=h)
    ).status_code == 204
    assert await _tags(cloud, h, image_id) == []
    gone = await cloud.client.delete(f"{IMAGES}/{image_id}/tags/blue", headers=h)
    assert gone.status_code == 404
    missing = "9b0b3a25-4c9b-4bb5-8f39-5b8d9f6c3f55"
    assert (await cloud.client.put(f"{IMAGES}/{missing}/tags/x", headers=h)).status_code == 404


async def test_a_tag_longer_than_255_is_400_and_only_the_owner_tags(cloud: Cloud) -> None:
    h = await cloud.headers()
    image_id = await _image(cloud, h)
    r = await cloud.client.put(f"{IMAGES}/{image_id}/tags/{'t' * 256}", headers=h)
    assert r.status_code == 400
    admin = await cloud.headers("admin")
    public = await _image(cloud, admin, visibility="public")
    r = await cloud.client.put(f"{IMAGES}/{public}/tags/mine", headers=h)
    assert r.status_code == 403
    assert (
        await cloud.client.put(f"{IMAGES}/{image_id}/tags/ok", headers=admin)
    ).status_code == 204
    await cloud.make_user("rita", "reader", "demo")
    reader = {"X-Auth-Token": await cloud.token("rita", project="demo", password="pw-rita")}
    assert (
        await cloud.client.put(f"{IMAGES}/{image_id}/tags/r", headers=reader)
    ).status_code == 403


async def test_past_the_tag_limit_a_new_tag_is_413(pg_url: str, tmp_path: Path) -> None:
    async with gateway_cloud(pg_url, tmp_path / "data", {"image": {"tag_limit": 2}}) as cloud:
        h = await cloud.headers()
        image_id = await _image(cloud, h, tags=["a", "b"])
        r = await cloud.client.put(f"{IMAGES}/{image_id}/tags/c", headers=h)
        assert r.status_code == 413, r.text
        # A tag it has already is no new tag.
        assert (await cloud.client.put(f"{IMAGES}/{image_id}/tags/a", headers=h)).status_code == 204
        assert await _tags(cloud, h, image_id) == ["a", "b"]
        too_many = await cloud.client.post(IMAGES, json={"tags": ["x", "y", "z"]}, headers=h)
        assert too_many.status_code == 413


async def test_a_deactivated_image_is_downloaded_by_an_admin_only_until_reactivated(
    cloud: Cloud,
) -> None:
    h = await cloud.headers()
    image_id = await _image(cloud, h, data=b"bytes", visibility="private")
    r = await cloud.client.post(f"{IMAGES}/{image_id}/actions/deactivate", headers=h)
    assert r.status_code == 204, r.text
    shown = await cloud.client.get(f"{IMAGES}/{image_id}", headers=h)
    assert shown.json()["status"] == "deactivated"
    assert (await cloud.client.get(f"{IMAGES}/{image_id}/file", headers=h)).status_code == 403
    admin = await cloud.headers("admin")
    got = await cloud.client.get(f"{IMAGES}/{image_id}/file", headers=admin)
    assert (got.status_code, got.content) == (200, b"bytes")
    # Deactivating again changes nothing.
    again = await cloud.client.post(f"{IMAGES}/{image_id}/actions/deactivate", headers=h)
    assert again.status_code == 204
    r = await cloud.client.post(f"{IMAGES}/{image_id}/actions/reactivate", headers=h)
    assert r.status_code == 204
    got = await cloud.client.get(f"{IMAGES}/{image_id}/file", headers=h)
    assert (got.status_code, got.content) == (200, b"bytes")


async def test_only_an_active_or_deactivated_image_changes_activation(cloud: Cloud) -> None:
    h = await cloud.headers()
    queued = await _image(cloud, h)
    for verb in ("deactivate", "reactivate"):
        r = await cloud.client.post(f"{IMAGES}/{queued}/actions/{verb}", headers=h)
        assert r.status_code == 403, r.text
        assert f"Not allowed to {verb} image in status 'queued'" in r.text
    admin = await cloud.headers("admin")
    public = await _image(cloud, admin, data=b"x", visibility="public")
    r = await cloud.client.post(f"{IMAGES}/{public}/actions/deactivate", headers=h)
    assert r.status_code == 403
    assert (await cloud.client.get(f"{IMAGES}/{public}", headers=h)).json()["status"] == "active"


async def test_an_admin_sets_the_owner_at_create_and_by_patch(cloud: Cloud) -> None:
    admin = await cloud.headers("admin")
    image_id = await _image(cloud, admin, owner="0123456789abcdef0123456789abcdef")
    shown = await cloud.client.get(f"{IMAGES}/{image_id}", headers=admin)
    assert shown.json()["owner"] == "0123456789abcdef0123456789abcdef"
    ops = [{"op": "replace", "path": "/owner", "value": "fedcba9876543210fedcba9876543210"}]
    r = await cloud.client.patch(f"{IMAGES}/{image_id}", json=ops, headers={**admin, **PATCH})
    assert r.status_code == 200, r.text
    assert r.json()["owner"] == "fedcba9876543210fedcba9876543210"


async def test_a_member_may_not_give_an_image_to_another_project(cloud: Cloud) -> None:
    h = await cloud.headers()
    r = await cloud.client.post(IMAGES, json={"owner": "someone-else"}, headers=h)
    assert r.status_code == 403
    assert "You are not permitted to create images owned by 'someone-else'." in r.text
    image_id = await _image(cloud, h)
    mine = (await cloud.client.get(f"{IMAGES}/{image_id}", headers=h)).json()["owner"]
    # Naming its own project is no change, and allowed.
    same = await _image(cloud, h, owner=mine)
    assert (await cloud.client.get(f"{IMAGES}/{same}", headers=h)).json()["owner"] == mine
    ops = [{"op": "replace", "path": "/owner", "value": "someone-else"}]
    r = await cloud.client.patch(f"{IMAGES}/{image_id}", json=ops, headers={**h, **PATCH})
    assert r.status_code == 403
    assert (await cloud.client.get(f"{IMAGES}/{image_id}", headers=h)).json()["owner"] == mine


async def test_deleting_a_protected_image_is_403_and_leaves_it(cloud: Cloud) -> None:
    h = await cloud.headers()
    image_id = await _image(cloud, h, protected=True)
    r = await cloud.client.delete(f"{IMAGES}/{image_id}", headers=h)
    assert r.status_code == 403, r.text
    assert "is protected and cannot be deleted" in r.text
    assert (await cloud.client.get(f"{IMAGES}/{image_id}", headers=h)).status_code == 200
    ops = [{"op": "replace", "path": "/protected", "value": False}]
    r = await cloud.client.patch(f"{IMAGES}/{image_id}", json=ops, headers={**h, **PATCH})
    assert r.status_code == 200
    assert (await cloud.client.delete(f"{IMAGES}/{image_id}", headers=h)).status_code == 204
