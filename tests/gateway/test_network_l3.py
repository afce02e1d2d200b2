"""Routers and floating IPs through /network/v2.0 (API and IPAM): a gateway on an external
network, interfaces holding their subnet's gateway address, floating IPs allocated from the
external network and associated through a router that reaches the port."""

from __future__ import annotations

from typing import Any

import httpx

from tests.gateway.conftest import Cloud

N = "/network/v2.0"
KEYS = {
    "networks": "network",
    "subnets": "subnet",
    "ports": "port",
    "routers": "router",
    "floatingips": "floatingip",
}


async def _post(
    client: httpx.AsyncClient, h: dict[str, str], what: str, body: dict[str, Any]
) -> Any:
    r = await client.post(f"{N}/{what}", json={KEYS[what]: body}, headers=h)
    assert r.status_code == 201, r.text
    return r.json()[KEYS[what]]


def _type(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    return str(r.json()["NeutronError"]["type"])


async def _external(cloud: Cloud) -> tuple[dict[str, Any], dict[str, Any]]:
    admin = await cloud.headers("admin")
    ext = await _post(cloud.client, admin, "networks", {"name": "public", "router:external": True})
    sub = await _post(
        cloud.client,
        admin,
        "subnets",
        {"network_id": ext["id"], "ip_version": 4, "cidr": "203.0.113.0/29", "enable_dhcp": False},
    )
    return ext, sub


async def test_every_project_sees_an_external_networks_subnets_marked_external(
    cloud: Cloud,
) -> None:
    ext, ext_sub = await _external(cloud)
    h = await cloud.headers("demo")
    own = await _post(cloud.client, h, "networks", {"name": "own"})
    own_sub = await _post(
        cloud.client,
        h,
        "subnets",
        {"network_id": own["id"], "ip_version": 4, "cidr": "10.9.0.0/24"},
    )
    aliases = {
        e["alias"]
        for e in (await cloud.client.get(f"{N}/extensions", headers=h)).json()["extensions"]
    }
    assert "subnet-external-network" in aliases
    listed = (
        await cloud.client.get(f"{N}/subnets", params={"network_id": ext["id"]}, headers=h)
    ).json()["subnets"]
    assert [(s["id"], s["router:external"]) for s in listed] == [(ext_sub["id"], True)]
    shown = (await cloud.client.get(f"{N}/subnets/{own_sub['id']}", headers=h)).json()
    assert shown["subnet"]["router:external"] is False
    assert own_sub["router:external"] is False


async def test_a_router_gets_a_gateway_and_interfaces_holding_each_subnets_gateway(
    cloud: Cloud,
) -> None:
    ext, ext_sub = await _external(cloud)
    h = await cloud.headers("demo")
    # The external network is seen by every tenant, but ports on it are not theirs to make.
    seen = (
        await cloud.client.get(f"{N}/networks", params={"router:external": "true"}, headers=h)
    ).json()
    assert [n["id"] for n in seen["networks"]] == [ext["id"]]
    r = await cloud.client.post(f"{N}/ports", json={"port": {"network_id": ext["id"]}}, headers=h)
    assert _type(r, 403) == "PolicyNotAuthorized"
    router = await _post(
        cloud.client,
        h,
        "routers",
        {"name": "r1", "external_gateway_info": {"network_id": ext["id"]}},
    )
    gw = router["external_gateway_info"]
    assert gw["network_id"] == ext["id"]
    assert gw["enable_snat"] is True
    ((gw_ip),) = gw["external_fixed_ips"]
    assert gw_ip["subnet_id"] == ext_sub["id"]
    assert gw_ip["ip_address"].startswith("203.0.113.")
    net = await _post(cloud.client, h, "networks", {"name": "inside"})
    sub = await _post(
        cloud.client,
        h,
        "subnets",
        {"network_id": net["id"], "ip_version": 4, "cidr": "10.30.0.0/24"},
    )
    r = await cloud.client.put(
        f"{N}/routers/{router['id']}/add_router_interface", json={"subnet_id": sub["id"]}, headers=h
    )
    assert r.status_code == 200, r.text
    iface = r.json()
    assert iface["id"] == router["id"]
    assert iface["subnet_ids"] == [sub["id"]]
    port = (await cloud.client.get(f"{N}/ports/{iface['port_id']}", headers=h)).json()["port"]
    assert port["device_owner"] == "network:router_interface"
    assert port["device_id"] == router["id"]
    assert port["fixed_ips"] == [{"subnet_id": sub["id"], "ip_address": "10.30.0.1"}]
    # Twice is refused.
    r = await cloud.client.put(
        f"{N}/routers/{router['id']}/add_router_interface", json={"subnet_id": sub["id"]}, headers=h
    )
    assert _type(r, 400) == "BadRequest"
    # The interface's port is the router's, not the port API's.
    assert (
        _type(await cloud.client.delete(f"{N}/ports/{port['id']}", headers=h), 409)
        == "ServicePortInUse"
    )
    assert (
        _type(await cloud.client.delete(f"{N}/routers/{router['id']}", headers=h), 409)
        == "RouterInUse"
    )
    r = await cloud.client.put(
        f"{N}/routers/{router['id']}/remove_router_interface",
        json={"subnet_id": sub["id"]},
        headers=h,
    )
    assert r.status_code == 200, r.text
    assert (await cloud.client.get(f"{N}/ports/{port['id']}", headers=h)).status_code == 404
    assert (await cloud.client.delete(f"{N}/routers/{router['id']}", headers=h)).status_code == 204
    # The gateway's address went back to the external subnet.
    admin = await cloud.headers("admin")
    ports = (
        await cloud.client.get(f"{N}/ports", params={"network_id": ext["id"]}, headers=admin)
    ).json()["ports"]
    assert ports == []


async def test_deleting_an_external_network_takes_its_unassociated_floating_ips_with_it(
    cloud: Cloud,
) -> None:
    ext, ext_sub = await _external(cloud)
    admin = await cloud.headers("admin")
    fip = await _post(cloud.client, admin, "floatingips", {"floating_network_id": ext["id"]})
    r = await cloud.client.delete(f"{N}/networks/{ext['id']}", headers=admin)
    assert r.status_code == 204, r.text
    r = await cloud.client.get(f"{N}/floatingips/{fip['id']}", headers=admin)
    assert _type(r, 404) == "FloatingIPNotFound"
    r = await cloud.client.get(f"{N}/subnets/{ext_sub['id']}", headers=admin)
    assert r.status_code == 404
    # A router's gateway on it keeps an external network in use.
    ext, _ = await _external(cloud)
    router = await _post(
        cloud.client,
        admin,
        "routers",
        {"name": "r", "external_gateway_info": {"network_id": ext["id"]}},
    )
    r = await cloud.client.delete(f"{N}/networks/{ext['id']}", headers=admin)
    assert _type(r, 409) == "NetworkInUse"
    r = await cloud.client.delete(f"{N}/routers/{router['id']}", headers=admin)
    assert r.status_code == 204, r.text
    r = await cloud.client.delete(f"{N}/networks/{ext['id']}", headers=admin)
    assert r.status_code == 204, r.text


async def test_a_floating_ip_comes_from_the_external_network_and_maps_to_a_reachable_port(
    cloud: Cloud,
) -> None:
    ext, _ext_sub = await _external(cloud)
    h = await cloud.headers("demo")
    net = await _post(cloud.client, h, "networks", {"name": "inside"})
    sub = await _post(
        cloud.client,
        h,
        "subnets",
        {"network_id": net["id"], "ip_version": 4, "cidr": "10.31.0.0/24"},
    )
    vm_port = await _post(cloud.client, h, "ports", {"network_id": net["id"]})
    fip = await _post(cloud.client, h, "floatingips", {"floating_network_id": ext["id"]})
    assert fip["floating_ip_address"].startswith("203.0.113.")
    assert fip["port_id"] is None
    assert fip["status"] == "DOWN"
    # No router joins the subnet to the external network yet.
    r = await cloud.client.put(
        f"{N}/floatingips/{fip['id']}", json={"floatingip": {"port_id": vm_port["id"]}}, headers=h
    )
    assert _type(r, 404) == "ExternalGatewayForFloatingIPNotFound"
    router = await _post(
        cloud.client,
        h,
        "routers",
        {"name": "r1", "external_gateway_info": {"network_id": ext["id"]}},
    )
    r = await cloud.client.put(
        f"{N}/routers/{router['id']}/add_router_interface", json={"subnet_id": sub["id"]}, headers=h
    )
    assert r.status_code == 200, r.text
    r = await cloud.client.put(
        f"{N}/floatingips/{fip['id']}", json={"floatingip": {"port_id": vm_port["id"]}}, headers=h
    )
    assert r.status_code == 200, r.text
    linked = r.json()["floatingip"]
    assert linked["port_id"] == vm_port["id"]
    assert linked["router_id"] == router["id"]
    assert linked["fixed_ip_address"] == vm_port["fixed_ips"][0]["ip_address"]
    # One fixed address, one floating IP.
    second = await _post(cloud.client, h, "floatingips", {"floating_network_id": ext["id"]})
    r = await cloud.client.put(
        f"{N}/floatingips/{second['id']}",
        json={"floatingip": {"port_id": vm_port["id"]}},
        headers=h,
    )
    assert _type(r, 409) == "FloatingIPPortAlreadyAssociated"
    # The router's interface is needed while the floating IP uses it.
    r = await cloud.client.put(
        f"{N}/routers/{router['id']}/remove_router_interface",
        json={"subnet_id": sub["id"]},
        headers=h,
    )
    assert _type(r, 409) == "RouterInterfaceInUseByFloatingIP"
    # Deleting the port leaves the floating IP allocated and unassociated.
    assert (await cloud.client.delete(f"{N}/ports/{vm_port['id']}", headers=h)).status_code == 204
    shown = (await cloud.client.get(f"{N}/floatingips/{fip['id']}", headers=h)).json()["floatingip"]
    assert shown["port_id"] is None
    assert shown["router_id"] is None
    # A /29 has five addresses past its gateway: the router took one, two floating IPs two.
    third = await _post(cloud.client, h, "floatingips", {"floating_network_id": ext["id"]})
    fourth = await _post(cloud.client, h, "floatingips", {"floating_network_id": ext["id"]})
    r = await cloud.client.post(
        f"{N}/floatingips", json={"floatingip": {"floating_network_id": ext["id"]}}, headers=h
    )
    assert _type(r, 409) == "IpAddressGenerationFailure"
    addresses = {f["floating_ip_address"] for f in (fip, second, third, fourth)}
    assert len(addresses) == 4
    for f in (fip, second, third, fourth):
        assert (
            await cloud.client.delete(f"{N}/floatingips/{f['id']}", headers=h)
        ).status_code == 204
    assert (await cloud.client.get(f"{N}/floatingips", headers=h)).json()["floatingips"] == []


async def test_a_floating_ip_from_a_network_that_is_not_external_is_refused(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    net = await _post(cloud.client, h, "networks", {"name": "inside"})
    r = await cloud.client.post(
        f"{N}/floatingips", json={"floatingip": {"floating_network_id": net["id"]}}, headers=h
    )
    assert _type(r, 400) == "BadRequest"
    r = await cloud.client.post(
        f"{N}/routers",
        json={"router": {"external_gateway_info": {"network_id": net["id"]}}},
        headers=h,
    )
    assert _type(r, 400) == "BadRequest"
    assert (await cloud.client.get(f"{N}/routers", headers=h)).json()["routers"] == []
