"""Network v2.0 through the gateway, on a real network service and PostgreSQL: CRUD,
validation, Neutron's error shapes, policy and the list conventions."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.gateway.conftest import Cloud

N = "/network/v2.0"


async def _net(
    client: httpx.AsyncClient, h: dict[str, str], name: str = "n1", **kw: Any
) -> dict[str, Any]:
    r = await client.post(f"{N}/networks", json={"network": {"name": name, **kw}}, headers=h)
    assert r.status_code == 201, r.text
    return dict(r.json()["network"])


async def _subnet(
    client: httpx.AsyncClient,
    h: dict[str, str],
    network_id: str,
    cidr: str = "10.0.0.0/24",
    **kw: Any,
) -> dict[str, Any]:
    r = await client.post(
        f"{N}/subnets",
        json={"subnet": {"network_id": network_id, "ip_version": 4, "cidr": cidr, **kw}},
        headers=h,
    )
    assert r.status_code == 201, r.text
    return dict(r.json()["subnet"])


def _neutron_error(r: httpx.Response, status: int, error_type: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["NeutronError"]
    assert err["type"] == error_type, err
    assert set(err) == {"type", "message", "detail"}
    return str(err["message"])


async def test_a_network_is_created_listed_shown_updated_and_deleted(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    net = await _net(cloud.client, h, "blue", mtu=1400)
    assert net["status"] == "ACTIVE"
    assert net["admin_state_up"] is True
    assert net["mtu"] == 1400
    assert net["shared"] is False
    assert net["router:external"] is False
    assert net["tenant_id"] == net["project_id"]
    assert net["revision_number"] == 1
    assert net["created_at"].endswith("Z")
    assert net["subnets"] == []
    listed = (await cloud.client.get(f"{N}/networks", headers=h)).json()["networks"]
    assert [n["id"] for n in listed] == [net["id"]]
    r = await cloud.client.put(
        f"{N}/networks/{net['id']}", json={"network": {"name": "green"}}, headers=h
    )
    assert r.status_code == 200
    assert r.json()["network"]["name"] == "green"
    assert r.json()["network"]["revision_number"] == 2
    assert (await cloud.client.delete(f"{N}/networks/{net['id']}", headers=h)).status_code == 204
    r = await cloud.client.get(f"{N}/networks/{net['id']}", headers=h)
    assert "could not be found" in _neutron_error(r, 404, "NetworkNotFound")


async def test_shared_and_router_external_are_refused_to_a_member(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    for attr in ("shared", "router:external"):
        r = await cloud.client.post(
            f"{N}/networks", json={"network": {"name": "x", attr: True}}, headers=h
        )
        _neutron_error(r, 403, "PolicyNotAuthorized")
    assert (await cloud.client.get(f"{N}/networks", headers=h)).json()["networks"] == []


async def test_an_unknown_attribute_is_refused_by_name(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    r = await cloud.client.post(
        f"{N}/networks", json={"network": {"name": "x", "provider:network_type": "vlan"}}, headers=h
    )
    assert "provider:network_type" in _neutron_error(r, 400, "HTTPBadRequest")


async def test_another_projects_network_answers_404_and_a_shared_one_is_seen(cloud: Cloud) -> None:
    admin = await cloud.headers("admin")
    private = await _net(cloud.client, admin, "admin-private")
    shared = await _net(cloud.client, admin, "public", shared=True)
    h = await cloud.headers("demo")
    r = await cloud.client.get(f"{N}/networks/{private['id']}", headers=h)
    _neutron_error(r, 404, "NetworkNotFound")
    listed = (await cloud.client.get(f"{N}/networks", headers=h)).json()["networks"]
    assert [n["id"] for n in listed] == [shared["id"]]
    # Seen, but not the tenant's to change.
    r = await cloud.client.delete(f"{N}/networks/{shared['id']}", headers=h)
    _neutron_error(r, 403, "PolicyNotAuthorized")
    # An admin sees every project's.
    listed = (await cloud.client.get(f"{N}/networks", headers=admin)).json()["networks"]
    assert {n["id"] for n in listed} == {private["id"], shared["id"]}


async def test_a_subnet_gets_the_first_address_as_gateway_and_the_rest_as_its_pool(
    cloud: Cloud,
) -> None:
    h = await cloud.headers("demo")
    net = await _net(cloud.client, h)
    sub = await _subnet(cloud.client, h, net["id"], dns_nameservers=["8.8.8.8"])
    assert sub["gateway_ip"] == "10.0.0.1"
    assert sub["allocation_pools"] == [{"start": "10.0.0.2", "end": "10.0.0.254"}]
    assert sub["enable_dhcp"] is True
    assert sub["ip_version"] == 4
    assert sub["dns_nameservers"] == ["8.8.8.8"]
    assert sub["host_routes"] == []
    shown = (await cloud.client.get(f"{N}/networks/{net['id']}", headers=h)).json()["network"]
    assert shown["subnets"] == [sub["id"]]
    nogw = await _subnet(cloud.client, h, net["id"], "10.0.1.0/24", gateway_ip=None)
    assert nogw["gateway_ip"] is None
    assert nogw["allocation_pools"] == [{"start": "10.0.1.1", "end": "10.0.1.254"}]


async def test_subnet_validation_answers_400_or_409_and_writes_nothing(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    net = await _net(cloud.client, h)
    await _subnet(cloud.client, h, net["id"], "10.0.0.0/24")
    bad = [
        ({"cidr": "10.0.0.5/24"}, 400, "InvalidInput"),
        ({"cidr": "10.0.0.0/33"}, 400, "InvalidInput"),
        ({"cidr": "not-a-cidr"}, 400, "InvalidInput"),
        ({"cidr": "10.0.0.0/25"}, 400, "InvalidInput"),  # overlaps the first
        ({"cidr": "10.1.0.0/24", "gateway_ip": "10.2.0.1"}, 400, "InvalidInput"),
        (
            {"cidr": "10.1.0.0/24", "allocation_pools": [{"start": "10.1.0.1", "end": "10.1.0.9"}]},
            409,
            "GatewayConflictWithAllocationPools",
        ),
        ({"cidr": "10.1.0.0/24", "dns_nameservers": ["x"]}, 400, "InvalidInput"),
    ]
    for extra, status, kind in bad:
        body = {"subnet": {"network_id": net["id"], "ip_version": 4, **extra}}
        r = await cloud.client.post(f"{N}/subnets", json=body, headers=h)
        _neutron_error(r, status, kind)
    r = await cloud.client.post(
        f"{N}/subnets",
        json={"subnet": {"network_id": net["id"], "ip_version": 6, "cidr": "fd00::/64"}},
        headers=h,
    )
    assert "IPv6" in _neutron_error(r, 400, "HTTPBadRequest")
    subnets = (await cloud.client.get(f"{N}/subnets", headers=h)).json()["subnets"]
    assert len(subnets) == 1


async def test_a_port_gets_a_mac_an_address_and_the_default_security_group(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    net = await _net(cloud.client, h)
    sub = await _subnet(cloud.client, h, net["id"])
    r = await cloud.client.post(
        f"{N}/ports", json={"port": {"network_id": net["id"], "name": "p1"}}, headers=h
    )
    assert r.status_code == 201, r.text
    port = r.json()["port"]
    assert port["mac_address"].startswith("fa:16:3e:")
    assert port["status"] == "DOWN"
    (fixed,) = port["fixed_ips"]
    assert fixed["subnet_id"] == sub["id"]
    assert fixed["ip_address"] != "10.0.0.1"
    assert "binding:host_id" not in port  # admin only
    groups = (await cloud.client.get(f"{N}/security-groups", headers=h)).json()["security_groups"]
    (default,) = groups
    assert default["name"] == "default"
    assert port["security_groups"] == [default["id"]]
    rules = {
        (r["direction"], r["ethertype"], r["remote_group_id"])
        for r in default["security_group_rules"]
    }
    assert rules == {
        ("egress", "IPv4", None),
        ("egress", "IPv6", None),
        ("ingress", "IPv4", default["id"]),
        ("ingress", "IPv6", default["id"]),
    }
    # The network keeps its port.
    r = await cloud.client.delete(f"{N}/networks/{net['id']}", headers=h)
    _neutron_error(r, 409, "NetworkInUse")
    r = await cloud.client.delete(f"{N}/subnets/{sub['id']}", headers=h)
    _neutron_error(r, 409, "SubnetInUse")
    assert (await cloud.client.delete(f"{N}/ports/{port['id']}", headers=h)).status_code == 204
    assert (await cloud.client.delete(f"{N}/networks/{net['id']}", headers=h)).status_code == 204


async def test_an_explicit_address_taken_answers_409_ip_address_already_allocated(
    cloud: Cloud,
) -> None:
    h = await cloud.headers("demo")
    net = await _net(cloud.client, h)
    sub = await _subnet(cloud.client, h, net["id"])
    body = {"port": {"network_id": net["id"], "fixed_ips": [{"ip_address": "10.0.0.50"}]}}
    r = await cloud.client.post(f"{N}/ports", json=body, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["port"]["fixed_ips"] == [{"subnet_id": sub["id"], "ip_address": "10.0.0.50"}]
    r = await cloud.client.post(f"{N}/ports", json=body, headers=h)
    _neutron_error(r, 409, "IpAddressAlreadyAllocated")
    ports = (await cloud.client.get(f"{N}/ports", headers=h)).json()["ports"]
    assert len(ports) == 1


async def test_binding_host_id_is_an_admins_and_binds_the_port(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    net = await _net(cloud.client, h)
    body = {"port": {"network_id": net["id"], "binding:host_id": "sim-1"}}
    r = await cloud.client.post(f"{N}/ports", json=body, headers=h)
    _neutron_error(r, 403, "PolicyNotAuthorized")
    r = await cloud.client.post(f"{N}/ports", json={"port": {"network_id": net["id"]}}, headers=h)
    port = r.json()["port"]
    assert port["fixed_ips"] == []  # no subnet yet
    admin = await cloud.headers("admin")
    r = await cloud.client.put(
        f"{N}/ports/{port['id']}", json={"port": {"binding:host_id": "sim-1"}}, headers=admin
    )
    assert r.status_code == 200, r.text
    assert r.json()["port"]["binding:host_id"] == "sim-1"
    assert r.json()["port"]["status"] == "ACTIVE"
    r = await cloud.client.get(f"{N}/ports", params={"binding:host_id": "sim-1"}, headers=admin)
    assert [p["id"] for p in r.json()["ports"]] == [port["id"]]


async def test_a_duplicate_rule_answers_409_security_group_rule_exists(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    r = await cloud.client.post(
        f"{N}/security-groups", json={"security_group": {"name": "web"}}, headers=h
    )
    assert r.status_code == 201, r.text
    group = r.json()["security_group"]
    assert len(group["security_group_rules"]) == 2  # egress v4 and v6
    rule = {
        "security_group_id": group["id"],
        "direction": "ingress",
        "protocol": "tcp",
        "port_range_min": 22,
        "port_range_max": 22,
        "remote_ip_prefix": "0.0.0.0/0",
    }
    r = await cloud.client.post(
        f"{N}/security-group-rules", json={"security_group_rule": rule}, headers=h
    )
    assert r.status_code == 201, r.text
    made = r.json()["security_group_rule"]
    assert made["ethertype"] == "IPv4"
    assert made["protocol"] == "tcp"
    r = await cloud.client.post(
        f"{N}/security-group-rules", json={"security_group_rule": rule}, headers=h
    )
    assert made["id"] in _neutron_error(r, 409, "SecurityGroupRuleExists")
    # Any address is the same rule as no prefix at all.
    no_prefix = {k: v for k, v in rule.items() if k != "remote_ip_prefix"}
    r = await cloud.client.post(
        f"{N}/security-group-rules", json={"security_group_rule": no_prefix}, headers=h
    )
    _neutron_error(r, 409, "SecurityGroupRuleExists")
    # A prefix with host bits is shown as given (its mask made explicit), and is the same
    # rule as its network.
    hosted = {**rule, "remote_ip_prefix": "10.2.3.124/24"}
    r = await cloud.client.post(
        f"{N}/security-group-rules", json={"security_group_rule": hosted}, headers=h
    )
    assert r.status_code == 201, r.text
    assert r.json()["security_group_rule"]["remote_ip_prefix"] == "10.2.3.124/24"
    as_network = {**rule, "remote_ip_prefix": "10.2.3.0/24"}
    r = await cloud.client.post(
        f"{N}/security-group-rules", json={"security_group_rule": as_network}, headers=h
    )
    _neutron_error(r, 409, "SecurityGroupRuleExists")
    one = {**rule, "remote_ip_prefix": "10.2.3.7"}
    r = await cloud.client.post(
        f"{N}/security-group-rules", json={"security_group_rule": one}, headers=h
    )
    assert r.json()["security_group_rule"]["remote_ip_prefix"] == "10.2.3.7/32"
    bad = {**rule, "port_range_min": 30, "port_range_max": 20}
    r = await cloud.client.post(
        f"{N}/security-group-rules", json={"security_group_rule": bad}, headers=h
    )
    _neutron_error(r, 400, "SecurityGroupInvalidPortRange")
    r = await cloud.client.delete(f"{N}/security-group-rules/{made['id']}", headers=h)
    assert r.status_code == 204
    r = await cloud.client.delete(f"{N}/security-groups/{group['id']}", headers=h)
    assert r.status_code == 204


async def test_invalid_rule_ports_and_icmp_values_answer_400_with_the_api_messages(
    cloud: Cloud,
) -> None:
    h = await cloud.headers("demo")
    r = await cloud.client.post(
        f"{N}/security-groups", json={"security_group": {"name": "ports"}}, headers=h
    )
    group = r.json()["security_group"]["id"]
    cases = [
        ("tcp", -16, 80, "Invalid value for port -16"),
        ("tcp", 80, 79, "port_range_min must be <= port_range_max"),
        ("tcp", 80, 65536, "Invalid value for port 65536"),
        ("tcp", None, 6, "port_range_min must be <= port_range_max"),
        ("tcp", -16, 65536, "Invalid value for port"),
        ("tcp", 0, 80, "Invalid value for port 0"),
        ("icmp", 1, 256, "Invalid value for ICMP code"),
        ("icmp", -1, 25, "Invalid value"),
        ("icmp", None, 6, "ICMP type (port-range-min) is missing"),
        ("icmp", 300, 1, "Invalid value for ICMP type"),
        ("tcp", 10**12, 80, "Invalid input"),
    ]
    for protocol, low, high, message in cases:
        rule = {
            "security_group_id": group,
            "direction": "ingress",
            "protocol": protocol,
            "port_range_min": low,
            "port_range_max": high,
        }
        r = await cloud.client.post(
            f"{N}/security-group-rules", json={"security_group_rule": rule}, headers=h
        )
        assert r.status_code == 400, (protocol, low, high, r.text)
        assert message in r.json()["NeutronError"]["message"], (protocol, low, high, r.text)


async def test_lists_filter_by_attribute_cut_to_fields_and_page_with_links(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    made = [await _net(cloud.client, h, f"net{i}") for i in range(5)]
    r = await cloud.client.get(f"{N}/networks", params={"name": "net3"}, headers=h)
    assert [n["id"] for n in r.json()["networks"]] == [made[3]["id"]]
    r = await cloud.client.get(
        f"{N}/networks", params=[("fields", "id"), ("fields", "name")], headers=h
    )
    assert all(set(n) == {"id", "name"} for n in r.json()["networks"])
    seen: list[str] = []
    url: str | None = f"{N}/networks?limit=2"
    while url:
        body = (await cloud.client.get(url, headers=h)).json()
        seen += [n["id"] for n in body["networks"]]
        links = body.get("networks_links", [])
        url = next((link["href"] for link in links if link["rel"] == "next"), None)
    assert seen == sorted(n["id"] for n in made)
    r = await cloud.client.get(f"{N}/networks", params={"colour": "red"}, headers=h)
    _neutron_error(r, 400, "HTTPBadRequest")


async def test_quotas_show_defaults_and_an_admin_update_is_enforced(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    net = await _net(cloud.client, h)
    project = net["project_id"]
    r = await cloud.client.get(f"{N}/quotas/{project}", headers=h)
    assert r.json()["quota"] == {
        "floatingip": 50,
        "network": 100,
        "port": 500,
        "router": 10,
        "security_group": 10,
        "security_group_rule": 100,
        "subnet": 100,
    }
    r = await cloud.client.put(f"{N}/quotas/{project}", json={"quota": {"network": 1}}, headers=h)
    _neutron_error(r, 403, "HTTPForbidden")
    admin = await cloud.headers("admin")
    r = await cloud.client.put(
        f"{N}/quotas/{project}", json={"quota": {"network": 1}}, headers=admin
    )
    assert r.status_code == 200
    assert r.json()["quota"]["network"] == 1
    r = await cloud.client.post(f"{N}/networks", json={"network": {"name": "two"}}, headers=h)
    _neutron_error(r, 409, "OverQuota")
    details = (await cloud.client.get(f"{N}/quotas/{project}/details.json", headers=h)).json()
    assert details["quota"]["network"] == {"limit": 1, "used": 1, "reserved": 0}
    r = await cloud.client.delete(f"{N}/quotas/{project}", headers=admin)
    assert r.status_code == 204
    r = await cloud.client.get(f"{N}/quotas/{project}/default", headers=h)
    assert r.json()["quota"]["network"] == 100


async def test_versions_extensions_and_the_catalog_name_the_network_api(cloud: Cloud) -> None:
    r = await cloud.client.get("/network/")
    (version,) = r.json()["versions"]
    assert version["id"] == "v2.0"
    assert version["links"][0]["href"].endswith("/network/v2.0/")
    h = await cloud.headers("demo")
    aliases = {
        e["alias"]
        for e in (await cloud.client.get(f"{N}/extensions", headers=h)).json()["extensions"]
    }
    assert {"security-group", "quotas", "binding", "external-net", "router"} <= aliases
    assert "dvr" not in aliases
    r = await cloud.client.get(f"{N}/extensions/dvr", headers=h)
    _neutron_error(r, 404, "HTTPNotFound")
    r = await cloud.client.post(
        "/identity/v3/auth/tokens",
        json={
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": "demo",
                            "domain": {"id": "default"},
                            "password": cloud.seed.user("demo").password,  # type: ignore[union-attr]
                        }
                    },
                },
                "scope": {"project": {"name": "demo", "domain": {"id": "default"}}},
            }
        },
    )
    services = {s["type"]: s for s in r.json()["token"]["catalog"]}
    assert services["network"]["name"] == "neutron"
    r = await cloud.client.get(f"{N}/networks")
    _neutron_error(r, 401, "HTTPUnauthorized")


async def test_a_project_id_longer_than_the_tables_hold_is_a_400_not_a_500(cloud: Cloud) -> None:
    admin = await cloud.headers("admin")
    long_id = "p" * 100
    r = await cloud.client.put(
        f"{N}/quotas/{long_id}", json={"quota": {"network": 5}}, headers=admin
    )
    _neutron_error(r, 400, "InvalidInput")
    r = await cloud.client.post(
        f"{N}/networks", json={"network": {"name": "x", "project_id": long_id}}, headers=admin
    )
    _neutron_error(r, 400, "InvalidInput")


async def test_a_list_without_limit_is_cut_to_the_largest_page_with_a_next_link(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.network import common

    monkeypatch.setattr(common, "MAX_PAGE", 2)
    h = await cloud.headers("demo")
    made = sorted([(await _net(cloud.client, h, f"n{i}"))["id"] for i in range(3)])
    body = (await cloud.client.get(f"{N}/networks", headers=h)).json()
    assert [n["id"] for n in body["networks"]] == made[:2]
    (link,) = body["networks_links"]
    assert link["rel"] == "next"
    rest = (await cloud.client.get(link["href"], headers=h)).json()
    assert [n["id"] for n in rest["networks"]] == made[2:]


async def test_a_lone_surrogate_in_a_body_is_a_400_not_a_500(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    r = await cloud.client.post(
        f"{N}/networks",
        content=b'{"network": {"name": "\\ud800"}}',
        headers={**h, "content-type": "application/json"},
    )
    _neutron_error(r, 400, "HTTPBadRequest")


async def test_a_sorted_list_pages_in_its_own_order(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    for name in ("b", "d", "a", "c"):
        await _net(cloud.client, h, name)
    seen: list[str] = []
    url: str | None = f"{N}/networks?sort_key=name&sort_dir=desc&limit=3"
    while url:
        body = (await cloud.client.get(url, headers=h)).json()
        seen += [n["name"] for n in body["networks"]]
        url = next((x["href"] for x in body.get("networks_links", []) if x["rel"] == "next"), None)
    assert seen == ["d", "c", "b", "a"]


async def test_tags_are_refused_with_a_reason(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    net = await _net(cloud.client, h)
    r = await cloud.client.put(f"{N}/networks/{net['id']}/tags/blue", headers=h)
    assert "not supported" in _neutron_error(r, 404, "HTTPNotFound")
    r = await cloud.client.get(f"{N}/networks", params={"tags": "blue"}, headers=h)
    _neutron_error(r, 400, "HTTPBadRequest")


async def test_a_subnets_pools_can_change_and_new_ports_come_from_the_new_pools(
    cloud: Cloud,
) -> None:
    h = await cloud.headers("demo")
    net = await _net(cloud.client, h)
    sub = await _subnet(cloud.client, h, net["id"], "10.40.0.0/24")
    pools = [{"start": "10.40.0.100", "end": "10.40.0.100"}]
    r = await cloud.client.put(
        f"{N}/subnets/{sub['id']}", json={"subnet": {"allocation_pools": pools}}, headers=h
    )
    assert r.status_code == 200, r.text
    assert r.json()["subnet"]["allocation_pools"] == pools
    r = await cloud.client.post(f"{N}/ports", json={"port": {"network_id": net["id"]}}, headers=h)
    assert r.json()["port"]["fixed_ips"][0]["ip_address"] == "10.40.0.100"
    r = await cloud.client.put(
        f"{N}/subnets/{sub['id']}",
        json={"subnet": {"allocation_pools": [{"start": "10.40.0.1", "end": "10.40.0.9"}]}},
        headers=h,
    )
    _neutron_error(r, 409, "GatewayConflictWithAllocationPools")


async def test_bulk_creates_make_every_network_subnet_and_port_in_order(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    r = await cloud.client.post(
        f"{N}/networks", json={"networks": [{"name": "b1"}, {"name": "b2", "mtu": 1400}]}, headers=h
    )
    assert r.status_code == 201, r.text
    nets = r.json()["networks"]
    assert [(n["name"], n["mtu"]) for n in nets] == [("b1", 1450), ("b2", 1400)]
    r = await cloud.client.post(
        f"{N}/subnets",
        json={
            "subnets": [
                {"network_id": nets[0]["id"], "ip_version": 4, "cidr": "10.20.0.0/24"},
                {"network_id": nets[1]["id"], "ip_version": 4, "cidr": "10.21.0.0/24"},
            ]
        },
        headers=h,
    )
    assert r.status_code == 201, r.text
    assert [s["cidr"] for s in r.json()["subnets"]] == ["10.20.0.0/24", "10.21.0.0/24"]
    r = await cloud.client.post(
        f"{N}/ports",
        json={"ports": [{"network_id": nets[0]["id"]}, {"network_id": nets[0]["id"]}]},
        headers=h,
    )
    assert r.status_code == 201, r.text
    made = r.json()["ports"]
    addresses = [p["fixed_ips"][0]["ip_address"] for p in made]
    assert len(set(addresses)) == 2
    assert all(a.startswith("10.20.0.") for a in addresses)
    assert all(p["security_groups"] for p in made)  # each got the project's default group
    listed = (await cloud.client.get(f"{N}/ports", headers=h)).json()["ports"]
    assert sorted(p["id"] for p in listed) == sorted(p["id"] for p in made)


async def test_a_bulk_create_with_one_bad_item_makes_none_of_them(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    net = await _net(cloud.client, h)
    await _subnet(cloud.client, h, net["id"], "10.30.0.0/24")
    # The second subnet overlaps the first: the service refuses it, and the third is not made.
    r = await cloud.client.post(
        f"{N}/subnets",
        json={
            "subnets": [
                {"network_id": net["id"], "ip_version": 4, "cidr": "10.31.0.0/24"},
                {"network_id": net["id"], "ip_version": 4, "cidr": "10.30.0.0/25"},
            ]
        },
        headers=h,
    )
    _neutron_error(r, 400, "InvalidInput")
    subnets = (await cloud.client.get(f"{N}/subnets", headers=h)).json()["subnets"]
    assert [s["cidr"] for s in subnets] == ["10.30.0.0/24"]
    # A port asking for an address another port of the same request takes.
    r = await cloud.client.post(
        f"{N}/ports",
        json={
            "ports": [
                {"network_id": net["id"], "fixed_ips": [{"ip_address": "10.30.0.50"}]},
                {"network_id": net["id"], "fixed_ips": [{"ip_address": "10.30.0.50"}]},
            ]
        },
        headers=h,
    )
    _neutron_error(r, 409, "IpAddressAlreadyAllocated")
    assert (await cloud.client.get(f"{N}/ports", headers=h)).json()["ports"] == []
    # An item the gateway refuses (an unknown attribute) stops the whole request too.
    r = await cloud.client.post(
        f"{N}/networks", json={"networks": [{"name": "ok"}, {"colour": "red"}]}, headers=h
    )
    assert "colour" in _neutron_error(r, 400, "HTTPBadRequest")
    names = [
        n["name"] for n in (await cloud.client.get(f"{N}/networks", headers=h)).json()["networks"]
    ]
    assert names == ["n1"]


async def test_a_bulk_body_must_be_a_non_empty_list_of_objects(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    for body in ({"networks": []}, {"networks": {"name": "x"}}, {"networks": ["x"]}):
        r = await cloud.client.post(f"{N}/networks", json=body, headers=h)
        _neutron_error(r, 400, "HTTPBadRequest")
    r = await cloud.client.post(
        f"{N}/networks", json={"networks": [{"name": str(i)} for i in range(101)]}, headers=h
    )
    assert "at most 100" in _neutron_error(r, 400, "HTTPBadRequest")
    assert (await cloud.client.get(f"{N}/networks", headers=h)).json()["networks"] == []
