"""R4: a host whose agent dies is marked down within service_down_time plus one heartbeat,
and nothing is placed on it afterwards; a host whose hypervisor calls block for twice
service_down_time stays up, and its build finishes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import httpx
import pytest
from loom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

from bench.client import CloudEndpoint, resolve_cloud
from tests.chaos.conftest import Report, scale
from tests.chaos.support import lift_quotas, public_image
from tests.e2e.support import wait_for_hosts
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

DOWN_AFTER_S = 6
HEARTBEAT_S = 1


def _h(cloud: CloudEndpoint, version: str = "2.74") -> dict[str, str]:
    return {"X-Auth-Token": cloud.token, "OpenStack-API-Version": f"compute {version}"}


async def _up_hosts(stack: Stack) -> dict[str, bool]:
    async with grpc.aio.insecure_channel(stack.scheduler_target) as channel:
        resp = await scheduler_pb2_grpc.SchedulerServiceStub(channel).ListHosts(
            scheduler_pb2.ListHostsRequest(), timeout=10
        )
    return {h.name: h.up for h in resp.hosts}


async def _wait_settled(
    http: httpx.AsyncClient, cloud: CloudEndpoint, ids: list[str], within: float
) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and len(done) < len(ids):
        for sid in ids:
            if sid in done:
                continue
            r = await http.get(f"{cloud.compute_url}/servers/{sid}", headers=_h(cloud))
            if r.status_code == 200 and r.json()["server"]["status"] in ("ACTIVE", "ERROR"):
                done[sid] = r.json()["server"]
        await asyncio.sleep(0.5)
    return done


async def test_r4_a_dead_agent_s_hosts_go_down_in_time_and_a_slow_hypervisor_s_host_stays_up(
    chaos_stack: Stack, chaos_report: Report
) -> None:
    stack = chaos_stack
    for section in ("CONDUCTOR", "SCHEDULER"):
        stack.extra_env[f"LOOM_{section}__SERVICE_DOWN_TIME"] = str(DOWN_AFTER_S)
    stack.extra_env["LOOM_AGENT__HEARTBEAT_INTERVAL"] = str(HEARTBEAT_S)
    stack.start("scheduler")
    stack.start("conductor")
    stack.start("agent#live", "--simulate", "2", "--host-prefix", "live")
    stack.start("agent#doomed", "--simulate", "2", "--host-prefix", "doomed")
    stack.start("gateway")
    await wait_for_hosts(stack, 4)
    clouds = stack.data_dir / "clouds.yaml"
    admin = resolve_cloud("loom-admin", clouds)
    boots = scale(6, 60)

    # The dead agent.
    stack.kill("agent#doomed")
    killed = time.monotonic()
    detected_s: float | None = None
    while time.monotonic() - killed < 4 * DOWN_AFTER_S:
        hosts = await _up_hosts(stack)
        if not any(up for name, up in hosts.items() if name.startswith("doomed")):
            detected_s = time.monotonic() - killed
            break
        await asyncio.sleep(0.1)

    async with httpx.AsyncClient(timeout=60) as http:
        image = await public_image(http, stack, admin, "r4")
        await lift_quotas(http, admin, admin.project_id)
        body = {"server": {"name": "r4", "imageRef": image, "flavorRef": "1", "networks": "none"}}
        made = [
            await http.post(f"{admin.compute_url}/servers", json=body, headers=_h(admin))
            for _ in range(boots)
        ]
        assert [r.status_code for r in made] == [202] * boots, [r.text for r in made]
        ids = [r.json()["server"]["id"] for r in made]
        placed = await _wait_settled(http, admin, ids, 120)
        on_down_host = [
            sid
            for sid, s in placed.items()
            if str(s.get("OS-EXT-SRV-ATTR:host", "")).startswith("doomed")
        ]

        # The slow hypervisor: a build there takes twice service_down_time. Its host joins
        # only now, so the boots above (however many) were not queued behind its builds.
        stack.start(
            "agent#slow",
            "--simulate",
            "1",
            "--host-prefix",
            "slow",
            env={"LOOM_AGENT__SIM_HYPERVISOR_LATENCY_S": str(2 * DOWN_AFTER_S)},
        )
        await wait_for_hosts(stack, 3)  # the two live hosts and the slow one
        slow_body = {"server": {**body["server"], "name": "r4-slow", "host": "slow-0000"}}
        slow = await http.post(f"{admin.compute_url}/servers", json=slow_body, headers=_h(admin))
        assert slow.status_code == 202, slow.text
        slow_id = slow.json()["server"]["id"]
        began = time.monotonic()
        slow_seen_down = 0
        slow_done: dict[str, dict[str, Any]] = {}
        while time.monotonic() - began < 6 * DOWN_AFTER_S and not slow_done:
            if not (await _up_hosts(stack)).get("slow-0000", False):
                slow_seen_down += 1
            slow_done = await _wait_settled(http, admin, [slow_id], 0.5)
        slow_build_s = time.monotonic() - began

    figures = {
        "service_down_time_s": DOWN_AFTER_S,
        "heartbeat_interval_s": HEARTBEAT_S,
        "dead_agent_hosts": 2,
        "marked_down_after_s": None if detected_s is None else round(detected_s, 1),
        "bound_s": DOWN_AFTER_S + HEARTBEAT_S,
        "boots_after_death": boots,
        "active_after_death": sum(1 for s in placed.values() if s["status"] == "ACTIVE"),
        "placed_on_down_hosts": len(on_down_host),
        "slow_hypervisor_latency_s": 2 * DOWN_AFTER_S,
        "slow_host_seen_down": slow_seen_down,
        "slow_build_status": slow_done.get(slow_id, {}).get("status", "unsettled"),
        "slow_build_s": round(slow_build_s, 1),
    }
    chaos_report.add("R4", figures)
    assert detected_s is not None, figures
    assert detected_s <= DOWN_AFTER_S + HEARTBEAT_S, figures
    assert figures["placed_on_down_hosts"] == 0, figures
    assert figures["active_after_death"] == boots, figures
    assert slow_seen_down == 0, figures
    assert figures["slow_build_status"] == "ACTIVE", figures
