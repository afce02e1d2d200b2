"""Guest disks made with qemu-img: inspection of cached bases and qcow2 overlays on them."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from nodeagent.images.source import ImageError

GIB = 1024**3

# Formats a root disk may have in the cache. Image v2's "ami" is a raw disk image.
DISK_FORMATS = {"raw": "raw", "qcow2": "qcow2", "ami": "raw"}


class DiskError(ImageError):
    """A disk could not be inspected or made."""


@dataclass(frozen=True)
class DiskInfo:
    """What qemu-img says of a disk image."""

    format: str
    virtual_size: int
    backing_file: str


def _qemu_img(*args: str, timeout: float = 120.0) -> str:
    try:
        proc = subprocess.run(
            ["qemu-img", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DiskError("qemu-img could not be run.") from exc
    if proc.returncode != 0:
        raise DiskError(f"qemu-img {args[0]} failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout


def disk_info(path: Path, fmt: str) -> DiskInfo:
    """qemu-img's view of `path` read as `fmt` (never probed: a declared format is trusted
    only as far as it is named, so a raw image cannot pose as qcow2 with a host backing file).

    `--force-share` lets this read a disk a running guest holds open.
    """
    out = _qemu_img("info", "--force-share", "--output=json", "-f", fmt, str(path))
    data = json.loads(out)
    return DiskInfo(
        format=str(data.get("format", fmt)),
        virtual_size=int(data.get("virtual-size", 0)),
        backing_file=str(data.get("backing-filename", "")),
    )


def create_overlay(base: Path, base_format: str, overlay: Path, size_bytes: int = 0) -> DiskInfo:
    """Creates `overlay` as a qcow2 copy-on-write disk over `base`.

    Its virtual size is `size_bytes` when that is larger than the base's, the base's size
    otherwise; DiskError when `size_bytes` is non-zero and smaller than the base (the
    guest would lose the end of its disk). Returns the overlay's DiskInfo.
    """
    base_info = disk_info(base, base_format)
    if 0 < size_bytes < base_info.virtual_size:
        raise DiskError(
            f"The flavor's root disk ({size_bytes // GIB} GiB) is smaller than the image "
            f"({-(-base_info.virtual_size // GIB)} GiB)."
        )
    args = ["create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base), str(overlay)]
    if size_bytes > base_info.virtual_size:
        args.append(str(size_bytes))
    _qemu_img(*args)
    return disk_info(overlay, "qcow2")


def create_blank(path: Path, size_bytes: int) -> DiskInfo:
    """Creates an empty qcow2 disk of `size_bytes` (ephemeral and swap disks)."""
    _qemu_img("create", "-q", "-f", "qcow2", str(path), str(size_bytes))
    return disk_info(path, "qcow2")


def export_qcow2(src: Path, src_format: str, dest: Path, timeout: float = 3600.0) -> DiskInfo:
    """Writes `src` (read as `src_format`, never probed) as one standalone qcow2 file at
    `dest`: an overlay's backing chain is folded in. `--force-share` lets it read a disk a
    guest holds open (the caller pauses a running guest first, so the copy is whole)."""
    _qemu_img(
        "convert",
        "--force-share",
        "-q",
        "-f",
        src_format,
        "-O",
        "qcow2",
        str(src),
        str(dest),
        timeout=timeout,
    )
    return disk_info(dest, "qcow2")
