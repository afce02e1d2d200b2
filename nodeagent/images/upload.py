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
    """The image service did not take the bytes (or the deletion)."""


class ImageUploader(Protocol):
    """Uploads a file as a queued image's data, and deletes images the host made."""

    def upload(self, image_id: str, path: Path) -> int:
        """Sends every byte of `path` as the data of image `image_id`; returns how many.
        ImageUploadFailed when the image service did not take them."""
        ...

    def delete(self, image_id: str) -> None:
        """Deletes image `image_id` and its data; succeeds if it is already gone.
        ImageUploadFailed when the image service refused."""
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

    def _headers(self) -> dict[str, str]:
        token = self._token()
        return {"X-Auth-Token": token} if token else {}

    def delete(self, image_id: str) -> None:
        url = f"{self.base_url}/v2/images/{check_image_id(image_id)}"
        try:
            with httpx.Client(timeout=30.0, transport=self._transport) as client:
                resp = client.delete(url, headers=self._headers())
        except httpx.HTTPError as exc:
            raise ImageUploadFailed(f"Image {image_id} could not be deleted.") from exc
        if resp.status_code not in (204, 404):
            raise ImageUploadFailed(
                f"The image service answered {resp.status_code} to deleting image {image_id}."
            )

    def upload(self, image_id: str, path: Path) -> int:
        url = f"{self.base_url}/v2/images/{check_image_id(image_id)}/file"
        headers = {"Content-Type": "application/octet-stream", **self._headers()}
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
