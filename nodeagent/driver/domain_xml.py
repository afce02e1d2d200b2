"""Domain XML built by pure code from an InstanceSpec and the host's layout.

No I/O and no libvirt here, so every shape is covered by golden-file tests.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal

from loom.compute.v1 import agent_bus_pb2

from nodeagent.network.names import tap_name

# Loom marks the domains it owns with this metadata namespace. It is how an agent tells
# its domains from anything else on a shared hypervisor, and which simulated host owns
# a domain when several share one connection.
LOOM_XMLNS = "https://loom.invalid/xmlns/instance/1"
LOOM_XMLNS_PREFIX = "loom"

DomainType = Literal["test", "qemu", "kvm"]


@dataclass(frozen=True)
class KernelBoot:
    """Direct kernel boot: the files are in the instance's folder or the image cache."""

    kernel: str
    initrd: str = ""
    cmdline: str = "console=ttyS0"


@dataclass(frozen=True)
class DomainLayout:
    """Host-side choices that are not part of the spec: where files live, how to boot."""

    domain_type: DomainType
    host: str
    root_disk: str
    console_log: str
    vnc_listen: str
    ephemeral_disk: str = ""
    swap_disk: str = ""
    # Set for qemu/kvm; the test driver only knows i686 and accepts no machine type.
    arch: str = ""
    machine: str = ""
    kernel_boot: KernelBoot | None = None
    disk_format: str = "qcow2"
    # The config drive image (nodeagent/configdrive.py), attached as a read-only cdrom.
    config_drive: str = ""


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _disk(devices: ET.Element, path: str, dev: str, fmt: str) -> None:
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type=fmt)
    _sub(disk, "source", file=path)
    _sub(disk, "target", dev=dev, bus="virtio")


def build_domain_xml(spec: agent_bus_pb2.InstanceSpec, layout: DomainLayout) -> str:
    """The domain XML for `spec` on a host laid out as `layout`. Deterministic."""
    if layout.domain_type not in ("test", "qemu", "kvm"):
        raise ValueError(f"unknown domain type {layout.domain_type!r}")
    ET.register_namespace(LOOM_XMLNS_PREFIX, LOOM_XMLNS)
    dom = ET.Element("domain", type=layout.domain_type)
    _sub(dom, "name", spec.instance_name)
    _sub(dom, "uuid", spec.instance_id)
    if spec.display_name:
        _sub(dom, "title", spec.display_name)

    meta = _sub(dom, "metadata")
    inst = _sub(meta, f"{{{LOOM_XMLNS}}}instance")
    _sub(inst, f"{{{LOOM_XMLNS}}}host", layout.host)
    _sub(inst, f"{{{LOOM_XMLNS}}}project", spec.project_id)
    _sub(inst, f"{{{LOOM_XMLNS}}}image", spec.image.id)

    _sub(dom, "memory", str(spec.memory_mb * 1024), unit="KiB")
    _sub(dom, "currentMemory", str(spec.memory_mb * 1024), unit="KiB")
    _sub(dom, "vcpu", str(spec.vcpus), placement="static")

    os_el = _sub(dom, "os")
    type_attrs = {}
    if layout.arch:
        type_attrs["arch"] = layout.arch
    if layout.machine:
        type_attrs["machine"] = layout.machine
    _sub(os_el, "type", "hvm", **type_attrs)
    if layout.kernel_boot is not None:
        _sub(os_el, "kernel", layout.kernel_boot.kernel)
        if layout.kernel_boot.initrd:
            _sub(os_el, "initrd", layout.kernel_boot.initrd)
        if layout.kernel_boot.cmdline:
            _sub(os_el, "cmdline", layout.kernel_boot.cmdline)
    else:
        _sub(os_el, "boot", dev="hd")

    if layout.domain_type != "test":
        features = _sub(dom, "features")
        _sub(features, "acpi")
        _sub(features, "apic")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")

    devices = _sub(dom, "devices")
    _disk(devices, layout.root_disk, "vda", layout.disk_format)
    if spec.ephemeral_gb > 0 and layout.ephemeral_disk:
        _disk(devices, layout.ephemeral_disk, "vdb", "qcow2")
    if spec.swap_mb > 0 and layout.swap_disk:
        _disk(devices, layout.swap_disk, "vdc", "qcow2")

    if layout.config_drive:
        # IDE on the `pc` machine: every guest kernel has a driver for it, and cloud-init
        # looks for the config-2 label on any block device.
        cdrom = _sub(devices, "disk", type="file", device="cdrom")
        _sub(cdrom, "driver", name="qemu", type="raw")
        _sub(cdrom, "source", file=layout.config_drive)
        _sub(cdrom, "target", dev="hdd", bus="ide")
        _sub(cdrom, "readonly")

    # One NIC per port, in order. The tap is made and wired by the data plane
    # (nodeagent/network) before the domain starts; `managed='no'` makes libvirt open it
    # as it is and leave it in place when the domain stops.
    for port in spec.ports:
        iface = _sub(devices, "interface", type="ethernet")
        _sub(iface, "mac", address=port.mac_address.lower())
        _sub(iface, "target", dev=tap_name(port.port_id), managed="no")
        _sub(iface, "model", type="virtio")
        if port.mtu:
            _sub(iface, "mtu", size=str(port.mtu))

    # The serial port writes to a file so GetConsoleOutput can read it without a guest agent.
    # Appending keeps what the guest printed before a stop or reboot, which is often
    # exactly what its owner wants to read.
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=layout.console_log, append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="file")
    _sub(console, "source", path=layout.console_log, append="on")
    _sub(console, "target", type="serial", port="0")

    graphics = _sub(devices, "graphics", type="vnc", port="-1", autoport="yes")
    _sub(graphics, "listen", type="address", address=layout.vnc_listen)

    ET.indent(dom, space="  ")
    return ET.tostring(dom, encoding="unicode") + "\n"
