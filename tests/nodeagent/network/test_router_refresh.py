"""The L3 host's agent applies the network service's router bindings: the newest revision
wins whatever order they arrive in, a deleted router stays deleted, a restart serves the
recorded routers again, and a router whose external subnet the host already has on
another device (its own uplink) is refused before anything changes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from loom.compute.v1 import agent_bus_pb2 as pb

from nodeagent.driver import netrecords
from nodeagent.driver.libvirt_driver import LibvirtDriver, write_simulated_node
from nodeagent.network import HostDataPlane, router_from_proto
from nodeagent.network.model import InvalidNetworkInput
from nodeagent.network.router import NETNS_DIR
from tests.nodeagent.network.netlab import Lab, sh

EXTERNAL_CIDR_GATEWAY = "203.0.113.1"


def _binding(revision: int, *, router_id: str, ext: str, tenant: str, vni: int) -> pb.RouterBinding:
    return pb.RouterBinding(
        router_id=router_id,
        revision=revision,
        admin_state_up=True,
        enable_snat=True,
        gateway=pb.RouterLeg(
            port_id=str(uuid.uuid4()),
            network_id=ext,
            segmentation_id=vni + 1,
            mac_address="fa:16:3e:bb:00:01",
            fixed_ips=[
                pb.FixedIp(
                    subnet_id="subnet-ext",
                    ip_address="203.0.113.4",
                    prefixlen=24,
                    gateway_ip=EXTERNAL_CIDR_GATEWAY,
                )
            ],
            mtu=1450,
        ),
        interfaces=[
            pb.RouterLeg(
                port_id=str(uuid.uuid4()),
                network_id=tenant,
                segmentation_id=vni,
                mac_address="fa:16:3e:bb:00:02",
                fixed_ips=[
                    pb.FixedIp(
                        subnet_id="subnet-tenant",
                        ip_address="10.78.0.1",
                        prefixlen=24,
                        gateway_ip="10.78.0.1",
                    )
                ],
                mtu=1450,
            )
        ],
    )


@pytest.fixture
def l3(lab: Lab, tmp_path: Path) -> Iterator[HostDataPlane]:
    plane, _ = lab.hosts(2, tmp_path)
    try:
        yield plane
    finally:
        plane.reconcile([], routers=[])
        for left in NETNS_DIR.glob(f"{plane.config.netns}-qrouter-*"):
            sh("ip", "netns", "del", left.name, check=False)


def _driver(tmp_path: Path, plane: HostDataPlane) -> LibvirtDriver:
    uri = write_simulated_node(tmp_path / "node.xml", vcpus=4, memory_mb=4096)
    return LibvirtDriver(uri, host="l3", instances_dir=tmp_path / "instances", dataplane=plane)


def test_the_newest_router_binding_wins_and_a_restart_serves_the_recorded_routers(
    l3: HostDataPlane, lab: Lab, tmp_path: Path
) -> None:
    router_id, ext, tenant = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    vni = 4000 + int(lab.tag, 16) % 1000
    first = _binding(3, router_id=router_id, ext=ext, tenant=tenant, vni=vni)
    older = _binding(2, router_id=router_id, ext=ext, tenant=tenant, vni=vni)
    older.ClearField("interfaces")
    driver = _driver(tmp_path, l3)
    driver.open()
    assert driver.refresh_routers([first]) == 1
    assert l3.state().routers[router_id] == {ext, tenant}
    # A late, older binding (another conductor's take) changes nothing.
    assert driver.refresh_routers([older]) == 0
    assert l3.state().routers[router_id] == {ext, tenant}

    # The namespace is lost (a host reboot): a new agent's network reconcile (at its
    # driver's open on a real hypervisor) serves it again.
    l3.routers.remove(router_id)
    assert router_id not in l3.state().routers
    _driver(tmp_path, l3).reconcile_network()
    assert l3.state().routers[router_id] == {ext, tenant}

    # Deleted: gone, and an older binding arriving later does not bring it back.
    deleted = pb.RouterBinding(router_id=router_id, revision=4, deleted=True)
    assert driver.refresh_routers([deleted]) == 1
    assert router_id not in l3.state().routers
    assert driver.refresh_routers([first]) == 0
    assert router_id not in l3.state().routers
    assert [b.deleted for b in netrecords.routers(l3.config.state_dir / "routers")] == [True]


def test_a_router_on_a_subnet_the_host_already_has_is_refused_before_anything_changes(
    l3: HostDataPlane, lab: Lab, tmp_path: Path
) -> None:
    """The host's own uplink is on 203.0.113.0/24: being that subnet's gateway on the
    external bridge as well would take its route (and maybe its gateway's address)."""
    sh(
        "ip",
        "link",
        "add",
        "uplink0",
        "type",
        "veth",
        "peer",
        "name",
        "uplink0p",
        netns=l3.config.netns,
    )
    sh("ip", "addr", "add", "203.0.113.2/24", "dev", "uplink0", netns=l3.config.netns)
    router_id, ext, tenant = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    vni = 5000 + int(lab.tag, 16) % 1000
    binding = _binding(1, router_id=router_id, ext=ext, tenant=tenant, vni=vni)
    links_before = sh("ip", "-o", "link", netns=l3.config.netns)
    with pytest.raises(InvalidNetworkInput, match=r"overlaps 203\.0\.113\.2/24 on uplink0"):
        l3.ensure_router(router_from_proto(binding))
    assert sh("ip", "-o", "link", netns=l3.config.netns) == links_before
    assert not list(NETNS_DIR.glob(f"{l3.config.netns}-qrouter-*"))

    # Through the agent: refused (logged), not served, and the reconcile stays whole.
    driver = _driver(tmp_path, l3)
    driver.open()
    assert driver.refresh_routers([binding]) == 0
    assert router_id not in l3.state().routers
    driver.reconcile_network()
    assert router_id not in l3.state().routers
