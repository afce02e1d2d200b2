"""`loom prepare-host` (and so `loom up --hypervisor qemu` and `make services`) leaves
/dev/kvm usable by libvirt's QEMU user and libvirtd answering, or says plainly why not."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nodeagent.hostprep import KVM_GROUP, QEMU_USER, HostReport, check_kvm_device

ROOT = Path(__file__).resolve().parents[2]


def _has_qemu_user_and_kvm_group() -> bool:
    try:
        pwd.getpwnam(QEMU_USER)
        grp.getgrnam(KVM_GROUP)
    except KeyError:
        return False
    return True


needs_root_and_libvirt_users = pytest.mark.skipif(
    os.geteuid() != 0 or not _has_qemu_user_and_kvm_group(),
    reason="needs root and libvirt's libvirt-qemu user and kvm group",
)


def _loom(
    *argv: str, path: str = "/usr/sbin:/usr/bin:/sbin:/bin"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane.cli", *argv],
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'generated'}", "PATH": path},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def root_only_device(tmp_path: Path) -> Path:
    device = tmp_path / "kvm"
    device.write_bytes(b"")
    os.chown(device, 0, 0)
    device.chmod(0o600)
    return device


@needs_root_and_libvirt_users
def test_a_root_only_kvm_device_is_given_to_group_kvm_read_write(root_only_device: Path) -> None:
    report = HostReport()
    check_kvm_device(report, root_only_device)
    st = root_only_device.stat()
    assert st.st_gid == grp.getgrnam(KVM_GROUP).gr_gid
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert report.problems == []
    assert len(report.changed) == 1


@needs_root_and_libvirt_users
def test_a_kvm_device_already_usable_is_left_alone_and_not_reported(
    root_only_device: Path,
) -> None:
    os.chown(root_only_device, -1, grp.getgrnam(KVM_GROUP).gr_gid)
    root_only_device.chmod(0o660)
    report = HostReport()
    check_kvm_device(report, root_only_device)
    assert (report.changed, report.problems) == ([], [])


def test_no_kvm_device_at_all_needs_nothing(tmp_path: Path) -> None:
    report = HostReport()
    check_kvm_device(report, tmp_path / "absent")
    assert (report.changed, report.problems) == ([], [])


@needs_root_and_libvirt_users
@pytest.mark.skipif(not Path("/dev/kvm").exists(), reason="no /dev/kvm on this machine")
def test_prepare_host_fixes_the_real_dev_kvm_and_says_libvirtd_answers() -> None:
    device = Path("/dev/kvm")
    before = device.stat()
    os.chown(device, -1, 0)
    device.chmod(0o600)
    try:
        result = _loom("prepare-host")
        st = device.stat()
    finally:
        os.chown(device, -1, before.st_gid)
        device.chmod(stat.S_IMODE(before.st_mode))
    assert st.st_gid == grp.getgrnam(KVM_GROUP).gr_gid
    assert stat.S_IMODE(st.st_mode) & 0o660 == 0o660
    assert "/dev/kvm: gave group kvm read-write" in result.stdout
    assert result.returncode == 0, result.stderr
    assert "libvirtd answers at qemu:///system" in result.stdout


def test_prepare_host_names_the_packages_when_libvirtd_is_unreachable_and_not_installed(
    tmp_path: Path,
) -> None:
    # No sbin on PATH: the daemons are "not installed" as far as this command can see.
    result = _loom(
        "prepare-host",
        "--uri",
        f"qemu+unix:///system?socket={tmp_path}/no-such-socket",
        path="/usr/bin:/bin",
    )
    assert result.returncode == 1
    assert "libvirtd does not answer" in result.stderr
    assert "apt-get install libvirt-daemon-system" in result.stderr
