"""os-networks (the compute API's network proxy, up to 2.35) and /extensions, on the
in-process gateway over the real network service."""

from __future__ import annotations

from tests.gateway.conftest import Cloud

C = "/compute/v2.1"


async def test_os_networks_lists_and_shows_the_callers_networks_as_nova_over_neutron(
    cloud: Cloud,
) -> None:
    demo = await cloud.headers("demo")
    r = await cloud.client.post(
        "/network/v2.0/networks", json={"network": {"name": "blue"}}, headers=demo
    )
    assert r.status_code == 201, r.text
    net_id = r.json()["network"]["id"]
    listed = (await cloud.client.get(f"{C}/os-networks", headers=demo)).json()["networks"]
    mine = [n for n in listed if n["id"] == net_id]
    assert len(mine) == 1
    assert mine[0]["label"] == "blue"
    assert mine[0]["cidr"] is None
    assert "project_id" not in mine[0], "admin fields are for admins"
    shown = (await cloud.client.get(f"{C}/os-networks/{net_id}", headers=demo)).json()
    assert shown["network"] == mine[0]
    admin = await cloud.headers("admin")
    as_admin = (await cloud.client.get(f"{C}/os-networks/{net_id}", headers=admin)).json()
    assert as_admin["network"]["label"] == "blue"
    assert "project_id" in as_admin["network"]

    r = await cloud.client.get(
        f"{C}/os-networks/0b0c0d0e-0000-4000-8000-000000000000", headers=demo
    )
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["message"] == "Network not found"
    r = await cloud.client.get(f"{C}/os-networks", headers=await cloud.headers("demo", "2.36"))
    assert r.status_code == 404


async def test_os_tenant_networks_lists_and_shows_the_projects_networks_until_2_35(
    cloud: Cloud,
) -> None:
    demo = await cloud.headers("demo")
    r = await cloud.client.post(
        "/network/v2.0/networks", json={"network": {"name": "green"}}, headers=demo
    )
    net_id = r.json()["network"]["id"]
    listed = (await cloud.client.get(f"{C}/os-tenant-networks", headers=demo)).json()
    assert {"id": net_id, "label": "green", "cidr": None} in listed["networks"]
    shown = (await cloud.client.get(f"{C}/os-tenant-networks/{net_id}", headers=demo)).json()
    assert shown == {"network": {"id": net_id, "label": "green", "cidr": None}}
    other = await cloud.headers("admin")
    r = await cloud.client.get(f"{C}/os-tenant-networks/{net_id}", headers=other)
    assert r.status_code == 404, "another project's network, even to an admin"
    r = await cloud.client.delete(f"{C}/os-tenant-networks/{net_id}", headers=demo)
    assert r.status_code == 410
    r = await cloud.client.get(
        f"{C}/os-tenant-networks", headers=await cloud.headers("demo", "2.36")
    )
    assert r.status_code == 404


async def test_os_networks_changes_are_gone_as_in_nova(cloud: Cloud) -> None:
    admin = await cloud.headers("admin")
    for method, path, body in (
        ("POST", f"{C}/os-networks", {"network": {"label": "x"}}),
        ("POST", f"{C}/os-networks/add", {"id": "x"}),
        ("DELETE", f"{C}/os-networks/x", None),
        ("POST", f"{C}/os-networks/x/action", {"disassociate": None}),
    ):
        r = await cloud.client.request(method, path, json=body, headers=admin)
        assert r.status_code == 410, (method, path, r.text)
    r = await cloud.client.post(
        f"{C}/os-networks/x/action", json={"associate_host": "h"}, headers=admin
    )
    assert r.status_code == 400


async def test_extensions_list_and_show_what_loom_serves(cloud: Cloud) -> None:
    demo = await cloud.headers("demo")
    r = await cloud.client.get(f"{C}/extensions", headers=demo)
    assert r.status_code == 200, r.text
    found = r.json()["extensions"]
    assert [e["alias"] for e in found] == sorted(e["alias"] for e in found)
    assert "Hosts" in {e["name"] for e in found}
    assert set(found[0]) == {"alias", "description", "links", "name", "namespace", "updated"}
    r = await cloud.client.get(f"{C}/extensions/os-consoles", headers=demo)
    assert r.json()["extension"]["alias"] == "os-consoles"
    r = await cloud.client.get(f"{C}/extensions/os-fping", headers=demo)
    assert r.status_code == 404
