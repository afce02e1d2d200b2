"""scripts/services.sh, which `make test` and CI run before the tests."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not Path("/dev/kvm").exists(), reason="no /dev/kvm on this machine")
def test_dev_kvm_is_left_usable_by_libvirts_qemu_user() -> None:
    # Root-only /dev/kvm made libvirt probe QEMU's capabilities afresh for every domain
    # definition (30-40 s each): its probe runs as root, its cache check as this user.
    try:
        qemu_user = pwd.getpwnam("libvirt-qemu")
        kvm_group = grp.getgrnam("kvm")
    except KeyError:
        pytest.skip("no libvirt-qemu user or kvm group")
    subprocess.run([str(ROOT / "scripts" / "services.sh")], check=True, capture_output=True)
    st = os.stat("/dev/kvm")
    in_group = st.st_gid == kvm_group.gr_gid and qemu_user.pw_name in kvm_group.gr_mem
    in_group = in_group or (st.st_gid == qemu_user.pw_gid)
    assert in_group, "the qemu user is not in /dev/kvm's group"
    assert st.st_mode & (stat.S_IRGRP | stat.S_IWGRP) == stat.S_IRGRP | stat.S_IWGRP
