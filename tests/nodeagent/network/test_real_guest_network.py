"""Real guests (QEMU under libvirtd) on the data plane: config drive, DHCP from the build
command, the metadata service, two guests.

The data plane runs in the machine's own namespace here (QEMU opens its taps there), with
names unique to the test; everything it made is removed at the end, even on failure.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from loom.compute.v1 import agent_bus_pb2 as pb

from nodeagent.driver.base import PowerState
from nodeagent.driver.libvirt_driver import LibvirtDriver
from nodeagent.images.cache import ImageCache
from nodeagent.images.source import LocalImageSource
from nodeagent.network import (
    DataPlaneConfig,
    HostDataPlane,
    bridge_name,
    dhcp_namespace,
)
from tests.nodeagent.network.netlab import require_lab
from tests.nodeagent.test_real_guests import URI, GuestImages, guest_images
from tests.support.libvirtd import require_libvirtd

pytestmark = pytest.mark.qemu

__all__ = ["guest_images"]  # the module-scoped fixture, shared with test_real_guests

KEY_BLOB = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32)))
KEY = f"ssh-ed25519 {KEY_BLOB.decode()} loom-key@test"
USER_DATA = b"LOOM-USERDATA-MARKER-42\necho second line\n"


@pytest.fixture
def net_driver(guest_images: GuestImages) -> Iterator[tuple[LibvirtDriver, HostDataPlane]]:
    require_libvirtd(URI)
    require_lab()
    host = f"qemu-net-{uuid.uuid4().hex[:8]}"
    instances = guest_images.base / host
    plane = HostDataPlane(
        DataPlaneConfig(local_ip="127.0.0.1", state_dir=guest_images.base / f"{host}-net")
    )
    driver = LibvirtDriver(
        URI,
        host=host,
        instances_dir=instances,
        images=ImageCache(instances / "_base", LocalImageSource(guest_images.store)),
        soft_reboot_timeout=1.0,
        dataplane=plane,
    )
    driver.open()
    made_networks: list[str] = []
    try:
        yield driver, plane
    finally:
        for iid in driver.list_instances():
            driver.destroy(iid)
        driver.close()
        # What a failed test may have left: this test's networks and DHCP only.
        state = plane.state()
        for port_id in state.ports:
            plane.unplug(port_id)
        for network_id in plane.dhcp.namespaces() | set(made_networks):
            plane.dhcp.remove(network_id)


def _port(net: str, vni: int, ip: str, n: int) -> pb.PortBinding:
    return pb.PortBinding(
        port_id=str(uuid.uuid4()),
        network_id=net,
        segmentation_id=vni,
        mac_address=f"fa:16:3e:5a:00:{n:02x}",
        mtu=1450,
        port_security_enabled=True,
        fixed_ips=[
            pb.FixedIp(
                subnet_id="subnet-0000-0078", ip_address=ip, prefixlen=24, gateway_ip="10.78.0.1"
            )
        ],
        security_group_rules=[
            pb.SecurityGroupRule(direction=pb.RULE_DIRECTION_EGRESS, ethertype="IPv4"),
            pb.SecurityGroupRule(
                direction=pb.RULE_DIRECTION_INGRESS, ethertype="IPv4", protocol="icmp"
            ),
        ],
    )


def _spec(images: GuestImages, port: pb.PortBinding, cmdline: str) -> pb.InstanceSpec:
    iid = str(uuid.uuid4())
    return pb.InstanceSpec(
        instance_id=iid,
        instance_name=f"loom-net-{iid[:8]}",
        project_id="p-1",
        vcpus=1,
        memory_mb=160,
        root_gb=1,
        image=images.image_ref(cmdline),
        display_name="net guest",
        hostname=f"vm-{iid[:8]}",
        key_name="k1",
        key_data=KEY,
        user_data=base64.b64encode(USER_DATA).decode(),
        ports=[port],
    )


def _wait_for(
    driver: LibvirtDriver,
    iid: str,
    texts: list[str],
    wait: float = 150,
    dhcp_log: Path | None = None,
) -> str:
    deadline = time.monotonic() + wait
    out = ""
    while time.monotonic() < deadline:
        try:
            out = driver.console_output(iid, 0)
        except Exception:
            out = ""
        if all(t in out for t in texts):
            return out
        if "LOOM-IP none" in out or "LOOM-PING-FAIL" in out:
            break
        time.sleep(0.5)
    log = dhcp_log.read_text()[-2000:] if dhcp_log is not None and dhcp_log.exists() else ""
    pytest.fail(f"console lacks {[t for t in texts if t not in out]}:\n{out[-2000:]}\n{log}")


def test_two_real_guests_read_their_config_drive_and_metadata_get_dhcp_and_ping_each_other(
    net_driver: tuple[LibvirtDriver, HostDataPlane], guest_images: GuestImages
) -> None:
    driver, plane = net_driver
    net, vni = str(uuid.uuid4()), 9000 + uuid.uuid4().int % 1000
    p1 = _port(net, vni, "10.78.0.11", 1)
    p2 = _port(net, vni, "10.78.0.12", 2)
    # The DHCP service comes with the build command, as the conductor sends it.
    dhcp = pb.NetworkDhcp(
        network_id=net,
        vni=vni,
        mtu=1450,
        dhcp_mac_address="fa:16:3e:5a:00:fe",  # unlike any port's
        subnets=[
            pb.DhcpSubnet(
                subnet_id="subnet-0000-0078",
                cidr="10.78.0.0/24",
                gateway_ip="10.78.0.1",
                dhcp_server_ip="10.78.0.2",
            )
        ],
        leases=[
            pb.DhcpLease(mac_address=p1.mac_address, ip_address="10.78.0.11"),
            pb.DhcpLease(mac_address=p2.mac_address, ip_address="10.78.0.12"),
        ],
    )

    s1 = _spec(guest_images, p1, "console=ttyS0")
    s2 = _spec(guest_images, p2, "console=ttyS0 loom_ping=10.78.0.11")
    assert driver.create(s1, dhcp=[dhcp]) == PowerState.RUNNING
    assert driver.create(s2, dhcp=[dhcp]) == PowerState.RUNNING

    fingerprint = hashlib.sha256(base64.b64decode(KEY_BLOB)).hexdigest()
    out1 = _wait_for(
        driver,
        s1.instance_id,
        [
            f"LOOM-CONFIG-DRIVE uuid={s1.instance_id} hostname={s1.hostname}",
            f"LOOM-SSH-KEY sha256={fingerprint} comment=loom-key@test",
            "LOOM-USERDATA LOOM-USERDATA-MARKER-42",
            "LOOM-IP 10.78.0.11/24 router=10.78.0.1",
            # Through the option 121 route to this host's metadata server.
            f"LOOM-METADATA uuid={s1.instance_id} hostname={s1.hostname}",
        ],
        dhcp_log=plane.dhcp.folder(net) / "log",
    )
    assert "second line" not in out1
    _wait_for(
        driver,
        s2.instance_id,
        ["LOOM-IP 10.78.0.12/24", "LOOM-PING-OK 10.78.0.11"],
        dhcp_log=plane.dhcp.folder(net) / "log",
    )

    driver.destroy(s1.instance_id)
    driver.destroy(s2.instance_id)
    # The last port of the network went: its bridge, DHCP and chains went with it.
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert bridge_name(net) not in links
    assert f"tap{p1.port_id[:11]}" not in links
    assert not Path(f"/var/run/netns/{dhcp_namespace(net)}").exists()
    assert plane.metadata.pid(net) is None
    assert plane.dhcp.pid(net) is None
    assert plane.firewall.port_keys() & {p1.port_id[:11], p2.port_id[:11]} == set()
