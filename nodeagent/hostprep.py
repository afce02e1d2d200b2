"""Makes a machine ready to run real QEMU guests, or says plainly why it is not.

`loom prepare-host`, `loom up --hypervisor qemu` and `make services` all call
`prepare_qemu_host`, so the README's manual steps and the test set-up do the same thing:

1. `/dev/kvm` readable and writable by libvirt's QEMU user. Debian's udev rule gives it to
   group `kvm` (mode 0660); a machine without udev leaves it root-only. libvirt then probes
   QEMU's capabilities as root (sees KVM) but checks them as the QEMU user (does not), and
   probes afresh on every domain definition: 30-40 s each.
2. virtlogd and libvirtd running (there may be no init system to start them).

It changes only what it can as root; everything else is reported, never hidden.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from nodeagent.driver.libvirt_driver import silence_libvirt_stderr

SYSTEM_URI = "qemu:///system"
KVM_DEVICE = Path("/dev/kvm")
QEMU_USER = "libvirt-qemu"
KVM_GROUP = "kvm"
INSTALL_HINT = "apt-get install libvirt-daemon-system qemu-system-x86 qemu-utils"
_SOCKET_WAIT_S = 15.0


@dataclass
class HostReport:
    """What prepare_qemu_host changed, and what it could not make right."""

    changed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    libvirtd_reachable: bool = False

    @property
    def ready(self) -> bool:
        return self.libvirtd_reachable and not self.problems


def _kvm_usable_by(device: Path, user: pwd.struct_passwd, group: grp.struct_group) -> bool:
    st = device.stat()
    user_in_group = user.pw_name in group.gr_mem or user.pw_gid == group.gr_gid
    group_rw = st.st_mode & (stat.S_IRGRP | stat.S_IWGRP) == stat.S_IRGRP | stat.S_IWGRP
    other_rw = st.st_mode & (stat.S_IROTH | stat.S_IWOTH) == stat.S_IROTH | stat.S_IWOTH
    return other_rw or (st.st_gid == group.gr_gid and group_rw and user_in_group)


def check_kvm_device(report: HostReport, device: Path = KVM_DEVICE) -> None:
    """Gives `device` to group kvm, mode 0660, when it is root-only and this is root."""
    if not device.exists():
        return  # No KVM at all: libvirt uses TCG and has nothing to re-probe.
    try:
        user = pwd.getpwnam(QEMU_USER)
        group = grp.getgrnam(KVM_GROUP)
    except KeyError:
        report.problems.append(
            f"{device}: no user {QEMU_USER} or group {KVM_GROUP}, so libvirt's QEMU cannot be "
            f"given the device ({INSTALL_HINT})"
        )
        return
    if _kvm_usable_by(device, user, group):
        return
    if user.pw_name not in group.gr_mem and user.pw_gid != group.gr_gid:
        report.problems.append(
            f"{device}: {QEMU_USER} is not in group {KVM_GROUP} (usermod -aG {KVM_GROUP} "
            f"{QEMU_USER}, then restart libvirtd); each guest definition will take 30-40 s"
        )
        return
    if os.geteuid() != 0:
        report.problems.append(
            f"{device} is not read-write for group {KVM_GROUP}, and only root can change it "
            f"(chgrp {KVM_GROUP} {device}; chmod 0660 {device}); each guest definition will "
            "take 30-40 s until then"
        )
        return
    os.chown(device, -1, group.gr_gid)
    os.chmod(device, stat.S_IMODE(device.stat().st_mode) | 0o660)
    report.changed.append(
        f"{device}: gave group {KVM_GROUP} read-write, so libvirt stops probing QEMU afresh "
        "for every guest definition"
    )


def _reachable(uri: str) -> bool:
    silence_libvirt_stderr()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    conn.close()
    return True


def _running(program: str) -> bool:
    return (
        subprocess.run(["pgrep", "-x", program], capture_output=True, check=False).returncode == 0
    )


def start_libvirtd(report: HostReport, uri: str = SYSTEM_URI) -> None:
    """Starts virtlogd and libvirtd when `uri` does not answer; sets libvirtd_reachable."""
    if _reachable(uri):
        report.libvirtd_reachable = True
        return
    daemons = {name: shutil.which(name) for name in ("virtlogd", "libvirtd")}
    missing = [name for name, path in daemons.items() if path is None]
    if missing:
        report.problems.append(
            f"libvirtd does not answer at {uri}, and {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed ({INSTALL_HINT})"
        )
        return
    if os.geteuid() != 0:
        report.problems.append(f"libvirtd does not answer at {uri}; start it as root")
        return
    for folder in ("/var/log/libvirt", "/var/run/libvirt"):
        Path(folder).mkdir(parents=True, exist_ok=True)
    for name, path in daemons.items():
        if path is not None and not _running(name):
            subprocess.run([path, "-d"], capture_output=True, check=False)
            report.changed.append(f"started {name}")
    deadline = time.monotonic() + _SOCKET_WAIT_S
    while time.monotonic() < deadline:
        if _reachable(uri):
            report.libvirtd_reachable = True
            return
        time.sleep(0.2)
    report.problems.append(
        f"libvirtd was started but does not answer at {uri}; see /var/log/libvirt/"
    )


def prepare_qemu_host(uri: str = SYSTEM_URI, device: Path = KVM_DEVICE) -> HostReport:
    """/dev/kvm first (libvirtd caches what it probes), then the daemons."""
    report = HostReport()
    check_kvm_device(report, device)
    start_libvirtd(report, uri)
    return report
