"""Choosing kvm or qemu: libvirt's word, the host's KVM module and CPU flags, a probe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from nodeagent.driver.hypervisor import choose_virt_type, kvm_runs_guest_code
from tests.support.libvirtd import SYSTEM_URI, require_libvirtd


@pytest.fixture
def qemu_conn() -> Iterator[Any]:
    require_libvirtd()
    conn = libvirt.open(SYSTEM_URI)
    try:
        yield conn
    finally:
        conn.close()


def _fake_host(tmp: Path, modules: list[str], flags: str) -> tuple[Path, Path]:
    sys_module = tmp / "module"
    for mod in modules:
        (sys_module / mod).mkdir(parents=True)
    sys_module.mkdir(exist_ok=True)
    cpuinfo = tmp / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n")
    return sys_module, cpuinfo


def test_a_hypervisor_without_kvm_support_gets_qemu() -> None:
    conn = libvirt.open("test:///default")
    try:
        choice = choose_virt_type(conn, local=True)
    finally:
        conn.close()
    assert choice.virt_type == "qemu"
    assert "no kvm support" in choice.reason


@pytest.mark.qemu
def test_a_dev_kvm_backed_only_by_a_paravirtual_module_gets_qemu(
    qemu_conn: Any, tmp_path: Path
) -> None:
    if "<domain>kvm</domain>" not in qemu_conn.getDomainCapabilities(
        None, "x86_64", None, "kvm", 0
    ):
        pytest.skip("libvirt offers no kvm here at all")
    sys_module, cpuinfo = _fake_host(tmp_path, ["kvm", "kvm_pvm"], "lm")
    choice = choose_virt_type(qemu_conn, local=True, sys_module=sys_module, cpuinfo=cpuinfo)
    assert choice.virt_type == "qemu"
    assert "kvm_pvm" in choice.reason


@pytest.mark.qemu
def test_a_vendor_module_without_cpu_virtualisation_flags_gets_qemu(
    qemu_conn: Any, tmp_path: Path
) -> None:
    if "<domain>kvm</domain>" not in qemu_conn.getDomainCapabilities(
        None, "x86_64", None, "kvm", 0
    ):
        pytest.skip("libvirt offers no kvm here at all")
    sys_module, cpuinfo = _fake_host(tmp_path, ["kvm", "kvm_amd"], "lm")
    choice = choose_virt_type(qemu_conn, local=True, sys_module=sys_module, cpuinfo=cpuinfo)
    assert choice.virt_type == "qemu"
    assert "neither vmx nor svm" in choice.reason


def test_the_probe_fails_when_the_emulator_cannot_run() -> None:
    assert kvm_runs_guest_code("/nonexistent/qemu-system-x86_64") is False
