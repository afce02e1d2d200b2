"""Where image bytes go: the image service's Image v2 API, `PUT {base_url}/v2/images/{id}/file`
(a snapshot's data, from the host that took it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import httpx

from nodeagent.images.source import ImageError, TokenProvider, check_image_id

_CHUNK = 1024 * 1024


class ImageUploadFailed(ImageError):
    """The bytes did not reach the image service (the image stays queued)."""


class ImageUploader(Protocol):
    """Uploads a file as a queued image's data."""

    def upload(self, image_id: str, path: Path) -> int:
        """Sends every byte of `path` as the data of image `image_id`; returns how many.
        ImageUploadFailed when the image service did not take them."""
        ...


class HttpImageUploader:
    """Streams the file to the Image v2 API with the service token (read for every
    upload, so a rotated token is picked up)."""

    def __init__(
        self,
        base_url: str,
        token: TokenProvider,
        *,
        timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._transport = transport

    def upload(self, image_id: str, path: Path) -> int:
        url = f"{self.base_url}/v2/images/{check_image_id(image_id)}/file"
        headers = {"Content-Type": "application/octet-stream"}
        token = self._token()
        if token:
            headers["X-Auth-Token"] = token
        size = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    yield chunk

        try:
            with httpx.Client(timeout=self._timeout, transport=self._transport) as client:
                resp = client.put(url, content=chunks(), headers=headers)
        except httpx.HTTPError as exc:
            raise ImageUploadFailed(f"Image {image_id} could not be uploaded.") from exc
        if resp.status_code == 404:
            raise ImageUploadFailed(f"Image {image_id} is no longer in the image service.")
        if resp.status_code not in (200, 201, 204):
            raise ImageUploadFailed(
                f"The image service answered {resp.status_code} to the upload of image {image_id}."
            )
        return size
