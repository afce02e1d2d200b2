"""Host aggregates, zones made from them, their filters and forced-down hosts, driven with
the unmodified openstack CLI against a whole running Loom."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.e2e.test_openstack_clients import OPENSTACK, _env, _status, osc, ready_cloud
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

__all__ = ["ready_cloud"]  # the fixture, shared with the other CLI tests

HOSTS = ["cloud-0000", "cloud-0001", "cloud-0002"]


def osc_fails(cloud: Stack, *args: str) -> str:
    """Runs the openstack CLI as admin, expecting it to fail; returns what it printed."""
    proc = subprocess.run(
        [OPENSTACK, "--os-cloud", "loom-admin", *args],
        env=_env(cloud),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0, f"openstack {' '.join(args)} succeeded: {proc.stdout}"
    return proc.stdout + proc.stderr


def _boot(cloud: Stack, name: str, *extra: str) -> str:
    server = osc(
        cloud,
        "server",
        "create",
        "--flavor",
        "m1.tiny",
        "--image",
        "tiny",
        "--nic",
        "none",
        *extra,
        name,
        "-f",
        "json",
    )
    return str(server["id"])


def _settle(cloud: Stack, *names: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while {_status(cloud, n) for n in names} & {"BUILD"}:
        assert time.monotonic() < deadline, "a server stayed in BUILD"
        time.sleep(0.3)


def test_the_openstack_cli_manages_aggregates_and_the_zone_one_makes(ready_cloud: Stack) -> None:
    cloud = ready_cloud
    created = osc(cloud, "aggregate", "create", "--zone", "az1", "agg1", "-f", "json", admin=True)
    assert (created["name"], created["availability_zone"]) == ("agg1", "az1")
    osc(cloud, "aggregate", "add", "host", "agg1", HOSTS[0], admin=True)
    osc(cloud, "aggregate", "set", "--property", "ssd=true", "agg1", admin=True)

    shown = osc(cloud, "aggregate", "show", "agg1", "-f", "json", admin=True)
    assert shown["hosts"] == [HOSTS[0]]
    assert shown["properties"] == {"ssd": "true"}
    assert shown["availability_zone"] == "az1"
    listed = osc(cloud, "aggregate", "list", "--long", "-f", "json", admin=True)
    assert [(a["Name"], a["Availability Zone"]) for a in listed] == [("agg1", "az1")]

    # The zone is what tenants see, beside the default zone of the other hosts.
    zones = osc(cloud, "availability", "zone", "list", "-f", "json")
    assert {z["Zone Name"] for z in zones} == {"az1", "nova"}

    # A host is in one zone only: Nova's 409 on add_host.
    osc(cloud, "aggregate", "create", "--zone", "az2", "agg2", admin=True)
    refused = osc_fails(cloud, "aggregate", "add", "host", "agg2", HOSTS[0])
    assert "availability zone" in refused

    # A server asked into the zone lands on its only host, and says so.
    sid = _boot(cloud, "in-az1", "--availability-zone", "az1")
    _settle(cloud, "in-az1")
    server = osc(cloud, "server", "show", sid, "-f", "json", admin=True)
    assert server["status"] == "ACTIVE"
    assert server["OS-EXT-AZ:availability_zone"] == "az1"
    assert server["OS-EXT-SRV-ATTR:host"] == HOSTS[0]

    # Rename, unset, remove the host, delete: each through the CLI.
    osc(cloud, "aggregate", "set", "--name", "fast", "agg1", admin=True)
    osc(cloud, "aggregate", "unset", "--property", "ssd", "fast", admin=True)
    assert osc(cloud, "aggregate", "show", "fast", "-f", "json", admin=True)["properties"] == {}
    refused = osc_fails(cloud, "aggregate", "delete", "fast")
    assert "hosts" in refused
    osc(cloud, "server", "delete", "--wait", "in-az1")
    osc(cloud, "aggregate", "remove", "host", "fast", HOSTS[0], admin=True)
    osc(cloud, "aggregate", "delete", "fast", "agg2", admin=True)
    assert osc(cloud, "aggregate", "list", "-f", "json", admin=True) == []
    zones = osc(cloud, "availability", "zone", "list", "-f", "json")
    assert {z["Zone Name"] for z in zones} == {"nova"}


def test_tenant_isolation_refuses_other_projects_with_a_fault_counting_the_filter(
    ready_cloud: Stack,
) -> None:
    cloud = ready_cloud
    admin_project = osc(cloud, "project", "show", "admin", "-f", "json", admin=True)["id"]
    osc(cloud, "aggregate", "create", "admins-only", admin=True)
    for host in HOSTS:
        osc(cloud, "aggregate", "add", "host", "admins-only", host, admin=True)
    osc(
        cloud,
        "aggregate",
        "set",
        "--property",
        f"filter_tenant_id={admin_project}",
        "admins-only",
        admin=True,
    )

    sid = _boot(cloud, "outsider")
    _settle(cloud, "outsider")
    server = osc(cloud, "server", "show", sid, "-f", "json", admin=True)
    assert server["status"] == "ERROR"
    assert "3 removed by aggregate_multitenancy_isolation" in server["fault"]["message"]
    osc(cloud, "server", "delete", "--wait", "outsider")


def test_a_host_forced_down_with_the_cli_gets_no_new_placements(ready_cloud: Stack) -> None:
    cloud = ready_cloud
    computes = [
        s
        for s in osc(cloud, "compute", "service", "list", "-f", "json", admin=True)
        if s["Host"] in HOSTS
    ]
    down = computes[0]
    osc(cloud, "compute", "service", "set", "--down", down["Host"], down["Binary"], admin=True)
    states = {
        s["Host"]: s["State"]
        for s in osc(cloud, "compute", "service", "list", "-f", "json", admin=True)
    }
    assert states[down["Host"]] == "down"

    names = [f"spread{i}" for i in range(6)]
    ids = [_boot(cloud, name) for name in names]
    _settle(cloud, *names)
    placed = {
        osc(cloud, "server", "show", i, "-f", "json", admin=True)["OS-EXT-SRV-ATTR:host"]
        for i in ids
    }
    assert {_status(cloud, n) for n in names} == {"ACTIVE"}
    assert down["Host"] not in placed

    osc(cloud, "compute", "service", "set", "--up", down["Host"], down["Binary"], admin=True)
    states = {
        s["Host"]: s["State"]
        for s in osc(cloud, "compute", "service", "list", "-f", "json", admin=True)
    }
    assert states[down["Host"]] == "up"
    osc(cloud, "server", "delete", "--wait", *names)
