"""Unmodified OpenStack clients (openstack CLI, openstacksdk, novaclient 2.96) drive Loom."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    computes = [s for s in services if s["Binary"] == "loom-compute"]
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
