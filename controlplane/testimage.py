"""Builds Loom's test guest image from Debian packages: a kernel and a busybox initramfs.

The kernel comes from the `linux-image-*-amd64` package (downloaded with apt-get, unpacked
with dpkg-deb, never installed); the initramfs holds `busybox-static`, the kernel modules
for a virtio NIC, an IDE cdrom and ISO 9660 (Debian builds them as modules), and an init
that prints MARKER on the serial console. `loom_poweroff=N` on the kernel command line
makes the guest power itself off N seconds after boot (tests use it to watch power-state
sync).

After MARKER the guest reads its config drive and network, printing one line each:

    LOOM-CONFIG-DRIVE uuid=<instance uuid> hostname=<hostname>   (or LOOM-CONFIG-DRIVE none)
    LOOM-SSH-KEY sha256=<hex of the key blob> comment=<key comment>
    LOOM-USERDATA <first line of user_data>
    LOOM-IP <address>/<prefix> router=<gateway>                  (DHCP on eth0; or LOOM-IP none)
    LOOM-METADATA uuid=<uuid> hostname=<hostname>                 (from 169.254.169.254; or none)
    LOOM-PING-OK <ip> | LOOM-PING-FAIL <ip>                       (for loom_ping=<ip>)
    LOOM-PINGLOOP <n> up|down <ip>     (for loom_pingloop=<ip>: pings every second for ever,
                                        a numbered line at each change of answer)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

MARKER = "LOOM-TEST-GUEST-READY"

# Loaded in this order (each after its dependencies, found from the modules' own
# `depends=` records): NIC, IDE cdrom, then the file system.
GUEST_MODULES = ("virtio_pci", "virtio_net", "ata_piix", "sr_mod", "isofs")

UDHCPC_SCRIPT = """#!/bin/busybox sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    # Option 121 (the metadata address via the DHCP server, and the default route).
    set -- $staticroutes
    while [ $# -ge 2 ]; do ip route replace "$1" via "$2" dev "$interface"; shift 2; done
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "LOOM-IP $ip/$mask router=$router" >/dev/console ;;
esac
exit 0
"""

INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo "{MARKER}"
echo "loom test guest: $(uname -r) $(cat /proc/cmdline)"
ping_ip=""
loop_ip=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    loom_poweroff=*)
      secs="${{arg#loom_poweroff=}}"
      (sleep "$secs"; echo "powering off"; poweroff -f) & ;;
    loom_ping=*) ping_ip="${{arg#loom_ping=}}" ;;
    loom_pingloop=*) loop_ip="${{arg#loom_pingloop=}}" ;;
  esac
done
for m in $(cat /lib/modules/load-order 2>/dev/null); do
  insmod "/lib/modules/$m.ko" 2>/dev/null || echo "LOOM-MODULE-FAILED $m"
done
mkdir -p /mnt/config
found=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
  for dev in $(findfs LABEL=config-2 2>/dev/null) /dev/sr0 /dev/sr1; do
    [ -b "$dev" ] && mount -t iso9660 -o ro "$dev" /mnt/config 2>/dev/null && found="$dev" && break
  done
  [ -n "$found" ] && break
  sleep 1
done
if [ -n "$found" ]; then
  meta=/mnt/config/openstack/latest/meta_data.json
  uuid=$(sed -n 's/.*"uuid": "\\([^"]*\\)".*/\\1/p' "$meta")
  host=$(sed -n 's/.*"hostname": "\\([^"]*\\)".*/\\1/p' "$meta")
  echo "LOOM-CONFIG-DRIVE uuid=$uuid hostname=$host"
  key=$(sed -n 's/.*"public_keys": {{"[^"]*": "\\([^"]*\\)".*/\\1/p' "$meta")
  if [ -n "$key" ]; then
    blob=$(echo "$key" | cut -d' ' -f2)
    comment=$(echo "$key" | cut -d' ' -f3-)
    sum=$(echo "$blob" | base64 -d | sha256sum | cut -d' ' -f1)
    echo "LOOM-SSH-KEY sha256=$sum comment=$comment"
  fi
  if [ -f /mnt/config/openstack/latest/user_data ]; then
    echo "LOOM-USERDATA $(head -n 1 /mnt/config/openstack/latest/user_data)"
  fi
else
  echo "LOOM-CONFIG-DRIVE none"
fi
if ip link show eth0 >/dev/null 2>&1; then
  ip link set lo up
  dhcp_args="-i eth0 -n -q -t 10 -T 2 -O mtu -O staticroutes -s /bin/udhcpc.script"
  if udhcpc $dhcp_args >/dev/null 2>&1; then
    meta_url=http://169.254.169.254/openstack/latest/meta_data.json
    # (busybox wget -T crashes in Debian's static build: timeout bounds it instead)
    meta=$(timeout 10 wget -q -O - "$meta_url" 2>/dev/null)
    if [ -n "$meta" ]; then
      uuid=$(echo "$meta" | sed -n 's/.*"uuid": "\\([^"]*\\)".*/\\1/p')
      host=$(echo "$meta" | sed -n 's/.*"hostname": "\\([^"]*\\)".*/\\1/p')
      echo "LOOM-METADATA uuid=$uuid hostname=$host"
    else
      echo "LOOM-METADATA none"
    fi
  else
    echo "LOOM-IP none"
  fi
  if [ -n "$ping_ip" ]; then
    ok=""
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
      ping -c 1 -W 2 "$ping_ip" >/dev/null 2>&1 && ok=1 && break
      sleep 1
    done
    if [ -n "$ok" ]; then echo "LOOM-PING-OK $ping_ip"; else echo "LOOM-PING-FAIL $ping_ip"; fi
  fi
  if [ -n "$loop_ip" ]; then
    n=0
    was=""
    while true; do
      if ping -c 1 -W 1 "$loop_ip" >/dev/null 2>&1; then now=up; else now=down; fi
      if [ "$now" != "$was" ]; then
        n=$((n + 1))
        echo "LOOM-PINGLOOP $n $now $loop_ip"
        was=$now
      fi
      sleep 1
    done
  fi
else
  echo "LOOM-IP none (no eth0; links: $(ls /sys/class/net | tr '\\n' ' '))"
fi
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


def _module_depends(ko: Path) -> list[str]:
    """The `depends=` record of a kernel module (its .modinfo section), as names."""
    m = re.search(rb"(?:^|\0)depends=([^\0]*)", ko.read_bytes())
    return [d.decode() for d in m.group(1).split(b",") if d] if m else []


def _copy_modules(unpacked: Path, root: Path, wanted: tuple[str, ...]) -> list[str]:
    """Copies `wanted` and what they depend on into root/lib/modules; returns the load
    order (dependencies first), which is also written to root/lib/modules/load-order."""
    found = {}
    for ko in (unpacked / "lib" / "modules").rglob("*.ko*"):
        found[ko.name.split(".ko")[0].replace("-", "_")] = ko
    order: list[str] = []

    def add(name: str) -> None:
        if name in order:
            return
        ko = found.get(name)
        if ko is None:
            raise TestImageError(f"the kernel package has no module {name}")
        data = ko.read_bytes()
        if ko.name.endswith(".xz"):
            data = lzma.decompress(data)
        elif ko.name.endswith(".zst"):
            raise TestImageError("zstd-compressed modules are not supported")
        plain = root / "lib" / "modules" / f"{name}.ko"
        plain.parent.mkdir(parents=True, exist_ok=True)
        plain.write_bytes(data)
        for dep in _module_depends(plain):
            add(dep)
        order.append(name)

    for name in wanted:
        add(name)
    (root / "lib" / "modules" / "load-order").write_text("\n".join(order) + "\n")
    return order


def recipe() -> str:
    """A digest of what goes into the initramfs besides busybox and the kernel's modules:
    a build made from another recipe is made again."""
    parts = (INIT_SCRIPT, UDHCPC_SCRIPT, " ".join(GUEST_MODULES))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def build_test_image(out_dir: Path, *, force: bool = False) -> TestImage:
    """Writes vmlinuz and initrd.img into out_dir; a no-op when both exist and were made
    from the current recipe (unless force)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel, initrd = out_dir / "vmlinuz", out_dir / "initrd.img"
    stamp = out_dir / "recipe"
    current = stamp.exists() and stamp.read_text().strip() == recipe()
    if kernel.exists() and initrd.exists() and current and not force:
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
        (root / "bin" / "udhcpc.script").write_text(UDHCPC_SCRIPT)
        (root / "bin" / "udhcpc.script").chmod(0o755)
        _copy_modules(unpacked, root, GUEST_MODULES)
        initrd.write_bytes(gzip.compress(_cpio_newc(root), compresslevel=6))
    stamp.write_text(recipe() + "\n")
    return TestImage(kernel, initrd)
