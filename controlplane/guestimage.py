"""Registers Loom's own images in the image service, idempotently (an existing active image
of the name is reused):

- `loom-tiny` (controlplane.tinyimage), on every `loom up`: a 1 MiB disk that boots;
- `loom-test-guest`, for real guests, laid out as Nova's AMI-style images are: a kernel
  (aki), a ramdisk (ari) and a small whole-disk image (raw) whose `kernel_id`,
  `ramdisk_id` and `os_command_line` properties point the driver at the other two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from controlplane import tinyimage
from controlplane.testimage import build_test_image

IMAGE_NAME = "loom-test-guest"
ROOT_DISK_BYTES = 1024 * 1024
DEFAULT_CMDLINE = "console=ttyS0"


class GuestImageError(RuntimeError):
    """The image could not be registered; the message names the step and HTTP status."""


@dataclass(frozen=True)
class GuestImage:
    id: str
    kernel_id: str
    ramdisk_id: str


def _check(resp: httpx.Response, step: str, *ok: int) -> httpx.Response:
    if resp.status_code not in ok:
        raise GuestImageError(f"{step}: HTTP {resp.status_code} {resp.text[:200]}")
    return resp


def _upload(client: httpx.Client, name: str, fmt: str, data: bytes, **props: str) -> str:
    body: dict[str, Any] = {
        "name": name,
        "disk_format": fmt,
        "container_format": fmt if fmt in ("aki", "ari") else "bare",
        "visibility": "public",
        **props,
    }
    image_id = str(_check(client.post("/v2/images", json=body), f"create {name}", 201).json()["id"])
    _check(
        client.put(
            f"/v2/images/{image_id}/file",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        ),
        f"upload {name}",
        204,
    )
    return image_id


def _active_images(client: httpx.Client, name: str) -> list[dict[str, Any]]:
    found = _check(client.get("/v2/images", params={"name": name}), "list", 200).json()
    return [i for i in found.get("images", []) if i.get("status") == "active"]


def find_guest_image(client: httpx.Client) -> GuestImage | None:
    for image in _active_images(client, IMAGE_NAME):
        if image.get("kernel_id"):
            return GuestImage(image["id"], image["kernel_id"], image.get("ramdisk_id", ""))
    return None


def _image_client(image_url: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=image_url.rstrip("/"), headers={"X-Auth-Token": token}, timeout=60.0
    )


def register_tiny_image(image_url: str, token: str) -> str:
    """The id of the public `loom-tiny` image in the image service at image_url (…/image),
    uploaded when missing."""
    with _image_client(image_url, token) as client:
        existing = _active_images(client, tinyimage.IMAGE_NAME)
        if existing:
            return str(existing[0]["id"])
        return _upload(client, tinyimage.IMAGE_NAME, "raw", tinyimage.disk_image())


def register_guest_image(image_url: str, token: str, build_dir: Path) -> GuestImage:
    """The test guest's root image in the image service at image_url (…/image), built from
    Debian packages into build_dir when missing."""
    with _image_client(image_url, token) as client:
        existing = find_guest_image(client)
        if existing is not None:
            return existing
        built = build_test_image(build_dir)
        kernel = _upload(client, f"{IMAGE_NAME}-kernel", "aki", built.kernel.read_bytes())
        ramdisk = _upload(client, f"{IMAGE_NAME}-ramdisk", "ari", built.initrd.read_bytes())
        root = _upload(
            client,
            IMAGE_NAME,
            "raw",
            b"\0" * ROOT_DISK_BYTES,
            kernel_id=kernel,
            ramdisk_id=ramdisk,
            os_command_line=DEFAULT_CMDLINE,
        )
        return GuestImage(root, kernel, ramdisk)
