"""Builds Loom's test guest image from Debian packages: a kernel and a busybox initramfs.

The kernel comes from the `linux-image-*-amd64` package (downloaded with apt-get, unpacked
with dpkg-deb, never installed); the initramfs holds `busybox-static` and an init that
prints MARKER on the serial console. `loom_poweroff=N` on the kernel command line makes
the guest power itself off N seconds after boot (tests use it to watch power-state sync).
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

MARKER = "LOOM-TEST-GUEST-READY"

INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo "{MARKER}"
echo "loom test guest: $(uname -r) $(cat /proc/cmdline)"
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    loom_poweroff=*)
      secs="${{arg#loom_poweroff=}}"
      (sleep "$secs"; echo "powering off"; poweroff -f) & ;;
  esac
done
while true; do sleep 3600; done
"""


class TestImageError(RuntimeError):
    """The image could not be built; the message says which step failed."""


@dataclass(frozen=True)
class TestImage:
    kernel: Path
    initrd: Path


def _run(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise TestImageError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def _kernel_package() -> str:
    out = _run(["apt-cache", "depends", "linux-image-amd64"])
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-") and line.endswith("-amd64"):
            return line.split(": ", 1)[1]
    raise TestImageError("no linux-image-*-amd64 package found; run apt-get update")


def _busybox() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        p = Path(candidate)
        if p.exists() and "statically linked" in _run(["file", "-L", str(p)]):
            return p
    raise TestImageError("a static busybox is needed: apt-get install busybox-static")


def _cpio_newc(root: Path) -> bytes:
    """A newc cpio archive of root, made in Python so no cpio flags differ by platform."""
    buf = io.BytesIO()
    ino = 1

    def entry(name: str, mode: int, data: bytes, nlink: int = 1) -> None:
        nonlocal ino
        namez = name.encode() + b"\0"
        header = "070701" + "".join(
            f"{v:08x}" for v in (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(namez), 0)
        )
        ino += 1
        buf.write(header.encode() + namez)
        buf.write(b"\0" * ((4 - (110 + len(namez)) % 4) % 4))
        buf.write(data)
        buf.write(b"\0" * ((4 - len(data) % 4) % 4))

    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        if str(rel_dir) != ".":
            entry(str(rel_dir), stat.S_IFDIR | 0o755, b"", 2)
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            mode = path.stat().st_mode
            entry(str(rel_dir / fname).lstrip("./") or fname, mode, path.read_bytes())
    entry("TRAILER!!!", 0, b"")
    return buf.getvalue()


def build_test_image(out_dir: Path, *, force: bool = False) -> TestImage:
    """Writes vmlinuz and initrd.img into out_dir; a no-op when both exist (unless force)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel, initrd = out_dir / "vmlinuz", out_dir / "initrd.img"
    if kernel.exists() and initrd.exists() and not force:
        return TestImage(kernel, initrd)
    with tempfile.TemporaryDirectory(prefix="loom-testimage-") as tmp_s:
        tmp = Path(tmp_s)
        pkg = _kernel_package()
        _run(["apt-get", "download", pkg], cwd=tmp)
        debs = sorted(tmp.glob("linux-image-*.deb"))
        if not debs:
            raise TestImageError(f"apt-get download {pkg} produced no .deb")
        unpacked = tmp / "pkg"
        _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)])
        vmlinuz = sorted((unpacked / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise TestImageError(f"{debs[0].name} holds no /boot/vmlinuz-*")
        shutil.copyfile(vmlinuz[0], kernel)

        root = tmp / "initramfs"
        (root / "bin").mkdir(parents=True)
        shutil.copyfile(_busybox(), root / "bin" / "busybox")
        (root / "bin" / "busybox").chmod(0o755)
        (root / "init").write_text(INIT_SCRIPT)
        (root / "init").chmod(0o755)
        initrd.write_bytes(gzip.compress(_cpio_newc(root), compresslevel=6))
    return TestImage(kernel, initrd)
