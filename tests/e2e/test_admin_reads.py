"""Reads the agents answer on request, through the REST API on a fleet of test:/// hosts:
server diagnostics (libvirt's counters) and hypervisor uptime."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx

from bench.client import resolve_cloud
from tests.e2e.support import boot_one_through_api
from tests.support import polling
from tests.support.stack import Stack

_UPTIME = re.compile(r"^ \d\d:\d\d:\d\d up .+,  \d+ users?,  load average: [\d.]+, [\d.]+, [\d.]+$")


def _client(cloud: Stack, name: str, version: str) -> httpx.Client:
    c = resolve_cloud(name, cloud.data_dir / "clouds.yaml")
    return httpx.Client(
        base_url=c.compute_url,
        headers={"X-Auth-Token": c.token, "OpenStack-API-Version": f"compute {version}"},
        timeout=30,
    )


def test_diagnostics_and_uptime_come_from_the_agents(cloud: Stack) -> None:
    sid = boot_one_through_api(cloud, "diag")
    with (
        _client(cloud, "loom-admin", "2.48") as admin,
        _client(cloud, "loom-admin", "2.1") as old_admin,
        _client(cloud, "loom", "2.48") as demo,
        _client(cloud, "loom-admin", "2.88") as new_admin,
    ):
        r = admin.get(f"/servers/{sid}/diagnostics")
        assert r.status_code == 200, r.text
        d = r.json()
        assert (d["state"], d["driver"], d["hypervisor"]) == ("running", "libvirt", "test")
        assert d["num_cpus"] == len(d["cpu_details"]) >= 1
        assert d["memory_details"]["maximum"] > 0
        assert d["num_disks"] == len(d["disk_details"]) >= 1
        assert d["uptime"] >= 0
        assert d["config_drive"] is False
        legacy = old_admin.get(f"/servers/{sid}/diagnostics").json()
        assert legacy["memory"] == d["memory_details"]["maximum"] * 1024
        assert "cpu0_time" in legacy
        r = demo.get(f"/servers/{sid}/diagnostics")
        assert r.status_code == 403, r.text

        hypervisors = old_admin.get("/os-hypervisors").json()["hypervisors"]
        hid = hypervisors[0]["id"]
        r = old_admin.get(f"/os-hypervisors/{hid}/uptime")
        assert r.status_code == 200, r.text
        assert _UPTIME.match(r.json()["hypervisor"]["uptime"]), r.json()
        new = new_admin.get("/os-hypervisors").json()["hypervisors"][0]["id"]
        shown = new_admin.get(f"/os-hypervisors/{new}").json()["hypervisor"]
        assert _UPTIME.match(shown["uptime"]), shown

        # The audit log's period is the last whole month before the time given: a time in
        # the month after this one counts the server booted now.
        today = datetime.now(UTC)
        ahead = today.replace(day=1) + timedelta(days=40)
        r = old_admin.get(f"/os-instance_usage_audit_log/{ahead:%Y-%m-%d %H:%M:%S}")
        assert r.status_code == 200, r.text
        audit = r.json()["instance_usage_audit_log"]
        assert audit["period_beginning"] == f"{today:%Y-%m}-01 00:00:00"
        assert (audit["num_hosts"], audit["total_instances"]) == (3, 1)
        assert sorted(e["instances"] for e in audit["log"].values()) == [0, 0, 1]
        listed = old_admin.get("/os-instance_usage_audit_log").json()["instance_usage_audit_logs"]
        assert listed["total_instances"] == 0, "nothing ran last month"
        assert old_admin.get("/os-instance_usage_audit_log/invalid_time").status_code == 400
        assert demo.get("/os-instance_usage_audit_log").status_code == 403


def test_os_hosts_lists_shows_and_disables_hosts_and_refuses_power_actions(cloud: Stack) -> None:
    boot_one_through_api(cloud, "hosts")
    with (
        _client(cloud, "loom-admin", "2.42") as admin,
        _client(cloud, "loom", "2.42") as demo,
        _client(cloud, "loom-admin", "2.43") as gone,
    ):

        def every_service_listed() -> list[dict[str, str]] | None:
            # The scheduler records its own service row with its first heartbeat, which
            # may come after the first boot on a loaded machine.
            found: list[dict[str, str]] = admin.get("/os-hosts").json()["hosts"]
            return found if {"conductor", "scheduler"} <= {h["service"] for h in found} else None

        hosts = polling.wait_until(
            every_service_listed, polling.SERVICE_READY_S, "conductor and scheduler in os-hosts"
        )
        computes = [h for h in hosts if h["service"] == "compute"]
        assert len(computes) == 3
        zone = computes[0]["zone"]
        assert computes[0] in admin.get("/os-hosts", params={"zone": zone}).json()["hosts"]
        assert admin.get("/os-hosts", params={"zone": "xxx"}).json()["hosts"] == []
        assert admin.get("/os-hosts", params={"zone": ""}).json()["hosts"] == hosts
        assert gone.get("/os-hosts").status_code == 404
        assert demo.get("/os-hosts").status_code == 403

        used = None
        for h in computes:
            name = h["host_name"]
            r = admin.get(f"/os-hosts/{name}")
            assert r.status_code == 200, r.text
            rows = [x["resource"] for x in r.json()["host"]]
            assert [x["project"] for x in rows[:3]] == ["(total)", "(used_now)", "(used_max)"]
            assert all(x["host"] == name for x in rows)
            if len(rows) > 3:
                used = rows
        assert used is not None, "the booted server's host lists its project"
        assert used[3]["cpu"] == used[2]["cpu"] >= 1
        assert admin.get("/os-hosts/nonexistent_hostname").status_code == 404

        name = computes[0]["host_name"]
        r = admin.put(f"/os-hosts/{name}", json={"status": "disable"})
        assert r.status_code == 200, r.text
        assert r.json() == {"host": {"host": name, "status": "disabled"}}
        services = admin.get("/os-services", params={"host": name}).json()["services"]
        assert services[0]["status"] == "disabled"
        assert name not in {h["host_name"] for h in admin.get("/os-hosts").json()["hosts"]}
        r = admin.put(f"/os-hosts/{name}", json={"status": "Enable"})
        assert r.json()["host"]["status"] == "enabled"
        r = admin.put(f"/os-hosts/{name}", json={"status": "disable", "maintenance_mode": "enable"})
        assert r.status_code == 501, r.text
        assert (
            admin.get("/os-services", params={"host": name}).json()["services"][0]["status"]
            == "enabled"
        ), "a refused request changes nothing"
        for bad in ({}, {"status": "invalid"}, {"status": "enable", "maintenance_mode": "x"}):
            assert admin.put(f"/os-hosts/{name}", json=bad).status_code == 400
        assert admin.put("/os-hosts/nope", json={"status": "enable"}).status_code == 404
        for action in ("reboot", "shutdown", "startup"):
            assert admin.get(f"/os-hosts/{name}/{action}").status_code == 501
            assert admin.get(f"/os-hosts/nope/{action}").status_code == 404
            assert demo.get(f"/os-hosts/{name}/{action}").status_code == 403
