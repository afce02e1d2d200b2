"""Servers on networks through the whole stack (gateway, conductor hosting the network
service, scheduler, agents on test:/// hosts): the unmodified openstack CLI, and the
compute API's errors for what cannot be had."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from bench.client import resolve_cloud
from tests.e2e.test_openstack_clients import osc, ready_cloud  # noqa: F401 (a fixture)
from tests.support import polling
from tests.support.stack import Stack

pytestmark = pytest.mark.slow


def _addresses(shown: dict[str, Any]) -> str:
    value = shown["addresses"]
    return str(value)


@pytest.mark.timeout(900)
def test_a_server_on_a_network_gets_a_bound_port_and_leaves_none_behind(
    ready_cloud: Stack,  # noqa: F811
) -> None:
    cloud = ready_cloud
    net = osc(cloud, "network", "create", "n1", "-f", "json")
    osc(
        cloud,
        "subnet",
        "create",
        "--network",
        "n1",
        "--subnet-range",
        "10.9.0.0/24",
        "s1",
        "-f",
        "json",
    )
    server = osc(
        cloud,
        "server",
        "create",
        "--flavor",
        "m1.tiny",
        "--image",
        "tiny",
        "--nic",
        f"net-id={net['id']}",
        "--wait",
        "vm1",
        "-f",
        "json",
    )
    assert server["status"] == "ACTIVE"
    shown = osc(cloud, "server", "show", server["id"], "-f", "json", admin=True)
    assert "n1" in _addresses(shown)
    assert "10.9.0." in _addresses(shown)
    ports = osc(cloud, "port", "list", "--server", server["id"], "-f", "json")
    assert len(ports) == 1
    assert ports[0]["Status"] == "ACTIVE"
    port = osc(cloud, "port", "show", ports[0]["ID"], "-f", "json", admin=True)
    assert port["binding_host_id"] == shown["OS-EXT-SRV-ATTR:host"]
    assert port["device_owner"] == "compute:nova"
    ip = port["fixed_ips"][0]["ip_address"]
    assert ip in _addresses(shown)

    osc(cloud, "server", "delete", "--wait", "vm1")
    # (The CLI's --server needs a server that exists: ask by the port's owner instead.)
    left = osc(
        cloud, "port", "list", "--network", "n1", "--device-owner", "compute:nova", "-f", "json"
    )
    assert left == []
    # Its network can go: only the network's own DHCP port is left on it.
    osc(cloud, "network", "delete", "n1")


@pytest.mark.timeout(900)
def test_the_compute_api_refuses_what_a_server_cannot_have_on_a_network(
    ready_cloud: Stack,  # noqa: F811
) -> None:
    cloud = ready_cloud
    tenant = resolve_cloud("loom", cloud.data_dir / "clouds.yaml")
    base = tenant.compute_url.split("/compute")[0]
    h = {"X-Auth-Token": tenant.token, "OpenStack-API-Version": "compute 2.37"}
    with httpx.Client(headers=h, timeout=60) as http:
        images = http.get(f"{base}/image/v2/images").json()["images"]
        image = next(i["id"] for i in images if i["name"] == "tiny")
        flavors = http.get(f"{tenant.compute_url}/flavors").json()["flavors"]
        flavor = next(f["id"] for f in flavors if f["name"] == "m1.tiny")

        def create(networks: Any, **extra: Any) -> httpx.Response:
            body = {"name": "x", "imageRef": image, "flavorRef": flavor, "networks": networks}
            return http.post(f"{tenant.compute_url}/servers", json={"server": {**body, **extra}})

        def message(r: httpx.Response, status: int) -> str:
            assert r.status_code == status, r.text
            return str(next(iter(r.json().values()))["message"])

        # No network yet: "auto" gets the project its own network, once.
        r = create("auto")
        assert r.status_code == 202, r.text
        nets = http.get(f"{base}/network/v2.0/networks").json()["networks"]
        assert [n["name"] for n in nets] == ["auto_allocated_network"]
        auto = nets[0]["id"]
        assert create("auto").status_code == 202
        assert len(http.get(f"{base}/network/v2.0/networks").json()["networks"]) == 1

        bare = http.post(f"{base}/network/v2.0/networks", json={"network": {"name": "bare"}})
        bare_id = bare.json()["network"]["id"]
        assert message(create("auto"), 409) == (
            "Multiple possible networks found, use a Network ID to be more specific."
        )
        missing = "7f0c9a2e-0000-4000-8000-000000000001"
        assert message(create([{"uuid": missing}]), 400) == f"Network {missing} could not be found."
        assert message(create([{"uuid": bare_id}]), 400) == (
            f"Network {bare_id} requires a subnet in order to boot instances on."
        )
        assert message(create([{"port": missing}]), 400) == f"Port id {missing} could not be found."
        subnets = http.get(f"{base}/network/v2.0/subnets").json()["subnets"]
        cidr = next(s["cidr"] for s in subnets if s["network_id"] == auto)
        outside = "192.0.2.10"
        assert "is not in any subnet" in message(create([{"uuid": auto, "fixed_ip": outside}]), 400)
        prefix = cidr.rsplit(".", 1)[0]
        fixed = f"{prefix}.77"
        first = create([{"uuid": auto, "fixed_ip": fixed}])
        assert first.status_code == 202, first.text
        url = f"{tenant.compute_url}/servers/{first.json()['server']['id']}"
        # Its port is made once the host is chosen: from then on the address is taken.
        polling.wait_until(
            lambda: http.get(url).json()["server"]["status"] == "ACTIVE",
            polling.boot_s(),
            "the fixed-IP server ACTIVE",
            every=0.3,
        )
        assert "already in use" in message(create([{"uuid": auto, "fixed_ip": fixed}]), 400)
        port = http.post(
            f"{base}/network/v2.0/ports",
            json={"port": {"network_id": auto, "device_id": "someone-else"}},
        ).json()["port"]
        assert message(create([{"port": port["id"]}]), 409) == f"Port {port['id']} is still in use."
        assert (
            message(create([{"uuid": auto}], security_groups=[{"name": "nope"}]), 400)
            == "Unable to find security_group with name or id 'nope'"
        )

        r = create([{"uuid": auto}], security_groups=[{"name": "default"}])
        assert r.status_code == 202, r.text
        sid = r.json()["server"]["id"]
        listed = http.get(f"{tenant.compute_url}/servers/{sid}/os-interface")
        assert listed.status_code == 200, listed.text
        attach = http.post(
            f"{tenant.compute_url}/servers/{sid}/os-interface",
            json={"interfaceAttachment": {"net_id": auto}},
        )
        assert "not supported" in message(attach, 409)
