"""os-floating-ips, os-floating-ip-pools and the addFloatingIp / removeFloatingIp server
actions (the compute API's proxies, up to 2.35 and 2.43), through the whole stack: a
server on a tenant network behind a router to an external network."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from bench.client import resolve_cloud
from tests.e2e.test_openstack_clients import osc, ready_cloud  # noqa: F401 (a fixture)
from tests.support import polling
from tests.support.stack import Stack

pytestmark = pytest.mark.slow


def _message(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    return str(next(iter(r.json().values()))["message"])


@pytest.mark.timeout(900)
def test_a_floating_ip_is_allocated_from_a_pool_added_to_a_server_and_removed(
    ready_cloud: Stack,  # noqa: F811
) -> None:
    cloud = ready_cloud
    admin = resolve_cloud("loom-admin", cloud.data_dir / "clouds.yaml")
    tenant = resolve_cloud("loom", cloud.data_dir / "clouds.yaml")
    base = tenant.compute_url.split("/compute")[0]
    n = f"{base}/network/v2.0"
    c = tenant.compute_url
    old = {"X-Auth-Token": tenant.token, "OpenStack-API-Version": "compute 2.1"}
    with httpx.Client(timeout=60) as http:
        ah = {"X-Auth-Token": admin.token}
        ext = http.post(
            f"{n}/networks",
            json={"network": {"name": "public", "router:external": True}},
            headers=ah,
        ).json()["network"]
        r = http.post(
            f"{n}/subnets",
            json={
                "subnet": {
                    "network_id": ext["id"],
                    "ip_version": 4,
                    "cidr": "198.51.100.0/29",
                    "enable_dhcp": False,
                }
            },
            headers=ah,
        )
        assert r.status_code == 201, r.text

        h = {"X-Auth-Token": tenant.token}
        net = http.post(f"{n}/networks", json={"network": {"name": "inner"}}, headers=h).json()
        net_id = net["network"]["id"]
        sub = http.post(
            f"{n}/subnets",
            json={"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.44.0.0/24"}},
            headers=h,
        ).json()["subnet"]
        router = http.post(
            f"{n}/routers",
            json={"router": {"name": "r", "external_gateway_info": {"network_id": ext["id"]}}},
            headers=h,
        ).json()["router"]
        r = http.put(
            f"{n}/routers/{router['id']}/add_router_interface",
            json={"subnet_id": sub["id"]},
            headers=h,
        )
        assert r.status_code == 200, r.text

        pools = http.get(f"{c}/os-floating-ip-pools", headers=old)
        assert pools.status_code == 200, pools.text
        assert pools.json() == {"floating_ip_pools": [{"name": "public"}]}
        assert _message(
            http.post(f"{c}/os-floating-ips", json={"pool": "nope"}, headers=old), 404
        ) == ("Floating IP pool not found.")
        r = http.post(f"{c}/os-floating-ips", json={"pool": "public"}, headers=old)
        assert r.status_code == 200, r.text
        fip = r.json()["floating_ip"]
        assert fip["ip"].startswith("198.51.100.")
        assert (fip["pool"], fip["fixed_ip"], fip["instance_id"]) == ("public", None, None)
        # Without a pool: the only external network.
        r = http.post(f"{c}/os-floating-ips", headers=old)
        assert r.status_code == 200, r.text
        spare = r.json()["floating_ip"]
        listed = http.get(f"{c}/os-floating-ips", headers=old).json()["floating_ips"]
        assert sorted(f["id"] for f in listed) == sorted([fip["id"], spare["id"]])

        images = http.get(f"{base}/image/v2/images", headers=h).json()["images"]
        image = next(i["id"] for i in images if i["name"] == "tiny")
        server = http.post(
            f"{c}/servers",
            json={
                "server": {
                    "name": "fip-vm",
                    "imageRef": image,
                    "flavorRef": "1",
                    "networks": [{"uuid": net_id}],
                }
            },
            headers=old,
        )
        assert server.status_code == 202, server.text
        sid = server.json()["server"]["id"]
        url = f"{c}/servers/{sid}"

        def active() -> bool:
            return bool(http.get(url, headers=old).json()["server"]["status"] == "ACTIVE")

        polling.wait_until(active, polling.boot_s(), "the server ACTIVE", every=0.3)
        fixed = http.get(url, headers=old).json()["server"]["addresses"]["inner"][0]["addr"]

        def act(body: dict[str, Any], version: str = "2.1") -> httpx.Response:
            headers = {**old, "OpenStack-API-Version": f"compute {version}"}
            return http.post(f"{url}/action", json=body, headers=headers)

        assert _message(act({"removeFloatingIp": {"address": fip["ip"]}}), 409) == (
            f"Floating IP {fip['ip']} is not associated with instance {sid}."
        )
        assert "not assigned" in _message(
            act({"addFloatingIp": {"address": fip["ip"], "fixed_address": "10.44.0.250"}}), 400
        )
        assert "not an IP address" in _message(act({"addFloatingIp": {"address": "x"}}), 400)
        assert _message(act({"addFloatingIp": {"address": "192.0.2.1"}}), 404) == (
            "floating IP not found"
        )
        assert act({"addFloatingIp": {"address": fip["ip"]}}, "2.44").status_code == 404

        r = act({"addFloatingIp": {"address": fip["ip"]}})
        assert r.status_code == 202, r.text
        shown = http.get(f"{c}/os-floating-ips/{fip['id']}", headers=old).json()["floating_ip"]
        assert (shown["instance_id"], shown["fixed_ip"]) == (sid, fixed)
        neutron = http.get(f"{n}/floatingips/{fip['id']}", headers=h).json()["floatingip"]
        assert neutron["router_id"] == router["id"]

        r = act({"removeFloatingIp": {"address": fip["ip"]}})
        assert r.status_code == 202, r.text
        shown = http.get(f"{c}/os-floating-ips/{fip['id']}", headers=old).json()["floating_ip"]
        assert (shown["instance_id"], shown["fixed_ip"]) == (None, None)

        # Released while associated: it goes with its mapping.
        assert act({"addFloatingIp": {"address": spare["ip"]}}).status_code == 202
        r = http.delete(f"{c}/os-floating-ips/{spare['id']}", headers=old)
        assert r.status_code == 202, r.text
        assert http.get(f"{c}/os-floating-ips/{spare['id']}", headers=old).status_code == 404
        assert http.delete(f"{c}/os-floating-ips/{fip['id']}", headers=old).status_code == 202
        assert http.get(f"{c}/os-floating-ips", headers=old).json() == {"floating_ips": []}
        # Gone from 2.36, as in Nova.
        newer = {**old, "OpenStack-API-Version": "compute 2.36"}
        assert http.get(f"{c}/os-floating-ips", headers=newer).status_code == 404
        assert http.get(f"{c}/os-floating-ip-pools", headers=newer).status_code == 404
