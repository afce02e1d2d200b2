"""The per-host image cache: every image downloaded once, verified, then shared.

Layout under the cache root:

    <root>/<image id>            verified images (read-only bases, kernels, ramdisks)
    <root>/.tmp/<id>.<pid>.<n>   downloads in progress
    <root>/.locks/<id>.lock      one lock file per image

Concurrency. A download and a removal of one image happen only while holding both that
image's thread lock (threads of this process) and an exclusive `flock` on its lock file
(other processes: two agents sharing the cache, or a restarted agent overlapping the old
one). A download goes to a temp file on the same file system and is renamed into place
after verification, so a reader never sees a partial or unverified image, even after a
crash: what is left in `.tmp` is only ever a temp file, swept under the same lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from controlplane.runtime import tracing
from nodeagent.images.disks import disk_info
from nodeagent.images.source import ImageError, ImageSource, check_image_id

log = logging.getLogger(__name__)

# Image v2's os_hash_algo is sha512 by default; these are the algorithms it may name.
_HASH_ALGOS = {"sha512", "sha384", "sha256", "sha1", "md5"}


class ImageVerificationFailed(ImageError):
    """The downloaded bytes do not match the image's recorded hash, or are unsafe to use."""


@dataclass(frozen=True)
class ImageWanted:
    """One image a build needs, as the control plane describes it."""

    image_id: str
    disk_format: str
    hash_value: str = ""
    hash_algo: str = "sha512"


class _HashingWriter:
    def __init__(self, f: Callable[[bytes], int], algo: str) -> None:
        self._write = f
        self.hasher = hashlib.new(algo)
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.hasher.update(data)
        self.size += len(data)
        return self._write(data)


class ImageCache:
    """Verified images under `root`, fetched from `source` on first use."""

    def __init__(self, root: Path, source: ImageSource) -> None:
        self.root = root
        self.source = source
        self._tmp = root / ".tmp"
        self._locks_dir = root / ".locks"
        self._guard = threading.Lock()
        self._thread_locks: dict[str, threading.Lock] = {}
        self._seq = itertools.count()
        self.downloads = 0  # how many fetches this cache made (tests and logs read it)

    def path_of(self, image_id: str) -> Path:
        """Where the image lives once cached (it may not be there yet)."""
        return self.root / check_image_id(image_id)

    @contextlib.contextmanager
    def _locked(self, image_id: str) -> Iterator[None]:
        with self._guard:
            tlock = self._thread_locks.setdefault(image_id, threading.Lock())
        with tlock:
            self._locks_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._locks_dir / f"{image_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock

    def ensure(self, want: ImageWanted) -> Path:
        """The cached image's path; downloads and verifies it first when it is not cached.

        On return the file is complete, matches `want.hash_value` (when one is given) and,
        for qcow2, has no backing file; its modification time records this use. Raises an
        ImageError subclass otherwise and leaves no file for the image behind.
        """
        final = self.path_of(want.image_id)
        with self._locked(want.image_id):
            if final.exists():
                os.utime(final)
                return final
            with tracing.span("agent image download", {"loom.image_id": want.image_id}):
                self._download(want, final)
            return final

    def _download(self, want: ImageWanted, final: Path) -> None:
        algo = (want.hash_algo or "sha512").lower()
        if algo not in _HASH_ALGOS:
            raise ImageVerificationFailed(
                f"Image {want.image_id} names an unknown hash algorithm {algo!r}."
            )
        self._tmp.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp / f"{want.image_id}.{os.getpid()}.{next(self._seq)}"
        started = time.monotonic()
        try:
            with tmp.open("xb") as f:
                sink = _HashingWriter(f.write, algo)
                self.source.fetch(want.image_id, sink)
                f.flush()
                os.fsync(f.fileno())
            self.downloads += 1
            digest = sink.hasher.hexdigest()
            if want.hash_value and digest != want.hash_value.lower():
                raise ImageVerificationFailed(
                    f"Image {want.image_id} failed verification: its {algo} digest does not "
                    "match the image's recorded hash."
                )
            if not want.hash_value:
                log.warning("image has no recorded hash; not verified", extra={"image": want})
            if want.disk_format == "qcow2" and disk_info(tmp, "qcow2").backing_file:
                # A backing file inside a tenant's image would make qemu read a host file.
                raise ImageVerificationFailed(
                    f"Image {want.image_id} is a qcow2 with a backing file, which is not allowed."
                )
            tmp.chmod(0o644)
            os.replace(tmp, final)
            _fsync_dir(self.root)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        log.info(
            "image cached",
            extra={
                "image": want.image_id,
                "bytes": sink.size,
                "seconds": round(time.monotonic() - started, 3),
            },
        )

    def cached(self) -> set[str]:
        """Ids of the images in the cache now."""
        if not self.root.is_dir():
            return set()
        return {p.name for p in self.root.iterdir() if p.is_file() and not p.name.startswith(".")}

    def prune(self, max_age_s: float, in_use: Callable[[], set[str]]) -> list[str]:
        """Removes images no instance uses that were last used more than max_age_s ago.

        `in_use` is asked again under each image's lock, so an image a build has claimed
        meanwhile stays. Images in use get their last-use time refreshed, so the age of an
        image counts from the last time an instance used it. Leftover temp files of
        interrupted downloads are swept too. Returns the removed ids, sorted.
        """
        removed: list[str] = []
        for image_id in sorted(self.cached() | self._partial_ids()):
            with self._locked(image_id):
                for stale in self._partials(image_id):
                    stale.unlink(missing_ok=True)
                path = self.root / image_id
                if not path.exists():
                    continue
                if image_id in in_use():
                    os.utime(path)
                    continue
                if time.time() - path.stat().st_mtime > max_age_s:
                    path.unlink()
                    removed.append(image_id)
        if removed:
            log.info("unused images removed from the cache", extra={"images": removed})
        return removed

    def _partial_ids(self) -> set[str]:
        if not self._tmp.is_dir():
            return set()
        return {p.name.rsplit(".", 2)[0] for p in self._tmp.iterdir()}

    def _partials(self, image_id: str) -> list[Path]:
        if not self._tmp.is_dir():
            return []
        return [p for p in self._tmp.iterdir() if p.name.rsplit(".", 2)[0] == image_id]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
