"""Which images a server boots from, by the image service's visibility rule: a shared
image's members boot it, other projects do not see it, and a deactivated image boots for
no one. The gateway in front of the real conductor and scheduler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.gateway.conftest import Cloud
from tests.gateway.full_cloud import full_cloud
from tests.gateway.images import IMAGES, make_image


@pytest.fixture
async def cloud(pg_url: str, tmp_path: Path) -> AsyncIterator[Cloud]:
    async with full_cloud(pg_url, tmp_path / "data") as cloud:
        admin = await cloud.headers("admin")
        # The default flavors are in place once listed.
        assert (await cloud.client.get("/compute/v2.1/flavors", headers=admin)).status_code == 200
        yield cloud


async def _active_image(cloud: Cloud, h: dict[str, str], **fields: object) -> str:
    return await make_image(cloud.client, h, b"\0" * 1024, **fields)


async def _boot(cloud: Cloud, h: dict[str, str], image_id: str) -> tuple[int, str]:
    body = {"server": {"name": "vm", "flavorRef": "1", "imageRef": image_id, "networks": "none"}}
    r = await cloud.client.post(
        "/compute/v2.1/servers", json=body, headers={**h, "OpenStack-API-Version": "compute 2.37"}
    )
    return r.status_code, r.text


async def _project(cloud: Cloud, user: str) -> tuple[dict[str, str], str]:
    await cloud.make_user(user, "member", user)
    token = await cloud.token(user, project=user, password=f"pw-{user}")
    admin = await cloud.headers("admin")
    r = await cloud.client.get("/identity/v3/projects", params={"name": user}, headers=admin)
    return {"X-Auth-Token": token}, str(r.json()["projects"][0]["id"])


async def test_a_member_project_boots_a_shared_image_and_a_stranger_does_not_see_it(
    cloud: Cloud,
) -> None:
    owner = await cloud.headers()
    image_id = await _active_image(cloud, owner, visibility="shared")
    alt, alt_id = await _project(cloud, "alt")
    stranger, _ = await _project(cloud, "eve")
    status, text = await _boot(cloud, alt, image_id)
    assert status == 400, text
    assert f"Image {image_id} could not be found." in text
    r = await cloud.client.post(
        f"{IMAGES}/{image_id}/members", json={"member": alt_id}, headers=owner
    )
    assert r.status_code == 200, r.text
    # A member boots it whatever its answer, as it sees it whatever its answer.
    assert (await _boot(cloud, alt, image_id))[0] == 202
    r = await cloud.client.put(
        f"{IMAGES}/{image_id}/members/{alt_id}", json={"status": "accepted"}, headers=alt
    )
    assert r.status_code == 200, r.text
    assert (await _boot(cloud, alt, image_id))[0] == 202
    status, text = await _boot(cloud, stranger, image_id)
    assert status == 400, text
    # A member of an image that is no longer shared boots it no more.
    patch = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
    ops = [{"op": "replace", "path": "/visibility", "value": "private"}]
    r = await cloud.client.patch(f"{IMAGES}/{image_id}", json=ops, headers={**owner, **patch})
    assert r.status_code == 200, r.text
    status, text = await _boot(cloud, alt, image_id)
    assert status == 400, text


async def test_a_deactivated_image_is_refused_at_boot_with_a_400(cloud: Cloud) -> None:
    owner = await cloud.headers()
    image_id = await _active_image(cloud, owner, visibility="private")
    r = await cloud.client.post(f"{IMAGES}/{image_id}/actions/deactivate", headers=owner)
    assert r.status_code == 204, r.text
    status, text = await _boot(cloud, owner, image_id)
    assert status == 400, text
    assert f"Image {image_id} is not active." in text
    r = await cloud.client.post(f"{IMAGES}/{image_id}/actions/reactivate", headers=owner)
    assert r.status_code == 204, r.text
    assert (await _boot(cloud, owner, image_id))[0] == 202
