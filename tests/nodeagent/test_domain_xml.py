"""Domain XML is built by pure code; golden files pin every shape.

Regenerate on purpose only: LOOM_REGEN_GOLDEN=1 pytest tests/nodeagent/test_domain_xml.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from loom.compute.v1 import agent_bus_pb2

from nodeagent.driver.domain_xml import DomainLayout, KernelBoot, build_domain_xml
from tests.nodeagent.support import make_spec

GOLDEN = Path(__file__).parent / "golden"
IID = "6f1c2a9e-0b4d-4c3a-9a57-1d2e3f405162"


def _layout(**over: object) -> DomainLayout:
    base: dict[str, object] = {
        "domain_type": "test",
        "host": "sim-0001",
        "root_disk": f"/var/lib/loom/instances/{IID}/disk",
        "ephemeral_disk": f"/var/lib/loom/instances/{IID}/disk.eph0",
        "swap_disk": f"/var/lib/loom/instances/{IID}/disk.swap",
        "console_log": f"/var/lib/loom/instances/{IID}/console.log",
        "vnc_listen": "127.0.0.1",
    }
    base.update(over)
    return DomainLayout(**base)  # type: ignore[arg-type]


CASES: dict[str, tuple[agent_bus_pb2.InstanceSpec, DomainLayout]] = {
    "test_minimal": (
        make_spec(instance_id=IID, instance_name="instance-0000002a", vcpus=1, memory_mb=512),
        _layout(),
    ),
    "qemu_with_ephemeral_and_swap": (
        make_spec(
            instance_id=IID,
            instance_name="instance-0000002b",
            vcpus=4,
            memory_mb=4096,
            ephemeral_gb=10,
            swap_mb=512,
            display_name="db & cache <primary>",
        ),
        _layout(domain_type="qemu", arch="x86_64", machine="pc", vnc_listen="0.0.0.0"),
    ),
    "qemu_kernel_initrd_boot": (
        make_spec(instance_id=IID, instance_name="instance-0000002c", vcpus=1, memory_mb=128),
        _layout(
            domain_type="qemu",
            arch="x86_64",
            machine="pc",
            disk_format="raw",
            kernel_boot=KernelBoot(
                kernel=f"/var/lib/loom/instances/{IID}/kernel",
                initrd=f"/var/lib/loom/instances/{IID}/initrd",
                cmdline="console=ttyS0 panic=1",
            ),
        ),
    ),
    "qemu_overlay_disk": (
        make_spec(instance_id=IID, instance_name="instance-0000002d", vcpus=2, memory_mb=2048),
        _layout(domain_type="qemu", arch="x86_64", machine="pc"),
    ),
    "kvm_overlay_disk_kernel_initrd": (
        make_spec(instance_id=IID, instance_name="instance-0000002e", vcpus=2, memory_mb=1024),
        _layout(
            domain_type="kvm",
            arch="x86_64",
            machine="pc",
            kernel_boot=KernelBoot(
                kernel="/var/lib/loom/instances/_base/3c1d-kernel",
                initrd="/var/lib/loom/instances/_base/3c1d-ramdisk",
                cmdline="console=ttyS0 root=/dev/vda",
            ),
        ),
    ),
    "qemu_ports_and_config_drive": (
        make_spec(
            instance_id=IID,
            instance_name="instance-0000002f",
            vcpus=1,
            memory_mb=256,
            ports=[
                agent_bus_pb2.PortBinding(
                    port_id="0b7e6a57-8f0e-4c7b-9d51-9a0f2f6a1c01",
                    network_id="5f3e0b1c-2d4a-4e8b-8c6d-7e9f0a1b2c3d",
                    segmentation_id=1001,
                    mac_address="FA:16:3E:00:00:01",
                    mtu=1450,
                ),
                agent_bus_pb2.PortBinding(
                    port_id="7d2e1c3b-4a5f-4e6d-8c7b-9a0b1c2d3e4f",
                    network_id="5f3e0b1c-2d4a-4e8b-8c6d-7e9f0a1b2c3d",
                    segmentation_id=1001,
                    mac_address="fa:16:3e:00:00:02",
                ),
            ],
        ),
        _layout(
            domain_type="qemu",
            arch="x86_64",
            machine="pc",
            config_drive=f"/var/lib/loom/instances/{IID}/disk.config",
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_domain_xml_matches_its_golden_file(name: str) -> None:
    spec, layout = CASES[name]
    xml = build_domain_xml(spec, layout)
    path = GOLDEN / f"{name}.xml"
    if os.environ.get("LOOM_REGEN_GOLDEN") == "1":
        path.write_text(xml)
    assert xml == path.read_text()


def test_the_same_spec_always_gives_the_same_xml() -> None:
    spec, layout = CASES["qemu_with_ephemeral_and_swap"]
    assert build_domain_xml(spec, layout) == build_domain_xml(spec, layout)


def test_ephemeral_and_swap_disks_appear_only_when_the_flavor_asks_for_them() -> None:
    without = build_domain_xml(make_spec(instance_id=IID), _layout())
    with_both = build_domain_xml(make_spec(instance_id=IID, ephemeral_gb=1, swap_mb=64), _layout())
    assert "vdb" not in without
    assert "vdc" not in without
    assert 'dev="vdb"' in with_both
    assert 'dev="vdc"' in with_both


def test_a_spec_without_ports_or_config_drive_has_no_nic_and_no_cdrom() -> None:
    xml = build_domain_xml(make_spec(instance_id=IID), _layout(domain_type="qemu"))
    assert "<interface" not in xml
    assert "cdrom" not in xml


def test_an_unknown_domain_type_is_refused() -> None:
    with pytest.raises(ValueError, match="domain type"):
        build_domain_xml(make_spec(), _layout(domain_type="xen"))
