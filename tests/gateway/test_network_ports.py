"""Network v2.0 ports and policy edges: addresses by subnet, MACs, groups of other
projects, readers, and changes to a port's addresses."""

from __future__ import annotations

from typing import Any

import httpx

from tests.gateway.conftest import Cloud

N = "/network/v2.0"


async def _post(
    client: httpx.AsyncClient, h: dict[str, str], what: str, body: dict[str, Any]
) -> Any:
    key = {"networks": "network", "subnets": "subnet", "ports": "port"}[what]
    r = await client.post(f"{N}/{what}", json={key: body}, headers=h)
    assert r.status_code == 201, r.text
    return r.json()[key]


def _type(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    return str(r.json()["NeutronError"]["type"])


async def test_a_fixed_ip_on_another_networks_subnet_or_outside_the_cidr_is_refused(
    cloud: Cloud,
) -> None:
    h = await cloud.headers("demo")
    a = await _post(cloud.client, h, "networks", {"name": "a"})
    b = await _post(cloud.client, h, "networks", {"name": "b"})
    sub_b = await _post(
        cloud.client, h, "subnets", {"network_id": b["id"], "ip_version": 4, "cidr": "10.5.0.0/24"}
    )
    await _post(
        cloud.client, h, "subnets", {"network_id": a["id"], "ip_version": 4, "cidr": "10.4.0.0/24"}
    )
    for fixed in (
        {"subnet_id": sub_b["id"]},
        {"ip_address": "10.99.0.5"},
        {"ip_address": "10.4.0.255"},
        {"ip_address": "not-an-ip"},
    ):
        r = await cloud.client.post(
            f"{N}/ports", json={"port": {"network_id": a["id"], "fixed_ips": [fixed]}}, headers=h
        )
        assert _type(r, 400) == "InvalidInput", fixed
    # The gateway's address is a router's, not a server's.
    r = await cloud.client.post(
        f"{N}/ports",
        json={"port": {"network_id": a["id"], "fixed_ips": [{"ip_address": "10.4.0.1"}]}},
        headers=h,
    )
    assert _type(r, 409) == "IpAddressAlreadyAllocated"
    assert (await cloud.client.get(f"{N}/ports", headers=h)).json()["ports"] == []


async def test_an_explicit_mac_is_kept_and_a_second_port_with_it_is_refused(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    net = await _post(cloud.client, h, "networks", {"name": "a"})
    port = await _post(
        cloud.client, h, "ports", {"network_id": net["id"], "mac_address": "FA:16:3E:00:00:01"}
    )
    assert port["mac_address"] == "fa:16:3e:00:00:01"
    r = await cloud.client.post(
        f"{N}/ports",
        json={"port": {"network_id": net["id"], "mac_address": "fa:16:3e:00:00:01"}},
        headers=h,
    )
    assert _type(r, 409) == "MacAddressInUse"
    r = await cloud.client.post(
        f"{N}/ports",
        json={"port": {"network_id": net["id"], "mac_address": "01:00:5e:00:00:01"}},
        headers=h,
    )
    assert _type(r, 400) == "InvalidInput"


async def test_another_projects_network_subnet_port_and_group_answer_404(cloud: Cloud) -> None:
    admin = await cloud.headers("admin")
    net = await _post(cloud.client, admin, "networks", {"name": "private"})
    sub = await _post(
        cloud.client,
        admin,
        "subnets",
        {"network_id": net["id"], "ip_version": 4, "cidr": "10.6.0.0/24"},
    )
    port = await _post(cloud.client, admin, "ports", {"network_id": net["id"]})
    groups = (await cloud.client.get(f"{N}/security-groups", headers=admin)).json()[
        "security_groups"
    ]
    (admin_default,) = [g for g in groups if g["project_id"] == net["project_id"]]
    h = await cloud.headers("demo")
    for path, kind in (
        (f"networks/{net['id']}", "NetworkNotFound"),
        (f"subnets/{sub['id']}", "SubnetNotFound"),
        (f"ports/{port['id']}", "PortNotFound"),
        (f"security-groups/{admin_default['id']}", "SecurityGroupNotFound"),
    ):
        assert _type(await cloud.client.get(f"{N}/{path}", headers=h), 404) == kind
        assert _type(await cloud.client.delete(f"{N}/{path}", headers=h), 404) == kind
    r = await cloud.client.post(
        f"{N}/subnets",
        json={"subnet": {"network_id": net["id"], "ip_version": 4, "cidr": "10.7.0.0/24"}},
        headers=h,
    )
    assert _type(r, 404) == "NetworkNotFound"
    mine = await _post(cloud.client, h, "networks", {"name": "mine"})
    r = await cloud.client.post(
        f"{N}/ports",
        json={"port": {"network_id": mine["id"], "security_groups": [admin_default["id"]]}},
        headers=h,
    )
    assert _type(r, 404) == "SecurityGroupNotFound"
    assert (await cloud.client.get(f"{N}/ports", headers=h)).json()["ports"] == []


async def test_a_reader_may_list_but_not_create(cloud: Cloud) -> None:
    await cloud.make_user("watcher", "reader", "demo")
    h = {"X-Auth-Token": await cloud.token("watcher", project="demo", password="pw-watcher")}
    assert (await cloud.client.get(f"{N}/networks", headers=h)).status_code == 200
    r = await cloud.client.post(f"{N}/networks", json={"network": {"name": "x"}}, headers=h)
    assert _type(r, 403) == "HTTPForbidden"


async def test_changing_a_ports_fixed_ips_keeps_the_kept_and_frees_the_dropped(
    cloud: Cloud,
) -> None:
    h = await cloud.headers("demo")
    net = await _post(cloud.client, h, "networks", {"name": "a"})
    sub = await _post(
        cloud.client,
        h,
        "subnets",
        {"network_id": net["id"], "ip_version": 4, "cidr": "10.8.0.0/24"},
    )
    port = await _post(
        cloud.client,
        h,
        "ports",
        {
            "network_id": net["id"],
            "fixed_ips": [{"ip_address": "10.8.0.10"}, {"ip_address": "10.8.0.11"}],
        },
    )
    assert [f["ip_address"] for f in port["fixed_ips"]] == ["10.8.0.10", "10.8.0.11"]
    r = await cloud.client.put(
        f"{N}/ports/{port['id']}",
        json={
            "port": {
                "fixed_ips": [
                    {"ip_address": "10.8.0.11"},
                    {"subnet_id": sub["id"], "ip_address": "10.8.0.12"},
                ]
            }
        },
        headers=h,
    )
    assert r.status_code == 200, r.text
    assert sorted(f["ip_address"] for f in r.json()["port"]["fixed_ips"]) == [
        "10.8.0.11",
        "10.8.0.12",
    ]
    # The dropped address is free again.
    other = await _post(
        cloud.client,
        h,
        "ports",
        {"network_id": net["id"], "fixed_ips": [{"ip_address": "10.8.0.10"}]},
    )
    assert other["fixed_ips"][0]["ip_address"] == "10.8.0.10"
    r = await cloud.client.get(
        f"{N}/ports", params={"fixed_ips": "ip_address=10.8.0.12"}, headers=h
    )
    assert [p["id"] for p in r.json()["ports"]] == [port["id"]]


async def test_port_security_off_refuses_security_groups(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    net = await _post(cloud.client, h, "networks", {"name": "a", "port_security_enabled": False})
    port = await _post(cloud.client, h, "ports", {"network_id": net["id"]})
    assert port["port_security_enabled"] is False
    assert port["security_groups"] == []
    groups = (await cloud.client.get(f"{N}/security-groups", headers=h)).json()["security_groups"]
    r = await cloud.client.put(
        f"{N}/ports/{port['id']}", json={"port": {"security_groups": [groups[0]["id"]]}}, headers=h
    )
    assert _type(r, 409) == "PortSecurityAndIPRequiredForSecurityGroups"


async def test_allowed_address_pairs_are_kept_with_their_mac_or_the_ports_and_checked(
    cloud: Cloud,
) -> None:
    h = await cloud.headers("demo")
    net = await _post(cloud.client, h, "networks", {"name": "vip"})
    await _post(
        cloud.client,
        h,
        "subnets",
        {"network_id": net["id"], "ip_version": 4, "cidr": "10.4.0.0/24"},
    )
    port = await _post(
        cloud.client,
        h,
        "ports",
        {"network_id": net["id"], "allowed_address_pairs": [{"ip_address": "10.4.0.200"}]},
    )
    mac = port["mac_address"]
    assert port["allowed_address_pairs"] == [{"ip_address": "10.4.0.200", "mac_address": mac}]
    # An update replaces them; a network is kept as a CIDR.
    r = await cloud.client.put(
        f"{N}/ports/{port['id']}",
        json={
            "port": {
                "allowed_address_pairs": [
                    {"ip_address": "10.4.0.201/32"},
                    {"ip_address": "10.4.1.0/24", "mac_address": mac.upper()},
                ]
            }
        },
        headers=h,
    )
    assert r.status_code == 200, r.text
    assert r.json()["port"]["allowed_address_pairs"] == [
        {"ip_address": "10.4.0.201", "mac_address": mac},
        {"ip_address": "10.4.1.0/24", "mac_address": mac},
    ]
    shown = (await cloud.client.get(f"{N}/ports/{port['id']}", headers=h)).json()["port"]
    assert len(shown["allowed_address_pairs"]) == 2
    # A pair may name another MAC (a virtual router's), and one address may go with two MACs.
    other = [
        {"ip_address": "10.4.0.9", "mac_address": "fa:16:3e:00:00:01"},
        {"ip_address": "10.4.0.9", "mac_address": mac},
    ]
    r = await cloud.client.put(
        f"{N}/ports/{port['id']}", json={"port": {"allowed_address_pairs": other}}, headers=h
    )
    assert r.status_code == 200, r.text
    assert r.json()["port"]["allowed_address_pairs"] == other
    # Refused: a bad or multicast MAC, IPv6, garbage, duplicates, too many, and port
    # security off.
    for pairs, status, kind in (
        ([{"ip_address": "10.4.0.9", "mac_address": "not-a-mac"}], 400, "InvalidInput"),
        ([{"ip_address": "10.4.0.9", "mac_address": "01:00:5e:00:00:01"}], 400, "InvalidInput"),
        ([{"ip_address": "2001:db8::1"}], 400, "HTTPBadRequest"),
        ([{"ip_address": "not-an-ip"}], 400, "HTTPBadRequest"),
        ([{"ip_address": "10.4.0.9"}, {"ip_address": "10.4.0.9"}], 400,
         "DuplicateAddressPairInRequest"),
        ([{"ip_address": f"10.4.2.{i}"} for i in range(11)], 400, "AllowedAddressPairExhausted"),
    ):  # fmt: skip
        r = await cloud.client.put(
            f"{N}/ports/{port['id']}", json={"port": {"allowed_address_pairs": pairs}}, headers=h
        )
        assert _type(r, status) == kind, pairs
    r = await cloud.client.put(
        f"{N}/ports/{port['id']}",
        json={"port": {"port_security_enabled": False, "security_groups": []}},
        headers=h,
    )
    assert _type(r, 409) == "AddressPairAndPortSecurityRequired"
    r = await cloud.client.put(
        f"{N}/ports/{port['id']}", json={"port": {"allowed_address_pairs": []}}, headers=h
    )
    assert r.json()["port"]["allowed_address_pairs"] == []
    extensions = (await cloud.client.get(f"{N}/extensions", headers=h)).json()["extensions"]
    assert "allowed-address-pairs" in {e["alias"] for e in extensions}
