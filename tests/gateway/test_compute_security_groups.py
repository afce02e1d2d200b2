"""os-security-groups and os-security-group-rules (the compute API's proxy to the network
service's groups, up to 2.35), on the in-process gateway over the real network service."""

from __future__ import annotations

from typing import Any

from tests.gateway.conftest import Cloud

C = "/compute/v2.1"
MISSING = "0b0c0d0e-0000-4000-8000-000000000000"


async def _group(cloud: Cloud, h: dict[str, str], name: str) -> dict[str, Any]:
    r = await cloud.client.post(
        f"{C}/os-security-groups",
        json={"security_group": {"name": name, "description": f"{name} servers"}},
        headers=h,
    )
    assert r.status_code == 200, r.text
    group: dict[str, Any] = r.json()["security_group"]
    return group


async def _rule(cloud: Cloud, h: dict[str, str], **rule: Any) -> Any:
    return await cloud.client.post(
        f"{C}/os-security-group-rules", json={"security_group_rule": rule}, headers=h
    )


async def test_groups_are_made_shown_renamed_listed_and_deleted_in_the_compute_shapes(
    cloud: Cloud,
) -> None:
    h = await cloud.headers("demo")
    web = await _group(cloud, h, "web")
    assert web["name"] == "web"
    assert web["description"] == "web servers"
    assert web["rules"] == [], "egress rules have no form in this API"
    assert web["tenant_id"]
    shown = (await cloud.client.get(f"{C}/os-security-groups/{web['id']}", headers=h)).json()
    assert shown["security_group"] == web
    r = await cloud.client.put(
        f"{C}/os-security-groups/{web['id']}",
        json={"security_group": {"name": "www", "description": "renamed"}},
        headers=h,
    )
    assert r.status_code == 200, r.text
    assert r.json()["security_group"]["name"] == "www"
    listed = (await cloud.client.get(f"{C}/os-security-groups", headers=h)).json()
    assert {"default", "www"} <= {g["name"] for g in listed["security_groups"]}
    r = await cloud.client.delete(f"{C}/os-security-groups/{web['id']}", headers=h)
    assert r.status_code == 202
    r = await cloud.client.get(f"{C}/os-security-groups/{web['id']}", headers=h)
    assert r.status_code == 404
    # The default group stays.
    default = next(g for g in listed["security_groups"] if g["name"] == "default")
    r = await cloud.client.delete(f"{C}/os-security-groups/{default['id']}", headers=h)
    assert r.status_code == 400, r.text
    # A name is checked without its surrounding spaces and kept as given.
    spaced = await _group(cloud, h, " spaced name ")
    assert spaced["name"] == " spaced name "
    # Gone from 2.36, as in Nova.
    r = await cloud.client.get(
        f"{C}/os-security-groups", headers=await cloud.headers("demo", "2.36")
    )
    assert r.status_code == 404


async def test_bad_group_names_and_descriptions_answer_400(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    for body in (
        {"name": "", "description": "d"},
        {"name": " ", "description": "d"},
        {"name": "x" * 260, "description": "d"},
        {"name": "ok", "description": "d" * 260},
        {"name": 5, "description": "d"},
    ):
        r = await cloud.client.post(
            f"{C}/os-security-groups", json={"security_group": body}, headers=h
        )
        assert r.status_code == 400, (body, r.text)
    for path in (f"{C}/os-security-groups/{MISSING}", f"{C}/os-security-groups/not-a-uuid"):
        assert (await cloud.client.get(path, headers=h)).status_code == 404


async def test_rules_allow_a_cidr_or_a_group_and_refuse_what_nova_refuses(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    web = await _group(cloud, h, "web")
    db = await _group(cloud, h, "db")
    r = await _rule(
        cloud, h, parent_group_id=web["id"], ip_protocol="tcp", from_port=22, to_port=22
    )
    assert r.status_code == 200, r.text
    ssh = r.json()["security_group_rule"]
    assert ssh["ip_range"] == {"cidr": "0.0.0.0/0"}
    assert (ssh["ip_protocol"], ssh["from_port"], ssh["to_port"]) == ("tcp", 22, 22)
    assert ssh["group"] == {}
    r = await _rule(cloud, h, parent_group_id=db["id"], ip_protocol="tcp", group_id=web["id"])
    assert r.status_code == 200, r.text
    from_web = r.json()["security_group_rule"]
    assert from_web["group"]["name"] == "web"
    assert (from_web["from_port"], from_web["to_port"]) == (1, 65535)
    assert from_web["ip_range"] == {}
    r = await _rule(
        cloud,
        h,
        parent_group_id=web["id"],
        ip_protocol="icmp",
        from_port=-1,
        to_port=-1,
        cidr="10.0.0.0/8",
    )
    assert r.status_code == 200, r.text
    icmp = r.json()["security_group_rule"]
    assert (icmp["from_port"], icmp["to_port"], icmp["ip_range"]) == (
        -1,
        -1,
        {"cidr": "10.0.0.0/8"},
    )
    # A cidr with host bits is shown as given.
    r = await _rule(
        cloud,
        h,
        parent_group_id=web["id"],
        ip_protocol="tcp",
        from_port=80,
        to_port=80,
        cidr="10.2.3.124/24",
    )
    assert r.status_code == 200, r.text
    http = r.json()["security_group_rule"]
    assert http["ip_range"] == {"cidr": "10.2.3.124/24"}
    shown = (await cloud.client.get(f"{C}/os-security-groups/{web['id']}", headers=h)).json()
    assert {r["id"] for r in shown["security_group"]["rules"]} == {
        ssh["id"],
        icmp["id"],
        http["id"],
    }

    refused = [
        dict(parent_group_id=web["id"], ip_protocol="tcp", from_port=22, to_port=22),  # exists
        dict(parent_group_id="not-a-uuid", ip_protocol="tcp", from_port=22, to_port=22),
        dict(parent_group_id=web["id"], ip_protocol="gre999", from_port=22, to_port=22),
        dict(parent_group_id=web["id"], ip_protocol="tcp", from_port=0, to_port=22),
        dict(parent_group_id=web["id"], ip_protocol="tcp", from_port=22, to_port=65536),
        dict(parent_group_id=web["id"], ip_protocol="tcp", from_port=80, to_port=22),
        dict(parent_group_id=web["id"], ip_protocol="tcp", from_port="x", to_port=22),
        dict(parent_group_id=web["id"], ip_protocol="icmp", from_port=256, to_port=0),
        dict(parent_group_id=web["id"], ip_protocol="tcp", cidr="10.0.0.0/8"),
        dict(parent_group_id=web["id"], ip_protocol="tcp", from_port=1, to_port=2, cidr="x"),
    ]
    for body in refused:
        r = await _rule(cloud, h, **body)
        assert r.status_code == 400, (body, r.text)
    r = await _rule(cloud, h, parent_group_id=MISSING, ip_protocol="tcp", from_port=1, to_port=2)
    assert r.status_code == 404, r.text

    r = await cloud.client.delete(f"{C}/os-security-group-rules/{ssh['id']}", headers=h)
    assert r.status_code == 202
    r = await cloud.client.delete(f"{C}/os-security-group-rules/{ssh['id']}", headers=h)
    assert r.status_code == 404
    # Deleting the source group takes the rules that name it.
    r = await cloud.client.delete(f"{C}/os-security-groups/{web['id']}", headers=h)
    assert r.status_code == 202, r.text
    shown = (await cloud.client.get(f"{C}/os-security-groups/{db['id']}", headers=h)).json()
    assert shown["security_group"]["rules"] == []


async def test_only_an_admin_asking_for_all_tenants_lists_other_projects_groups(
    cloud: Cloud,
) -> None:
    demo = await cloud.headers("demo")
    mine = await _group(cloud, demo, "demo-only")
    admin = await cloud.headers("admin")
    own = (await cloud.client.get(f"{C}/os-security-groups", headers=admin)).json()
    assert mine["id"] not in {g["id"] for g in own["security_groups"]}
    every = (
        await cloud.client.get(
            f"{C}/os-security-groups", params={"all_tenants": "1"}, headers=admin
        )
    ).json()
    assert mine["id"] in {g["id"] for g in every["security_groups"]}
    r = await cloud.client.get(f"{C}/os-security-groups/{mine['id']}", headers=admin)
    assert r.status_code == 200
