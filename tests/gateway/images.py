"""Images made through the Image API for the gateway's tests."""

from __future__ import annotations

import httpx

IMAGES = "/image/v2/images"
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}


async def make_image(
    client: httpx.AsyncClient, h: dict[str, str], data: bytes = b"", **fields: object
) -> str:
    """A raw, bare image with `fields`; with `data` uploaded (so it is active) when given."""
    r = await client.post(
        IMAGES, json={"disk_format": "raw", "container_format": "bare", **fields}, headers=h
    )
    assert r.status_code == 201, r.text
    image_id = str(r.json()["id"])
    if data:
        r = await client.put(
            f"{IMAGES}/{image_id}/file",
            content=data,
            headers={**h, "Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 204, r.text
    return image_id
