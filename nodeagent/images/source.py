"""Where image bytes come from: the image service over HTTP, or a shared data directory.

A source only streams bytes into a file the caller opened; verifying, caching and naming
are the cache's business (nodeagent.images.cache).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import httpx

# Image ids are UUIDs in practice; anything that could leave a directory is refused so a
# hostile id can never name a file outside the image store or the cache.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CHUNK = 1024 * 1024


class ImageError(Exception):
    """An image could not be made available. `str(err)` is one sentence safe to show a user."""


class ImageNotFound(ImageError):
    """The source has no image with that id."""


class ImageFetchFailed(ImageError):
    """The source has the image but it could not be read (network, permissions, server)."""


def check_image_id(image_id: str) -> str:
    """Returns image_id unchanged when it is safe as a single file name; ImageError if not."""
    if not _SAFE_ID.fullmatch(image_id) or image_id in (".", ".."):
        raise ImageError(f"Image id {image_id!r} is not a valid image id.")
    return image_id


class Sink(Protocol):
    """Anything bytes can be written to (a file, or the cache's hashing writer)."""

    def write(self, data: bytes, /) -> int: ...


@runtime_checkable
class ImageSource(Protocol):
    """Fetches an image's bytes by id."""

    def fetch(self, image_id: str, out: Sink) -> int:
        """Writes every byte of the image to `out` and returns how many were written.

        ImageNotFound when the source has no such image; ImageFetchFailed on any other
        failure (`out` then holds a partial copy the caller must discard).
        """
        ...


class LocalImageSource:
    """Images as files `<root>/<id>`: the all-in-one case, where the agent shares the
    data directory with the image service."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def fetch(self, image_id: str, out: Sink) -> int:
        path = self.root / check_image_id(image_id)
        try:
            written = 0
            with path.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    written += len(chunk)
            return written
        except FileNotFoundError as exc:
            raise ImageNotFound(f"Image {image_id} is not in the image store.") from exc
        except OSError as exc:
            raise ImageFetchFailed(f"Image {image_id} could not be read from the store.") from exc


TokenProvider = Callable[[], str]


class ImageApiClient:
    """A client of the image service's Image v2 API at `base_url` (its /v2 is below it).

    `token` is called for every request, so a rotated token is picked up without a
    restart; an empty token sends no X-Auth-Token header.
    """

    def __init__(
        self,
        base_url: str,
        token: TokenProvider,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._transport = transport

    def _url(self, image_id: str, suffix: str = "") -> str:
        return f"{self.base_url}/v2/images/{check_image_id(image_id)}{suffix}"

    def _headers(self) -> dict[str, str]:
        token = self._token()
        return {"X-Auth-Token": token} if token else {}

    def _client(self) -> httpx.Client:
        return httpx.Client(timeout=self._timeout, transport=self._transport)


class HttpImageSource(ImageApiClient):
    """Downloads: `GET {base_url}/v2/images/{id}/file`."""

    def fetch(self, image_id: str, out: Sink) -> int:
        url = self._url(image_id, "/file")
        headers = self._headers()
        written = 0
        try:
            with self._client() as client, client.stream("GET", url, headers=headers) as resp:
                if resp.status_code == 404:
                    raise ImageNotFound(f"Image {image_id} is not in the image service.")
                if resp.status_code == 204:
                    # Image v2 answers 204 for an image that has no data uploaded yet.
                    raise ImageFetchFailed(f"Image {image_id} has no data uploaded.")
                if resp.status_code != 200:
                    raise ImageFetchFailed(
                        f"The image service answered {resp.status_code} for image {image_id}."
                    )
                for chunk in resp.iter_bytes(_CHUNK):
                    out.write(chunk)
                    written += len(chunk)
        except httpx.HTTPError as exc:
            raise ImageFetchFailed(f"Image {image_id} could not be downloaded.") from exc
        return written


def file_token(path: Path) -> TokenProvider:
    """A token provider reading `path` on every call (empty when the file is absent)."""

    def read() -> str:
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            return ""

    return read
