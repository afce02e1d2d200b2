"""Image v2: create, upload, download, patch, delete, filters and visibility."""

from __future__ import annotations

import hashlib

from tests.gateway.conftest import Cloud
from tests.gateway.shapes import assert_shape

IMAGES = "/image/v2/images"
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}


async def _image(cloud: Cloud, h: dict[str, str], **fields: object) -> dict[str, object]:
    r = await cloud.client.post(
        IMAGES, json={"disk_format": "raw", "container_format": "bare", **fields}, headers=h
    )
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


async def test_the_image_root_lists_v2_versions(cloud: Cloud) -> None:
    r = await cloud.client.get("/image")
    assert r.status_code == 300
    assert r.json()["versions"][0] == {
        "id": "v2.9",
        "status": "CURRENT",
        "links": [{"rel": "self", "href": "http://loom.test/image/v2/"}],
    }


async def test_an_upload_activates_the_image_with_its_hashes_and_downloads_back(
    cloud: Cloud,
) -> None:
    h = await cloud.headers()
    image = await _image(cloud, h, name="cirros", os_distro="cirros")
    assert_shape("image", image)
    assert (image["status"], image["os_distro"]) == ("queued", "cirros")
    data = b"\x00\x01loom" * 50_000
    put = await cloud.client.put(
        f"{IMAGES}/{image['id']}/file",
        content=data,
        headers={**h, "Content-Type": "application/octet-stream"},
    )
    assert put.status_code == 204
    shown = (await cloud.client.get(f"{IMAGES}/{image['id']}", headers=h)).json()
    assert_shape("image", shown)
    assert (shown["status"], shown["size"]) == ("active", len(data))
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    assert (shown["os_hash_algo"], shown["os_hash_value"]) == (
        "sha512",
        hashlib.sha512(data).hexdigest(),
    )
    got = await cloud.client.get(f"{IMAGES}/{image['id']}/file", headers=h)
    assert got.content == data
    assert got.headers["content-md5"] == shown["checksum"]
    again = await cloud.client.put(f"{IMAGES}/{image['id']}/file", content=b"x", headers=h)
    assert again.status_code == 409


async def test_a_patch_renames_sets_and_removes_properties(cloud: Cloud) -> None:
    h = await cloud.headers()
    image = await _image(cloud, h, name="a", flavour="x")
    ops = [
        {"op": "replace", "path": "/name", "value": "b"},
        {"op": "add", "path": "/hw_disk_bus", "value": "virtio"},
        {"op": "remove", "path": "/flavour"},
        {"op": "replace", "path": "/tags", "value": ["t1", "t2"]},
    ]
    r = await cloud.client.patch(f"{IMAGES}/{image['id']}", json=ops, headers={**h, **PATCH})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["name"], body["hw_disk_bus"], body["tags"]) == ("b", "virtio", ["t1", "t2"])
    assert "flavour" not in body


async def test_a_v2_0_patch_names_each_operation_by_its_verb(cloud: Cloud) -> None:
    h = await cloud.headers()
    image = await _image(cloud, h, name="a", flavour="x")
    ops = [
        {"replace": "/name", "value": "b"},
        {"add": "/hw_disk_bus", "value": "virtio"},
        {"remove": "/flavour"},
    ]
    v20 = {"Content-Type": "application/openstack-images-v2.0-json-patch"}
    r = await cloud.client.patch(f"{IMAGES}/{image['id']}", json=ops, headers={**h, **v20})
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["hw_disk_bus"]) == ("b", "virtio")
    assert "flavour" not in r.json()
    both = [{"replace": "/name", "add": "/x", "value": "c"}]
    r = await cloud.client.patch(f"{IMAGES}/{image['id']}", json=both, headers={**h, **v20})
    assert r.status_code == 400


async def test_a_patch_needs_the_json_patch_media_type(cloud: Cloud) -> None:
    h = await cloud.headers()
    image = await _image(cloud, h, name="a")
    r = await cloud.client.patch(f"{IMAGES}/{image['id']}", json=[], headers=h)
    assert r.status_code == 415


async def test_read_only_attributes_cannot_be_set(cloud: Cloud) -> None:
    r = await cloud.client.post(
        IMAGES, json={"name": "a", "status": "active"}, headers=await cloud.headers()
    )
    assert r.status_code == 403


async def test_bad_image_fields_are_400(cloud: Cloud) -> None:
    h = await cloud.headers()
    for body in (
        {"disk_format": "floppy"},
        {"min_ram": -1},
        {"visibility": "everyone"},
        {"custom": 5},
    ):
        r = await cloud.client.post(IMAGES, json=body, headers=h)
        assert r.status_code == 400, body


async def test_lists_filter_and_page_with_next_links(cloud: Cloud) -> None:
    h = await cloud.headers()
    ids = [str((await _image(cloud, h, name=f"img-{i}"))["id"]) for i in range(3)]
    page = (await cloud.client.get(f"{IMAGES}?limit=2", headers=h)).json()
    assert len(page["images"]) == 2
    assert page["next"].startswith("/v2/images?")
    rest = (await cloud.client.get("/image" + page["next"], headers=h)).json()
    assert len(rest["images"]) == 1
    assert "next" not in rest
    assert {i["id"] for i in page["images"] + rest["images"]} == set(ids)
    named = (await cloud.client.get(f"{IMAGES}?name=img-1", headers=h)).json()
    assert [i["name"] for i in named["images"]] == ["img-1"]
    chosen = (await cloud.client.get(f"{IMAGES}?id=in:{ids[0]},{ids[2]}", headers=h)).json()
    assert {i["id"] for i in chosen["images"]} == {ids[0], ids[2]}
    # A parameter the list does not define filters on the property of that name.
    none = await cloud.client.get(f"{IMAGES}?bogus=1", headers=h)
    assert (none.status_code, none.json()["images"]) == (200, [])
    refused = await cloud.client.get(f"{IMAGES}?disk_format=raw", headers=h)
    assert refused.status_code == 400
    assert "disk_format is not supported" in refused.text


async def test_extra_parameters_filter_images_by_their_properties_exactly(cloud: Cloud) -> None:
    h = await cloud.headers()
    daily = [
        str((await _image(cloud, h, name=f"b-{i}", image_type="backup", backup_type="daily"))["id"])
        for i in range(2)
    ]
    await _image(cloud, h, name="w", image_type="backup", backup_type="weekly")
    await _image(cloud, h, name="s", image_type="snapshot", backup_type="daily")
    url = f"{IMAGES}?image_type=backup&backup_type=daily&sort_key=created_at&sort_dir=asc"
    got = (await cloud.client.get(url, headers=h)).json()["images"]
    assert [i["id"] for i in got] == daily
    assert (await cloud.client.get(f"{IMAGES}?backup_type=dail", headers=h)).json()["images"] == []
    twice = await cloud.client.get(f"{IMAGES}?backup_type=daily&backup_type=weekly", headers=h)
    assert twice.status_code == 400


async def test_a_private_image_is_invisible_to_another_project(cloud: Cloud) -> None:
    h = await cloud.headers()
    image = await _image(cloud, h, name="mine", visibility="private")
    await cloud.make_user("eve", "member", "other")
    eve = {"X-Auth-Token": await cloud.token("eve", project="other", password="pw-eve")}
    assert (await cloud.client.get(f"{IMAGES}/{image['id']}", headers=eve)).status_code == 404
    assert (await cloud.client.get(IMAGES, headers=eve)).json()["images"] == []
    assert (await cloud.client.delete(f"{IMAGES}/{image['id']}", headers=eve)).status_code == 404


async def test_only_an_admin_publishes_images(cloud: Cloud) -> None:
    r = await cloud.client.post(
        IMAGES, json={"name": "p", "visibility": "public"}, headers=await cloud.headers()
    )
    assert r.status_code == 403
    ok = await cloud.client.post(
        IMAGES, json={"name": "p", "visibility": "public"}, headers=await cloud.headers("admin")
    )
    assert ok.status_code == 201


async def test_deleting_an_image_removes_its_bytes(cloud: Cloud) -> None:
    h = await cloud.headers()
    image = await _image(cloud, h, name="gone")
    await cloud.client.put(f"{IMAGES}/{image['id']}/file", content=b"bytes", headers=h)
    store = cloud.catalog.cfg.data_path / "images"
    assert len(list(store.iterdir())) == 1
    assert (await cloud.client.delete(f"{IMAGES}/{image['id']}", headers=h)).status_code == 204
    assert list(store.iterdir()) == []
    assert (await cloud.client.get(f"{IMAGES}/{image['id']}", headers=h)).status_code == 404
