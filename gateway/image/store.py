"""The image store: image bytes as files in the data directory, written atomically
with their MD5 (Glance's legacy checksum) and SHA-512 (os_hash_value)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1024 * 1024
_SAFE_ID = re.compile(r"^[0-9a-fA-F-]{1,64}$")


@dataclass(frozen=True)
class StoredImage:
    location: str
    size: int
    checksum: str
    os_hash_algo: str
    os_hash_value: str


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, image_id: str) -> Path:
        if not _SAFE_ID.match(image_id):
            raise ValueError("image ids are UUIDs")
        return self.root / image_id

    async def write(self, image_id: str, chunks: AsyncIterator[bytes]) -> StoredImage:
        """Streams the bytes to a temporary file and renames it into place when complete,
        so a broken upload never leaves a half image behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self._path(image_id)
        tmp = final.with_name(f".{image_id}.{os.getpid()}.part")
        md5 = hashlib.md5(usedforsecurity=False)
        sha512 = hashlib.sha512()
        size = 0
        fh = await asyncio.to_thread(open, tmp, "wb")
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                md5.update(chunk)
                sha512.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(fh.write, chunk)
            await asyncio.to_thread(fh.flush)
            await asyncio.to_thread(os.fsync, fh.fileno())
        except BaseException:
            fh.close()
            tmp.unlink(missing_ok=True)
            raise
        fh.close()
        await asyncio.to_thread(os.replace, tmp, final)
        return StoredImage(
            location=final.as_uri(),
            size=size,
            checksum=md5.hexdigest(),
            os_hash_algo="sha512",
            os_hash_value=sha512.hexdigest(),
        )

    def path_of(self, location: str) -> Path | None:
        """The file behind a location this store wrote; None for anything else."""
        prefix = self.root.resolve().as_uri() + "/"
        if not location.startswith(prefix):
            return None
        path = self._path(location[len(prefix) :])
        return path if path.exists() else None

    async def read(self, path: Path) -> AsyncIterator[bytes]:
        fh = await asyncio.to_thread(open, path, "rb")
        try:
            while chunk := await asyncio.to_thread(fh.read, _CHUNK):
                yield chunk
        finally:
            fh.close()

    def delete(self, location: str) -> None:
        path = self.path_of(location)
        if path is not None:
            path.unlink(missing_ok=True)
