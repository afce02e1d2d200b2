"""Unmodified OpenStack clients (openstack CLI, openstacksdk, novaclient 2.96) drive Loom."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import wait_for_hosts
from tests.support import polling
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

OPENSTACK = str(Path(sys.executable).parent / "openstack")


def _env(cloud: Stack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "LOOM_"))}
    env["OS_CLIENT_CONFIG_FILE"] = str(cloud.data_dir / "clouds.yaml")
    return env


def osc(cloud: Stack, *args: str, admin: bool = False) -> Any:
    """Runs the openstack CLI; returns parsed JSON when asked for (-f json), else the text."""
    name = "loom-admin" if admin else "loom"
    proc = subprocess.run(
        [OPENSTACK, "--os-cloud", name, *args],
        env=_env(cloud),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"openstack {' '.join(args)}: {proc.stderr}"
    out = proc.stdout.strip()
    return json.loads(out) if "json" in args else out


@contextmanager
def _sdk(cloud: Stack, name: str) -> Iterator[Any]:
    """An openstacksdk connection to the cloud named in the stack's clouds.yaml."""
    import openstack

    os.environ["OS_CLIENT_CONFIG_FILE"] = str(cloud.data_dir / "clouds.yaml")
    try:
        conn = openstack.connect(cloud=name)
        try:
            yield conn
        finally:
            conn.close()
    finally:
        os.environ.pop("OS_CLIENT_CONFIG_FILE", None)


def _status(cloud: Stack, name: str) -> str:
    return str(osc(cloud, "server", "show", name, "-f", "value", "-c", "status"))


def _wait_status(cloud: Stack, name: str, status: str, within: float = polling.boot_s()) -> None:
    polling.wait_until(
        lambda: _status(cloud, name) == status, within, f"{name} {status}", every=0.3
    )


@pytest.fixture
async def ready_cloud(cloud: Stack, tmp_path: Path) -> Stack:
    await wait_for_hosts(cloud, 3)
    image = tmp_path / "tiny.raw"
    image.write_bytes(b"\0" * 65536)
    osc(
        cloud,
        "image",
        "create",
        "--file",
        str(image),
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "--public",
        "tiny",
        "-f",
        "json",
        admin=True,
    )
    return cloud


def test_the_openstack_cli_runs_a_server_through_its_whole_life(ready_cloud: Stack) -> None:
    cloud = ready_cloud
    flavors = osc(cloud, "flavor", "list", "-f", "json")
    assert "m1.tiny" in {f["Name"] for f in flavors}
    key = osc(cloud, "keypair", "create", "k1")
    assert "PRIVATE KEY" in key

    server = osc(
        cloud,
        "server",
        "create",
        "--flavor",
        "m1.tiny",
        "--image",
        "tiny",
        "--key-name",
        "k1",
        "--wait",
        "vm1",
        "-f",
        "json",
    )
    assert server["status"] == "ACTIVE"
    assert [s["Name"] for s in osc(cloud, "server", "list", "-f", "json")] == ["vm1"]
    shown = osc(cloud, "server", "show", "vm1", "-f", "json")
    assert shown["key_name"] == "k1"
    # The CLI prints the embedded flavor (microversion 2.47 and later) as an object.
    flavor = shown["flavor"]
    assert (flavor["name"] if isinstance(flavor, dict) else flavor).startswith("m1.tiny")

    osc(cloud, "server", "stop", "vm1")
    _wait_status(cloud, "vm1", "SHUTOFF")
    osc(cloud, "server", "start", "vm1")
    _wait_status(cloud, "vm1", "ACTIVE")
    osc(cloud, "server", "reboot", "--hard", "--wait", "vm1")
    assert _status(cloud, "vm1") == "ACTIVE"
    osc(cloud, "server", "reboot", "--wait", "vm1")
    assert _status(cloud, "vm1") == "ACTIVE"

    limits = {
        r["Name"]: r["Value"] for r in osc(cloud, "limits", "show", "--absolute", "-f", "json")
    }
    # The CLI's column names differ by release: the API's or its own snake_case ones.
    assert limits.get("totalInstancesUsed", limits.get("instances_used")) == 1
    quota = osc(cloud, "quota", "show", "-f", "json")
    assert quota, "quota show printed nothing"

    osc(cloud, "server", "delete", "--wait", "vm1")
    assert osc(cloud, "server", "list", "-f", "json") == []


def test_the_openstack_cli_shows_the_fleet_to_an_admin(ready_cloud: Stack) -> None:
    cloud = ready_cloud
    services = osc(cloud, "compute", "service", "list", "-f", "json", admin=True)
    computes = [s for s in services if s["Binary"] == "nova-compute"]
    assert len(computes) == 3
    assert {s["State"] for s in computes} == {"up"}
    hypervisors = osc(cloud, "hypervisor", "list", "-f", "json", admin=True)
    assert sorted(h["Hypervisor Hostname"] for h in hypervisors) == [
        "cloud-0000",
        "cloud-0001",
        "cloud-0002",
    ]
    zones = osc(cloud, "availability", "zone", "list", "-f", "json")
    assert {z["Zone Name"] for z in zones} == {"nova"}
    group = osc(cloud, "server", "group", "create", "--policy", "anti-affinity", "g1", "-f", "json")
    assert group["name"] == "g1"


def test_the_placement_cli_shows_each_host_s_inventory_and_a_server_s_allocation(
    ready_cloud: Stack,
) -> None:
    cloud = ready_cloud
    server = osc(
        cloud,
        "server",
        "create",
        "--flavor",
        "m1.tiny",
        "--image",
        "tiny",
        "--wait",
        "placed",
        "-f",
        "json",
    )
    providers = osc(cloud, "resource", "provider", "list", "-f", "json", admin=True)
    assert sorted(p["name"] for p in providers) == ["cloud-0000", "cloud-0001", "cloud-0002"]
    shown = osc(cloud, "server", "show", server["id"], "-f", "json", admin=True)
    host = shown["OS-EXT-SRV-ATTR:host"]
    (rp,) = [p for p in providers if p["name"] == host]
    usage = osc(
        cloud, "resource", "provider", "usage", "show", rp["uuid"], "-f", "json", admin=True
    )
    assert {u["resource_class"]: u["usage"] for u in usage}["VCPU"] == 1
    inventory = osc(
        cloud, "resource", "provider", "inventory", "list", rp["uuid"], "-f", "json", admin=True
    )
    assert {i["resource_class"] for i in inventory} == {"VCPU", "MEMORY_MB", "DISK_GB"}
    allocation = osc(
        cloud, "resource", "provider", "allocation", "show", server["id"], "-f", "json", admin=True
    )
    assert [(a["resource_provider"], a["resources"]["MEMORY_MB"]) for a in allocation] == [
        (rp["uuid"], 512)
    ]


def test_openstacksdk_and_novaclient_boot_and_delete_servers(ready_cloud: Stack) -> None:
    from novaclient import client as nova_client

    with _sdk(ready_cloud, "loom") as conn:
        image = conn.image.find_image("tiny", ignore_missing=False)
        flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
        server = conn.create_server("sdk1", image=image.id, flavor=flavor.id, auto_ip=False)
        server = conn.compute.wait_for_server(server, wait=60)
        assert server.status == "ACTIVE"
        conn.delete_server(server.id, wait=True)

        nova = nova_client.Client("2.96", session=conn.session)
        assert "m1.tiny" in [f.name for f in nova.flavors.list()]
        created = nova.servers.create("nc1", image.id, flavor.id, nics="none")

        def built() -> Any:
            srv = nova.servers.get(created.id)
            return srv if srv.status != "BUILD" else None

        srv = polling.wait_until(built, polling.boot_s(), "nc1 out of BUILD", every=0.2)
        assert srv.status == "ACTIVE"
        srv.delete()


def test_anti_affinity_puts_members_on_different_hosts_and_refuses_one_too_many(
    ready_cloud: Stack,
) -> None:
    cloud = ready_cloud
    group = osc(cloud, "server", "group", "create", "--policy", "anti-affinity", "g1", "-f", "json")
    names = [f"apart{i}" for i in range(4)]
    ids = {}
    for name in names:  # three hosts: the fourth member has nowhere to go
        ids[name] = osc(
            cloud,
            "server",
            "create",
            "--flavor",
            "m1.tiny",
            "--image",
            "tiny",
            "--nic",
            "none",
            "--hint",
            f"group={group['id']}",
            name,
            "-f",
            "json",
        )["id"]
    polling.wait_until(
        lambda: not {_status(cloud, n) for n in names} & {"BUILD"},
        polling.boot_s(),
        "every member out of BUILD",
        every=0.3,
    )

    shown = {n: osc(cloud, "server", "show", ids[n], "-f", "json", admin=True) for n in names}
    active = [s for s in shown.values() if s["status"] == "ACTIVE"]
    failed = [s for s in shown.values() if s["status"] == "ERROR"]
    assert len({s["OS-EXT-SRV-ATTR:host"] for s in active}) == len(active) == 3
    assert len(failed) == 1
    assert "anti-affinity (group g1)" in failed[0]["fault"]["message"]
    members = osc(cloud, "server", "group", "show", "g1", "-f", "json")["members"]
    assert len(members) == 4  # an ERROR server is a member until it is deleted

    osc(cloud, "server", "delete", "--wait", *names)
    assert osc(cloud, "server", "group", "show", "g1", "-f", "json")["members"] in ("", [])


def test_same_host_and_different_host_hints_from_the_cli_place_servers_by_another_one(
    ready_cloud: Stack,
) -> None:
    """`openstack server create --hint` on `loom up`'s default filters. The weigher spreads
    servers, so `same_host` is what keeps the near ones together; tests/conductor's hint
    tests show `different_host` refusing the host the weigher prefers."""
    cloud = ready_cloud

    def boot(name: str, *hints: str) -> str:
        args = [a for h in hints for a in ("--hint", h)]
        return str(
            osc(
                cloud,
                "server",
                "create",
                "--flavor",
                "m1.tiny",
                "--image",
                "tiny",
                "--nic",
                "none",
                *args,
                "--wait",
                name,
                "-f",
                "json",
            )["id"]
        )

    def host(sid: str) -> str:
        shown = osc(cloud, "server", "show", sid, "-f", "json", admin=True)
        assert shown["status"] == "ACTIVE", shown
        return str(shown["OS-EXT-SRV-ATTR:host"])

    anchor = boot("anchor")
    near = [boot(f"near{i}", f"same_host={anchor}") for i in range(2)]
    apart = [boot(f"apart{i}", f"different_host={anchor}") for i in range(3)]
    assert {host(s) for s in near} == {host(anchor)}
    assert host(anchor) not in {host(s) for s in apart}
    osc(cloud, "server", "delete", "--wait", anchor, *near, *apart)


def test_limit_zero_lists_no_servers_os_stop_takes_an_empty_object_and_metadata_has_a_quota(
    ready_cloud: Stack,
) -> None:
    with _sdk(ready_cloud, "loom") as conn:
        image = conn.image.find_image("tiny", ignore_missing=False)
        flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
        server = conn.create_server("z1", image=image.id, flavor=flavor.id, auto_ip=False)
        server = conn.compute.wait_for_server(server, wait=60)
        headers = {"OpenStack-API-Version": "compute 2.96"}

        listed = conn.compute.get("/servers?limit=0", headers=headers)
        assert (listed.status_code, listed.json()) == (200, {"servers": []})
        assert len(conn.compute.get("/servers", headers=headers).json()["servers"]) == 1

        too_many = {"metadata": {f"k{i}": "v" for i in range(129)}}  # the quota is 128
        meta = conn.compute.put(f"/servers/{server.id}/metadata", json=too_many, headers=headers)
        assert meta.status_code == 403, meta.text
        assert "metadata_items" in meta.text

        stop = conn.compute.post(
            f"/servers/{server.id}/action", json={"os-stop": {}}, headers=headers
        )
        assert stop.status_code == 202, stop.text
        conn.compute.wait_for_server(server, status="SHUTOFF", wait=60)
        conn.delete_server(server.id, wait=True)


def test_an_admin_s_tenant_id_filter_applies_only_with_all_tenants(ready_cloud: Stack) -> None:
    """Without all_tenants the compute API ignores tenant_id and project_id (an admin lists
    its own project); with it, they pick the project."""
    with _sdk(ready_cloud, "loom") as conn:
        image = conn.image.find_image("tiny", ignore_missing=False)
        flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
        server = conn.create_server("t1", image=image.id, flavor=flavor.id, auto_ip=False)
        project = conn.current_project_id
    with _sdk(ready_cloud, "loom-admin") as admin:

        def listed(query: str) -> set[str]:
            r = admin.compute.get(f"/servers{query}")
            assert r.status_code == 200, r.text
            return {s["id"] for s in r.json()["servers"]}

        assert server.id not in listed(f"?tenant_id={project}")
        assert server.id not in listed(f"?project_id={project}")
        assert server.id in listed(f"?all_tenants=&tenant_id={project}")
        assert server.id in listed("?all_tenants=1")
        admin.delete_server(server.id, wait=True)


def test_os_services_ignores_unknown_query_parameters_before_2_75_and_refuses_them_after(
    ready_cloud: Stack,
) -> None:
    with _sdk(ready_cloud, "loom-admin") as conn:
        old = conn.compute.get(
            "/os-services?flavor=1", headers={"OpenStack-API-Version": "compute 2.74"}
        )
        assert old.status_code == 200, old.text
        assert len(old.json()["services"]) >= 3
        new = conn.compute.get(
            "/os-services?flavor=1", headers={"OpenStack-API-Version": "compute 2.75"}
        )
        assert new.status_code == 400
        assert "'flavor' was unexpected" in new.json()["badRequest"]["message"]


def test_hypervisor_cpu_info_is_text_before_2_28_and_an_object_from_2_28(
    ready_cloud: Stack,
) -> None:
    with _sdk(ready_cloud, "loom-admin") as conn:

        def cpu_infos(version: str) -> list[Any]:
            r = conn.compute.get(
                "/os-hypervisors/detail", headers={"OpenStack-API-Version": f"compute {version}"}
            )
            assert r.status_code == 200, r.text
            return [h["cpu_info"] for h in r.json()["hypervisors"]]

        old, new = cpu_infos("2.27"), cpu_infos("2.28")
    assert len(old) == len(new) == 3
    assert all(isinstance(c, str) for c in old)
    assert all(isinstance(c, dict) for c in new)
    assert [json.loads(c) for c in old] == new
    assert "arch" in new[0]


def _get(conn: Any, path: str, version: str) -> Any:
    return conn.compute.get(path, headers={"OpenStack-API-Version": f"compute {version}"})


def _boot(conn: Any, name: str, **kw: Any) -> Any:
    image = conn.image.find_image("tiny", ignore_missing=False)
    flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
    server = conn.create_server(name, image=image.id, flavor=flavor.id, auto_ip=False, **kw)
    return conn.compute.wait_for_server(server, wait=60)


def test_os_services_show_and_filter_on_the_binary_names_openstack_tools_use(
    ready_cloud: Stack,
) -> None:
    with _sdk(ready_cloud, "loom-admin") as conn:
        every = _get(conn, "/os-services", "2.53").json()["services"]
        assert {s["binary"] for s in every} <= {"nova-compute", "nova-conductor", "nova-scheduler"}
        computes = _get(conn, "/os-services?binary=nova-compute", "2.53").json()["services"]
        assert sorted(s["host"] for s in computes) == ["cloud-0000", "cloud-0001", "cloud-0002"]
        zones = _get(conn, "/os-availability-zone/detail", "2.53").json()
        host = next(z for z in zones["availabilityZoneInfo"] if z["zoneName"] == "nova")
        assert set(host["hosts"]["cloud-0000"]) == {"nova-compute"}
        legacy = conn.compute.put(
            "/os-services/disable",
            json={"host": "cloud-0001", "binary": "nova-compute"},
            headers={"OpenStack-API-Version": "compute 2.52"},
        )
        assert legacy.status_code == 200, legacy.text
        assert legacy.json()["service"] == {
            "host": "cloud-0001",
            "binary": "nova-compute",
            "status": "disabled",
        }


def test_hypervisor_statistics_uptime_search_and_servers_routes_keep_their_microversions(
    ready_cloud: Stack,
) -> None:
    with _sdk(ready_cloud, "loom-admin") as admin:
        detail = _get(admin, "/os-hypervisors/detail", "2.87").json()["hypervisors"]
        stats = _get(admin, "/os-hypervisors/statistics", "2.87")
        assert stats.status_code == 200, stats.text
        totals = stats.json()["hypervisor_statistics"]
        assert totals["count"] == 3
        assert totals["vcpus"] == sum(h["vcpus"] for h in detail)
        assert totals["free_ram_mb"] == totals["memory_mb"] - totals["memory_mb_used"]
        assert _get(admin, "/os-hypervisors/statistics", "2.88").status_code == 404

        found = _get(admin, "/os-hypervisors/cloud-000/search", "2.52")
        assert found.status_code == 200, found.text
        assert sorted(h["hypervisor_hostname"] for h in found.json()["hypervisors"]) == [
            "cloud-0000",
            "cloud-0001",
            "cloud-0002",
        ]
        assert _get(admin, "/os-hypervisors/nowhere/search", "2.52").status_code == 404
        assert _get(admin, "/os-hypervisors/cloud-000/search", "2.53").status_code == 404

        hid = _get(admin, "/os-hypervisors", "2.1").json()["hypervisors"][0]["id"]
        uptime = _get(admin, f"/os-hypervisors/{hid}/uptime", "2.1")
        # The agent reports its host's uptime as uptime(1) prints it.
        assert uptime.status_code == 200, uptime.text
        assert " up " in uptime.json()["hypervisor"]["uptime"]
        assert _get(admin, "/os-hypervisors/999999/uptime", "2.1").status_code == 404
        uuid = detail[0]["id"]
        assert _get(admin, f"/os-hypervisors/{uuid}/uptime", "2.87").status_code == 200
        assert _get(admin, f"/os-hypervisors/{uuid}/uptime", "2.88").status_code == 404

    with _sdk(ready_cloud, "loom") as conn:
        sid = _boot(conn, "hv1").id
    with _sdk(ready_cloud, "loom-admin") as admin:
        shown = _get(admin, f"/servers/{sid}", "2.52").json()["server"]
        node = shown["OS-EXT-SRV-ATTR:hypervisor_hostname"]
        on = _get(admin, f"/os-hypervisors/{node}/servers", "2.52")
        assert on.status_code == 200, on.text
        (hyp,) = on.json()["hypervisors"]
        assert hyp["hypervisor_hostname"] == node
        assert hyp["servers"] == [{"uuid": sid, "name": shown["OS-EXT-SRV-ATTR:instance_name"]}]
        assert _get(admin, "/os-hypervisors/cloud/servers", "2.53").status_code == 404


def test_access_ipv6_is_kept_in_its_compressed_form(ready_cloud: Stack) -> None:
    with _sdk(ready_cloud, "loom") as conn:
        image = conn.image.find_image("tiny", ignore_missing=False)
        flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
        created = conn.compute.post(
            "/servers",
            json={
                "server": {
                    "name": "v6",
                    "imageRef": image.id,
                    "flavorRef": flavor.id,
                    "networks": "none",
                    "accessIPv6": "2001:0DB8:0000:0000:0000:0000:0000:0001",
                }
            },
            headers={"OpenStack-API-Version": "compute 2.37"},
        )
        assert created.status_code == 202, created.text
        sid = created.json()["server"]["id"]
        assert _get(conn, f"/servers/{sid}", "2.1").json()["server"]["accessIPv6"] == "2001:db8::1"
        updated = conn.compute.put(
            f"/servers/{sid}", json={"server": {"accessIPv6": "fe80:0:0:0:0:0:0:00aa"}}
        )
        assert updated.json()["server"]["accessIPv6"] == "fe80::aa"
        assert _get(conn, f"/servers/{sid}", "2.1").json()["server"]["accessIPv6"] == "fe80::aa"
        conn.delete_server(sid, wait=True)


def test_update_responses_before_2_75_carry_no_extended_attributes_and_from_2_75_match_show(
    ready_cloud: Stack,
) -> None:
    with _sdk(ready_cloud, "loom-admin") as conn:
        server = _boot(conn, "upd")

        def update(version: str) -> dict[str, Any]:
            r = conn.compute.put(
                f"/servers/{server.id}",
                json={"server": {"name": f"upd-{version}"}},
                headers={"OpenStack-API-Version": f"compute {version}"},
            )
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()["server"]
            return body

        old = update("2.47")
        assert set(old) == {
            "id",
            "name",
            "status",
            "image",
            "flavor",
            "user_id",
            "tenant_id",
            "created",
            "updated",
            "progress",
            "metadata",
            "links",
            "addresses",
            "hostId",
            "OS-DCF:diskConfig",
            "accessIPv4",
            "accessIPv6",
            "locked",
            "description",
            "tags",
        }
        assert set(old["flavor"]) >= {"vcpus", "ram", "original_name"}
        new = update("2.96")
        shown = _get(conn, f"/servers/{server.id}", "2.96").json()["server"]
        assert set(new) == set(shown)
        assert {"OS-EXT-SRV-ATTR:host", "server_groups", "pinned_availability_zone"} <= set(new)
        # A listed server carries no server_groups: only a single server's body does.
        (listed,) = _get(conn, "/servers/detail", "2.96").json()["servers"]
        assert set(listed) == set(shown) - {"server_groups"}
        conn.delete_server(server.id, wait=True)


def test_volume_attachments_list_is_empty_and_an_unknown_server_is_404(
    ready_cloud: Stack,
) -> None:
    with _sdk(ready_cloud, "loom") as conn:
        server = _boot(conn, "vol")
        listed = _get(conn, f"/servers/{server.id}/os-volume_attachments", "2.89")
        assert (listed.status_code, listed.json()) == (200, {"volumeAttachments": []})
        missing = _get(
            conn, "/servers/00000000-0000-4000-8000-000000000000/os-volume_attachments", "2.1"
        )
        assert missing.status_code == 404
        conn.delete_server(server.id, wait=True)


def test_simple_tenant_usage_counts_each_server_s_hours_by_flavor(ready_cloud: Stack) -> None:
    with _sdk(ready_cloud, "loom") as conn:
        first, second = _boot(conn, "use1"), _boot(conn, "use2")
        conn.delete_server(second.id, wait=True)
        project = conn.current_project_id
        period = "start=2000-01-01T00:00:00&end=2100-01-01T00:00:00.000000"
        own = _get(conn, f"/os-simple-tenant-usage/{project}?{period}", "2.1")
        assert own.status_code == 200, own.text
        usage = own.json()["tenant_usage"]
        assert usage["tenant_id"] == project
        by_id = {u["instance_id"]: u for u in usage["server_usages"]}
        assert set(by_id) == {first.id, second.id}
        flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
        running, gone = by_id[first.id], by_id[second.id]
        assert (running["vcpus"], running["memory_mb"]) == (flavor.vcpus, flavor.ram)
        assert running["state"] == "active"
        assert running["ended_at"] is None
        assert gone["state"] == "terminated"
        assert gone["ended_at"] is not None
        assert running["hours"] > 0
        assert usage["total_hours"] == running["hours"] + gone["hours"]
        assert usage["total_vcpus_usage"] == sum(u["vcpus"] * u["hours"] for u in by_id.values())
        assert _get(conn, "/os-simple-tenant-usage", "2.1").status_code == 403
        backwards = _get(
            conn,
            f"/os-simple-tenant-usage/{project}?start=2030-01-02T00:00:00&end=2030-01-01T00:00:00",
            "2.1",
        )
        assert backwards.status_code == 400
        before = _get(
            conn,
            f"/os-simple-tenant-usage/{project}?start=2000-01-01T00:00:00&end=2000-01-02T00:00:00",
            "2.1",
        )
        assert before.json() == {"tenant_usage": {}}

    with _sdk(ready_cloud, "loom-admin") as admin:
        listed = _get(admin, f"/os-simple-tenant-usage?detailed=1&{period}", "2.1").json()[
            "tenant_usages"
        ]
        mine = next(u for u in listed if u["tenant_id"] == project)
        assert {u["instance_id"] for u in mine["server_usages"]} == {first.id, second.id}
        brief = _get(admin, f"/os-simple-tenant-usage?{period}", "2.1").json()["tenant_usages"]
        assert len(brief) == 1
        assert all("server_usages" not in u for u in brief)
        page = _get(admin, f"/os-simple-tenant-usage?limit=1&{period}", "2.40").json()
        assert len(page["tenant_usages"]) == 1
        (link,) = page["tenant_usages_links"]
        assert link["rel"] == "next"
        assert "marker=" in link["href"]
        # Before 2.40 there is no paging: limit is an unknown parameter, ignored.
        assert (
            "tenant_usages_links"
            not in _get(admin, "/os-simple-tenant-usage?limit=1", "2.39").json()
        )
        refused = _get(admin, "/os-simple-tenant-usage?flavor=1", "2.75")
        assert refused.status_code == 400


def test_from_2_97_a_server_has_no_shares_and_attaching_one_is_refused(
    ready_cloud: Stack,
) -> None:
    share = "2c4b5e7a-7f8e-4b7c-9a63-3d2f0c1b9e44"
    with _sdk(ready_cloud, "loom") as conn:
        server = _boot(conn, "sh1")
        path = f"/servers/{server.id}/shares"
        assert _get(conn, path, "2.96").status_code == 404
        listed = _get(conn, path, "2.97")
        assert (listed.status_code, listed.json()) == (200, {"shares": []})
        assert _get(conn, f"{path}/{share}", "2.97").status_code == 404
        v297 = {"OpenStack-API-Version": "compute 2.97"}
        body = {"share": {"share_id": share}}
        running = conn.compute.post(path, json=body, headers=v297)
        assert running.status_code == 409, running.text
        conn.compute.stop_server(server)
        conn.compute.wait_for_server(server, status="SHUTOFF", wait=60)
        stopped = conn.compute.post(path, json=body, headers=v297)
        assert stopped.status_code == 403, stopped.text
        assert "no shared file system service" in stopped.json()["forbidden"]["message"]
        bad = conn.compute.post(path, json={"share": {"share_id": "x"}}, headers=v297)
        assert bad.status_code == 400
        conn.delete_server(server.id, wait=True)


def test_from_2_98_a_server_shows_its_image_s_standard_properties_as_they_were_at_creation(
    ready_cloud: Stack,
) -> None:
    with _sdk(ready_cloud, "loom-admin") as admin:
        image = admin.image.find_image("tiny", ignore_missing=False)
        admin.image.update_image(image, os_distro="debian", site_note="private")
    with _sdk(ready_cloud, "loom") as conn:
        server = _boot(conn, "props")
    with _sdk(ready_cloud, "loom-admin") as admin:
        admin.image.update_image(image, os_distro="changed")
    with _sdk(ready_cloud, "loom") as conn:
        old = _get(conn, f"/servers/{server.id}", "2.97").json()["server"]["image"]
        new = _get(conn, f"/servers/{server.id}", "2.98").json()["server"]["image"]
        assert "properties" not in old
        assert new["properties"] == {"os_distro": "debian"}
        listed = _get(conn, "/servers/detail", "2.98").json()["servers"]
        assert listed[0]["image"]["properties"] == {"os_distro": "debian"}
        conn.delete_server(server.id, wait=True)


def test_from_2_99_spice_direct_is_unavailable_and_token_lookups_refuse_unknown_parameters(
    ready_cloud: Stack,
) -> None:
    with _sdk(ready_cloud, "loom") as conn:
        server = _boot(conn, "con")

        def spice(version: str) -> Any:
            return conn.compute.post(
                f"/servers/{server.id}/remote-consoles",
                json={"remote_console": {"protocol": "spice", "type": "spice-direct"}},
                headers={"OpenStack-API-Version": f"compute {version}"},
            )

        assert "is not one of" in spice("2.98").json()["badRequest"]["message"]
        unavailable = spice("2.99")
        assert unavailable.status_code == 400
        assert unavailable.json()["badRequest"]["message"] == (
            "Unavailable console type spice-direct."
        )
        conn.delete_server(server.id, wait=True)
    with _sdk(ready_cloud, "loom-admin") as admin:
        path = "/os-console-auth-tokens/no-such-token?extra=1"
        assert _get(admin, path, "2.98").status_code == 404
        refused = _get(admin, path, "2.99")
        assert refused.status_code == 400
        assert "'extra' was unexpected" in refused.json()["badRequest"]["message"]


def test_scheduler_hints_loom_does_not_honour_are_refused_and_from_2_100_the_given_show(
    ready_cloud: Stack,
) -> None:
    with _sdk(ready_cloud, "loom") as conn:
        image = conn.image.find_image("tiny", ignore_missing=False)
        flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
        group = conn.compute.create_server_group(name="g", policies=["affinity"])

        def create(hints: dict[str, Any], version: str = "2.100") -> Any:
            return conn.compute.post(
                "/servers",
                json={
                    "server": {
                        "name": "hinted",
                        "imageRef": image.id,
                        "flavorRef": flavor.id,
                        "networks": "none",
                    },
                    "os:scheduler_hints": hints,
                },
                headers={"OpenStack-API-Version": f"compute {version}"},
            )

        refused = create({"group": group.id, "build_near_host_ip": "10.0.0.1"}, "2.37")
        assert refused.status_code == 400
        assert "build_near_host_ip" in refused.json()["badRequest"]["message"]
        elsewhere = str(uuid.uuid4())  # no such server: it rules out no host
        created = create({"group": group.id, "different_host": elsewhere})
        assert created.status_code == 202, created.text
        sid = created.json()["server"]["id"]
        shown = _get(conn, f"/servers/{sid}", "2.100").json()["server"]
        assert shown["scheduler_hints"] == {"group": [group.id], "different_host": [elsewhere]}
        assert "scheduler_hints" not in _get(conn, f"/servers/{sid}", "2.99").json()["server"]
        conn.delete_server(sid, wait=True)


def test_a_private_flavor_boots_for_an_admin_and_for_a_member_once_shared_with_its_project(
    ready_cloud: Stack,
) -> None:
    with _sdk(ready_cloud, "loom-admin") as admin:
        private = admin.compute.create_flavor(
            name="private", ram=64, vcpus=1, disk=1, is_public=False
        )
    with _sdk(ready_cloud, "loom") as conn:
        image = conn.image.find_image("tiny", ignore_missing=False)
        body = {
            "server": {
                "name": "p",
                "imageRef": image.id,
                "flavorRef": private.id,
                "networks": "none",
            }
        }
        v237 = {"OpenStack-API-Version": "compute 2.37"}
        refused = conn.compute.post("/servers", json=body, headers=v237)
        assert refused.status_code == 400, refused.text
        assert refused.json()["badRequest"]["message"] == (
            f"Flavor {private.id} could not be found."
        )
    with _sdk(ready_cloud, "loom-admin") as admin:
        created = admin.compute.post("/servers", json=body, headers=v237)
        assert created.status_code == 202, created.text
        admin.delete_server(created.json()["server"]["id"], wait=True)
    osc(ready_cloud, "flavor", "set", "--project", "demo", "private", admin=True)
    shown = osc(ready_cloud, "flavor", "show", "private", "-f", "json", admin=True)
    assert shown["access_project_ids"] == [
        osc(ready_cloud, "project", "show", "demo", "-f", "value", "-c", "id", admin=True)
    ]
    with _sdk(ready_cloud, "loom") as conn:
        mine = conn.compute.post("/servers", json=body, headers=v237)
        assert mine.status_code == 202, mine.text
        conn.delete_server(mine.json()["server"]["id"], wait=True)
    osc(ready_cloud, "flavor", "unset", "--project", "demo", "private", admin=True)
    with _sdk(ready_cloud, "loom") as conn:
        again = conn.compute.post("/servers", json=body, headers=v237)
        assert again.status_code == 400, again.text


def _wait_addresses(cloud: Stack, server: str, *, with_floating: str | None) -> None:
    """Waits (10 s at most) for the server's addresses to hold exactly that floating IP
    (or none), as the compute API shows them."""
    deadline = time.monotonic() + 10
    while True:
        with _sdk(cloud, "loom") as conn:
            found = conn.compute.find_server(server, ignore_missing=False)
            shown = conn.compute.get_server(found.id).addresses
        floating = [
            a["addr"]
            for addrs in shown.values()
            for a in addrs
            if a.get("OS-EXT-IPS:type") == "floating"
        ]
        if floating == ([with_floating] if with_floating else []):
            return
        assert time.monotonic() < deadline, shown
        time.sleep(0.5)


def test_the_openstack_cli_manages_networks_subnets_ports_rules_routers_and_floating_ips(
    ready_cloud: Stack,
) -> None:
    cloud = ready_cloud
    network = osc(cloud, "network", "create", "n1", "-f", "json")
    assert network["status"] == "ACTIVE"
    subnet = osc(
        cloud, "subnet", "create", "--network", "n1", "--subnet-range", "10.0.0.0/24", "s1",
        "-f", "json",
    )  # fmt: skip
    assert subnet["gateway_ip"] == "10.0.0.1"
    assert subnet["network_id"] == network["id"]
    port = osc(cloud, "port", "create", "--network", "n1", "p1", "-f", "json")
    ((fixed),) = port["fixed_ips"]
    assert fixed["subnet_id"] == subnet["id"]
    assert fixed["ip_address"].startswith("10.0.0.")
    assert port["mac_address"].startswith("fa:16:3e:")
    rule = osc(
        cloud, "security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "22",
        "default", "-f", "json",
    )  # fmt: skip
    assert (rule["protocol"], rule["port_range_min"], rule["port_range_max"]) == ("tcp", 22, 22)
    assert port["security_group_ids"] == [rule["security_group_id"]]
    listed = osc(cloud, "network", "list", "-f", "json")
    assert [(n["Name"], n["Subnets"]) for n in listed] == [("n1", [subnet["id"]])]
    # The admin's listing shows every project's networks.
    assert [n["Name"] for n in osc(cloud, "network", "list", "-f", "json", admin=True)] == ["n1"]
    # A router to an external network, and a floating IP for the port.
    osc(cloud, "network", "create", "--external", "public", admin=True)
    osc(
        cloud, "subnet", "create", "--network", "public", "--subnet-range", "203.0.113.0/24",
        "--no-dhcp", "pub", admin=True,
    )  # fmt: skip
    r1 = osc(cloud, "router", "create", "r1", "-f", "json")
    osc(cloud, "router", "set", "--external-gateway", "public", "r1")
    osc(cloud, "router", "add", "subnet", "r1", "s1")
    fip = osc(cloud, "floating", "ip", "create", "--port", "p1", "public", "-f", "json")
    assert fip["fixed_ip_address"] == fixed["ip_address"]
    assert fip["floating_ip_address"].startswith("203.0.113.")
    osc(cloud, "floating", "ip", "delete", fip["id"])
    # A server on the network gets a floating IP through the compute verbs.
    osc(cloud, "server", "create", "--image", "tiny", "--flavor", "m1.tiny",
        "--nic", "net-id=n1", "--wait", "vm-fip")  # fmt: skip
    spare = osc(cloud, "floating", "ip", "create", "public", "-f", "json")
    osc(cloud, "server", "add", "floating", "ip", "vm-fip", spare["floating_ip_address"])
    server_port = osc(cloud, "port", "list", "--server", "vm-fip", "-f", "json")[0]
    added = osc(cloud, "floating", "ip", "show", spare["id"], "-f", "json")
    assert (added["port_id"], added["router_id"]) == (server_port["ID"], r1["id"])
    # The server's addresses show it (type floating) once the change is carried.
    _wait_addresses(cloud, "vm-fip", with_floating=spare["floating_ip_address"])
    osc(cloud, "server", "remove", "floating", "ip", "vm-fip", spare["floating_ip_address"])
    assert osc(cloud, "floating", "ip", "show", spare["id"], "-f", "json")["port_id"] is None
    _wait_addresses(cloud, "vm-fip", with_floating=None)

    # Its security groups are its port's, and the compute verbs change them.
    def groups() -> list[str]:
        shown = osc(cloud, "server", "show", "vm-fip", "-f", "json")
        return sorted(g["name"] for g in shown["security_groups"])

    assert groups() == ["default"]
    osc(cloud, "security", "group", "create", "web")
    osc(cloud, "server", "add", "security", "group", "vm-fip", "web")
    assert groups() == ["default", "web"]
    port_groups = osc(cloud, "port", "show", server_port["ID"], "-f", "json")["security_group_ids"]
    assert len(port_groups) == 2
    osc(cloud, "server", "remove", "security", "group", "vm-fip", "default")
    assert groups() == ["web"]
    refused = subprocess.run(
        [OPENSTACK, "--os-cloud", "loom", "server", "remove", "security", "group", "vm-fip",
         "default"],
        env=_env(cloud), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "is not associated with the instance" in refused.stderr
    # With its last group gone, the server shows no security_groups at all.
    osc(cloud, "server", "remove", "security", "group", "vm-fip", "web")
    assert "security_groups" not in osc(cloud, "server", "show", "vm-fip", "-f", "json")
    osc(cloud, "server", "delete", "--wait", "vm-fip")
    osc(cloud, "security", "group", "delete", "web")
    osc(cloud, "floating", "ip", "delete", spare["id"])
    osc(cloud, "router", "remove", "subnet", "r1", "s1")
    osc(cloud, "router", "delete", "r1")
    osc(cloud, "subnet", "delete", "pub", admin=True)
    osc(cloud, "network", "delete", "public", admin=True)
    osc(cloud, "security", "group", "rule", "delete", rule["id"])
    osc(cloud, "port", "delete", "p1")
    osc(cloud, "subnet", "delete", "s1")
    osc(cloud, "network", "delete", "n1")
    assert osc(cloud, "network", "list", "-f", "json") == []


def test_server_tags_are_set_checked_and_deleted_with_the_cli_and_the_api(
    ready_cloud: Stack,
) -> None:
    with _sdk(ready_cloud, "loom") as conn:
        server = _boot(conn, "tagged")
        osc(ready_cloud, "--os-compute-api-version", "2.26", "server", "set", "--tag", "web",
            "tagged")  # fmt: skip
        shown = osc(
            ready_cloud, "--os-compute-api-version", "2.26", "server", "show", "tagged", "-f",
            "json",
        )  # fmt: skip
        assert shown["tags"] == ["web"]
        v = "2.26"
        tags = f"/servers/{server.id}/tags"
        h = {"OpenStack-API-Version": f"compute {v}"}
        assert conn.compute.put(f"{tags}/web", headers=h).status_code == 204  # had it
        made = conn.compute.put(f"{tags}/db", headers=h)
        assert made.status_code == 201, made.text
        assert made.headers["Location"].endswith(f"{tags}/db")
        assert _get(conn, tags, v).json() == {"tags": ["web", "db"]}
        assert _get(conn, f"{tags}/db", v).status_code == 204
        assert _get(conn, f"{tags}/nope", v).status_code == 404
        assert conn.compute.delete(f"{tags}/db", headers=h).status_code == 204
        assert conn.compute.delete(f"{tags}/db", headers=h).status_code == 404
        bad = conn.compute.put(tags, json={"tags": ["a,b"]}, headers=h)
        assert bad.status_code == 400, bad.text
        too_many = conn.compute.put(tags, json={"tags": [f"t{i}" for i in range(51)]}, headers=h)
        assert too_many.status_code == 400, too_many.text
        replaced = conn.compute.put(tags, json={"tags": ["x", "y"]}, headers=h)
        assert replaced.json() == {"tags": ["x", "y"]}
        assert conn.compute.delete(tags, headers=h).status_code == 204
        assert _get(conn, tags, v).json() == {"tags": []}
        assert _get(conn, tags, "2.25").status_code == 404
        conn.delete_server(server.id, wait=True)


def test_a_server_s_password_is_empty_since_no_guest_can_post_one(ready_cloud: Stack) -> None:
    with _sdk(ready_cloud, "loom") as conn:
        server = _boot(conn, "pw")
        path = f"/servers/{server.id}/os-server-password"
        shown = _get(conn, path, "2.1")
        assert (shown.status_code, shown.json()) == (200, {"password": ""})
        assert conn.compute.delete(path).status_code == 204
        assert _get(conn, "/servers/00000000-0000-4000-8000-000000000000/os-server-password",
                    "2.1").status_code == 404  # fmt: skip
        conn.delete_server(server.id, wait=True)
