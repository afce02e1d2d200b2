"""Where image bytes go: the image service's Image v2 API, `PUT {base_url}/v2/images/{id}/file`
(a snapshot's data, from the host that took it); and the images a host looks up and deletes
to rotate an instance's backups."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx

from nodeagent.images.source import ImageApiClient, ImageError

_CHUNK = 1024 * 1024
# The image service's largest page.
_PAGE = 1000


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

    def status(self, image_id: str) -> str | None:
        """The image's status (queued, saving, active, ...), None when it is gone.
        ImageUploadFailed when the image service did not answer."""
        ...

    def backups(self, instance_id: str, backup_type: str) -> list[str]:
        """The ids of the instance's backups of this type (images whose properties are
        image_type=backup, instance_uuid and backup_type), newest first, whatever their
        status. ImageUploadFailed when the image service did not answer."""
        ...


class HttpImageUploader(ImageApiClient):
    """Uploads (`PUT {base_url}/v2/images/{id}/file`, the file streamed), deletions
    (`DELETE {base_url}/v2/images/{id}`) and backup lookups (`GET {base_url}/v2/images`
    filtered by property, every page), with the service token. Uploads may be long: give
    a `timeout` to match."""

    def status(self, image_id: str) -> str | None:
        try:
            with self._client() as client:
                resp = client.get(self._url(image_id), headers=self._headers())
            if resp.status_code == 404:
                return None
            if resp.status_code != 200:
                raise ImageUploadFailed(
                    f"The image service answered {resp.status_code} for image {image_id}."
                )
            return str(resp.json()["status"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise ImageUploadFailed(f"Image {image_id} could not be looked up.") from exc

    def backups(self, instance_id: str, backup_type: str) -> list[str]:
        query = {
            "image_type": "backup",
            "instance_uuid": instance_id,
            "backup_type": backup_type,
            "sort_key": "created_at",
            "sort_dir": "desc",
            "limit": str(_PAGE),
        }
        path: str | None = f"/v2/images?{urlencode(query)}"
        ids: list[str] = []
        try:
            with self._client() as client:
                while path:
                    resp = client.get(f"{self.base_url}{path}", headers=self._headers())
                    if resp.status_code != 200:
                        raise ImageUploadFailed(
                            f"The image service answered {resp.status_code} to the list of"
                            f" instance {instance_id}'s backups."
                        )
                    page: dict[str, Any] = resp.json()
                    ids.extend(str(i["id"]) for i in page.get("images", []))
                    path = page.get("next")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise ImageUploadFailed(
                f"Instance {instance_id}'s backups could not be listed."
            ) from exc
        return ids

    def delete(self, image_id: str) -> None:
        try:
            with self._client() as client:
                resp = client.delete(self._url(image_id), headers=self._headers())
        except httpx.HTTPError as exc:
            raise ImageUploadFailed(f"Image {image_id} could not be deleted.") from exc
        if resp.status_code not in (204, 404):
            raise ImageUploadFailed(
                f"The image service answered {resp.status_code} to deleting image {image_id}."
            )

    def upload(self, image_id: str, path: Path) -> int:
        headers = {"Content-Type": "application/octet-stream", **self._headers()}
        size = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    yield chunk

        try:
            with self._client() as client:
                resp = client.put(self._url(image_id, "/file"), content=chunks(), headers=headers)
        except httpx.HTTPError as exc:
            raise ImageUploadFailed(f"Image {image_id} could not be uploaded.") from exc
        if resp.status_code == 404:
            raise ImageUploadFailed(f"Image {image_id} is no longer in the image service.")
        if resp.status_code not in (200, 201, 204):
            raise ImageUploadFailed(
                f"The image service answered {resp.status_code} to the upload of image {image_id}."
            )
        return size
