"""The compute API's image proxy (up to 2.35): the image service's images in the compute
API's shape, their metadata as the image's properties, gone from 2.36."""

from __future__ import annotations

from tests.gateway.conftest import Cloud

IMAGES = "/compute/v2.1/images"


async def _image(cloud: Cloud, user: str = "demo", **extra: object) -> str:
    body = {"name": "proxied", "disk_format": "raw", "container_format": "bare", **extra}
    r = await cloud.client.post("/image/v2/images", json=body, headers=await cloud.headers(user))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_images_list_show_and_delete_in_the_compute_shape(cloud: Cloud) -> None:
    image_id = await _image(cloud, min_ram=64)
    h = await cloud.headers(version="2.35")
    brief = (await cloud.client.get(IMAGES, headers=h)).json()["images"]
    mine = next(i for i in brief if i["id"] == image_id)
    assert set(mine) == {"id", "name", "links"}
    assert {link["rel"] for link in mine["links"]} == {"self", "bookmark", "alternate"}

    detail = (await cloud.client.get(f"{IMAGES}/detail", headers=h)).json()["images"]
    shown = next(i for i in detail if i["id"] == image_id)
    assert (shown["status"], shown["progress"], shown["minRam"]) == ("SAVING", 25, 64)
    assert shown["metadata"] == {}
    assert shown["created"].endswith("Z")
    r = await cloud.client.get(f"{IMAGES}/{image_id}", headers=h)
    assert r.status_code == 200
    assert r.json()["image"]["id"] == image_id
    big = (await cloud.client.get(f"{IMAGES}/detail?minRam=128", headers=h)).json()["images"]
    assert image_id not in [i["id"] for i in big]

    assert (await cloud.client.delete(f"{IMAGES}/{image_id}", headers=h)).status_code == 204
    assert (await cloud.client.get(f"{IMAGES}/{image_id}", headers=h)).status_code == 404


async def test_image_metadata_is_the_image_s_properties(cloud: Cloud) -> None:
    image_id = await _image(cloud)
    h = await cloud.headers(version="2.35")
    meta = f"{IMAGES}/{image_id}/metadata"
    r = await cloud.client.post(meta, json={"metadata": {"os_distro": "cirros"}}, headers=h)
    assert (r.status_code, r.json()) == (200, {"metadata": {"os_distro": "cirros"}})
    r = await cloud.client.put(meta, json={"metadata": {"a": "1", "b": "2"}}, headers=h)
    assert r.json() == {"metadata": {"a": "1", "b": "2"}}
    r = await cloud.client.put(f"{meta}/a", json={"meta": {"a": "3"}}, headers=h)
    assert r.json() == {"meta": {"a": "3"}}
    mismatch = await cloud.client.put(f"{meta}/a", json={"meta": {"c": "3"}}, headers=h)
    assert mismatch.status_code == 400
    assert (await cloud.client.delete(f"{meta}/b", headers=h)).status_code == 204
    assert (await cloud.client.get(f"{meta}/b", headers=h)).status_code == 404
    glance = await cloud.client.get(f"/image/v2/images/{image_id}", headers=h)
    assert glance.json()["a"] == "3"
    assert "b" not in glance.json()


async def test_image_proxy_routes_are_gone_from_2_36(cloud: Cloud) -> None:
    h = await cloud.headers(version="2.36")
    r = await cloud.client.get(IMAGES, headers=h)
    assert r.status_code == 404
    assert "itemNotFound" in r.json()


async def test_only_an_image_s_owner_changes_it_and_another_project_s_image_is_not_found(
    cloud: Cloud,
) -> None:
    public = await _image(cloud, "admin", visibility="public")
    private = await _image(cloud, "admin")
    h = await cloud.headers(version="2.35")
    r = await cloud.client.post(
        f"{IMAGES}/{public}/metadata", json={"metadata": {"x": "y"}}, headers=h
    )
    assert r.status_code == 403
    assert (await cloud.client.delete(f"{IMAGES}/{public}", headers=h)).status_code == 403
    assert (await cloud.client.get(f"{IMAGES}/{private}", headers=h)).status_code == 404
    assert (await cloud.client.get(f"{IMAGES}/not-a-uuid", headers=h)).status_code == 404


async def test_a_reader_of_the_owning_project_may_look_at_its_image_but_not_change_it(
    cloud: Cloud,
) -> None:
    image_id = await _image(cloud)
    await cloud.make_user("rita", "reader", "demo")
    h = {
        "X-Auth-Token": await cloud.token("rita", project="demo", password="pw-rita"),
        "OpenStack-API-Version": "compute 2.35",
    }
    meta = f"{IMAGES}/{image_id}/metadata"
    assert (await cloud.client.get(f"{IMAGES}/{image_id}", headers=h)).status_code == 200
    refused = [
        await cloud.client.post(meta, json={"metadata": {"x": "y"}}, headers=h),
        await cloud.client.put(meta, json={"metadata": {"x": "y"}}, headers=h),
        await cloud.client.put(f"{meta}/x", json={"meta": {"x": "y"}}, headers=h),
        await cloud.client.delete(f"{meta}/x", headers=h),
        await cloud.client.delete(f"{IMAGES}/{image_id}", headers=h),
    ]
    assert [r.status_code for r in refused] == [403] * 5
    # Not even an invalid body is looked at: the policy comes first.
    r = await cloud.client.post(meta, json={}, headers=h)
    assert r.status_code == 403
    owner = await cloud.headers(version="2.35")
    r = await cloud.client.get(f"{IMAGES}/{image_id}", headers=owner)
    assert (r.status_code, r.json()["image"]["metadata"]) == (200, {})


async def test_images_filter_by_their_server_given_as_an_id_or_a_link(cloud: Cloud) -> None:
    sid = "4f7a1c2e-0000-4000-8000-00000000beef"
    snap = await _image(cloud, instance_uuid=sid, image_type="snapshot")
    other = await _image(cloud)
    h = await cloud.headers(version="2.35")
    for ref in (sid, f"http://cloud/compute/v2.1/servers/{sid}", f"http://cloud/servers/{sid}"):
        listed = (await cloud.client.get(IMAGES, params={"server": ref}, headers=h)).json()
        ids = [i["id"] for i in listed["images"]]
        assert snap in ids, ref
        assert other not in ids, ref


async def test_an_image_has_no_tasks_and_an_unseen_image_is_not_found(cloud: Cloud) -> None:
    image_id = await _image(cloud)
    r = await cloud.client.get(f"/image/v2/images/{image_id}/tasks", headers=await cloud.headers())
    assert (r.status_code, r.json()) == (200, {"tasks": []})
    private = await _image(cloud, "admin")
    r = await cloud.client.get(f"/image/v2/images/{private}/tasks", headers=await cloud.headers())
    assert r.status_code == 404
