"""Choosing `kvm` or `qemu` (TCG) for the domains of a real host.

libvirt's domain capabilities for virttype kvm only say that QEMU can open /dev/kvm. That
is not enough: a /dev/kvm can exist without being able to run ordinary guests. On a host
whose /dev/kvm comes from a paravirtual nested module (Linux's `kvm_pvm`, which runs only
guest kernels built for it), libvirt reports kvm as supported, QEMU even executes a few
real-mode instructions, yet a stock Debian kernel hangs before its first console line.
So KVM is chosen only when all three hold:

1. libvirt's domain capabilities for x86_64 list virttype kvm;
2. a hardware vendor module (kvm_intel or kvm_amd) backs /dev/kvm (checked in
   /sys/module, for a local libvirtd only), and the CPU advertises vmx or svm;
3. QEMU under KVM runs a tiny firmware that writes to the isa-debug-exit port and exits
   with the code it chose (QEMU exits with `(value << 1) | 1`), within a few seconds.

Anything else gives `qemu` (TCG: slower, but every guest boots). The reason is logged.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import libvirt

log = logging.getLogger(__name__)

VirtType = Literal["qemu", "kvm"]

_PROBE_VALUE = 0x31
_PROBE_EXIT = (_PROBE_VALUE << 1) | 1
# 64 KiB of `hlt`; at the reset vector (F000:FFF0): mov al, 0x31; out 0xf4, al; hlt; jmp $-3.
_PROBE_CODE = bytes([0xB0, _PROBE_VALUE, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD])


@dataclass(frozen=True)
class VirtChoice:
    """The domain type to use and why."""

    virt_type: VirtType
    reason: str


def _probe_firmware() -> bytes:
    image = bytearray(b"\xf4" * 65536)
    image[0xFFF0 : 0xFFF0 + len(_PROBE_CODE)] = _PROBE_CODE
    return bytes(image)


def kvm_runs_guest_code(emulator: str, timeout: float = 10.0) -> bool:
    """True when `emulator` under -accel kvm executes the probe firmware to its exit."""
    with tempfile.NamedTemporaryFile(prefix="loom-kvm-probe-", suffix=".bin") as fw:
        fw.write(_probe_firmware())
        fw.flush()
        argv = [
            emulator,
            "-accel",
            "kvm",
            "-machine",
            "pc",
            "-m",
            "16",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-bios",
            fw.name,
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
    return proc.returncode == _PROBE_EXIT


def _kvm_domain_caps(conn: Any) -> str | None:
    """The emulator path when libvirt says kvm guests are possible, else None."""
    try:
        xml = conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
    except libvirt.libvirtError:
        return None
    root = ET.fromstring(xml)
    if root.findtext("domain") != "kvm":
        return None
    return root.findtext("path") or "qemu-system-x86_64"


def _hardware_kvm(sys_module: Path, cpuinfo: Path) -> str:
    """Empty when a vendor KVM module and CPU flags are present; else what is missing."""
    vendor = [m for m in ("kvm_intel", "kvm_amd") if (sys_module / m).exists()]
    if not vendor:
        others = sorted(p.name for p in sys_module.glob("kvm*")) if sys_module.is_dir() else []
        return f"no kvm_intel or kvm_amd module (loaded: {', '.join(others) or 'none'})"
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return "cannot read CPU flags"
    if " vmx" not in flags and " svm" not in flags:
        return "the CPU advertises neither vmx nor svm"
    return ""


def choose_virt_type(
    conn: Any,
    *,
    local: bool,
    sys_module: Path = Path("/sys/module"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
) -> VirtChoice:
    """Decides kvm or qemu for the libvirt connection `conn` (see the module docstring).

    `local` says libvirtd runs on this machine, so its /sys and QEMU can be inspected;
    for a remote libvirtd only libvirt's domain capabilities are asked.
    """
    emulator = _kvm_domain_caps(conn)
    if emulator is None:
        return VirtChoice("qemu", "libvirt reports no kvm support for x86_64")
    if not local:
        return VirtChoice("kvm", "remote libvirtd reports kvm support")
    missing = _hardware_kvm(sys_module, cpuinfo)
    if missing:
        return VirtChoice("qemu", f"/dev/kvm is not hardware KVM: {missing}")
    if not kvm_runs_guest_code(emulator):
        return VirtChoice("qemu", "QEMU under KVM did not run the probe firmware")
    return VirtChoice("kvm", "hardware KVM ran the probe firmware")
