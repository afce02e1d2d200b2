"""R2: an agent killed (SIGKILL) while a hypervisor call is in progress, in each
transitional task state, comes back to the end state Nova's compute `_init_instance` gives
(or, where Loom documents otherwise, Loom's own).

Each state gets a server on a simulated host of its own, all in one agent process whose
every hypervisor call takes LATENCY_S (`agent.sim_hypervisor_latency_s`), so that one kill
lands while every call is in progress. A simulated hypervisor (test:///) lives in the agent
process: the kill also loses its domains, as a host reboot would; on restart the agent
re-creates the ones at rest (reconcile) and JetStream redelivers the commands it never
acked (after `nats.ack_wait_s`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
import httpx
import pytest
from loom.compute.v1 import agent_bus_pb2, compute_pb2, compute_pb2_grpc

from bench.client import CloudEndpoint, resolve_cloud
from controlplane.runtime.natsserver import free_port
from tests.chaos.conftest import Report
from tests.e2e.support import db_scalar, wait_for_hosts
from tests.support import invariants
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

LATENCY_S = 8
ACK_WAIT_S = 3
PREFIX = "r2"


def _h(cloud: CloudEndpoint) -> dict[str, str]:
    return {"X-Auth-Token": cloud.token, "OpenStack-API-Version": "compute 2.74"}


@dataclass(frozen=True)
class Case:
    """One transitional task state: how a server gets there, and the end states."""

    task_state: str
    # Where the server is before the action: ACTIVE or SHUTOFF.
    before: str
    # The action that puts it in task_state (None: the build itself).
    action: dict[str, Any] | str | None
    # What Nova's _init_instance gives, and what Loom must give (status, power).
    nova: str
    expected: tuple[str, str]


CASES = [
    # Loom finishes the build: its command comes back and is carried out (docs/reliability.md).
    Case("spawning", "-", None, "ERROR", ("ACTIVE", "RUNNING")),
    Case("powering-off", "ACTIVE", {"os-stop": None}, "SHUTOFF", ("SHUTOFF", "SHUTDOWN")),
    Case("powering-on", "SHUTOFF", {"os-start": None}, "ACTIVE", ("ACTIVE", "RUNNING")),
    Case("rebooting", "ACTIVE", {"reboot": {"type": "SOFT"}}, "ACTIVE", ("ACTIVE", "RUNNING")),
    Case("rebooting_hard", "ACTIVE", {"reboot": {"type": "HARD"}}, "ACTIVE", ("ACTIVE", "RUNNING")),
    Case("deleting", "ACTIVE", "delete", "DELETED", ("DELETED", "-")),
    Case(
        "resize_migrating",
        "ACTIVE",
        {"migrate": {"host": f"{PREFIX}-0007"}},
        "ACTIVE (reverted to the source, task cleared)",
        ("VERIFY_RESIZE", "RUNNING"),
    ),
]
# The destination of the migration (a host with no server of its own).
HOSTS = len(CASES) + 1


async def _server(http: httpx.AsyncClient, cloud: CloudEndpoint, sid: str) -> dict[str, Any]:
    r = await http.get(f"{cloud.compute_url}/servers/{sid}", headers=_h(cloud))
    if r.status_code == 404:
        return {"status": "DELETED", "OS-EXT-STS:task_state": None}
    assert r.status_code == 200, r.text
    server: dict[str, Any] = r.json()["server"]
    return server


async def _until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def _settled(http: httpx.AsyncClient, cloud: CloudEndpoint, sid: str, status: str) -> bool:
    s = await _server(http, cloud, sid)
    return bool(s["status"] == status and not s.get("OS-EXT-STS:task_state"))


async def _powers(agent_target: str) -> dict[str, str]:
    found: dict[str, str] = {}
    async with grpc.aio.insecure_channel(agent_target) as channel:
        stub = compute_pb2_grpc.ComputeServiceStub(channel)
        for i in range(HOSTS):
            resp = await stub.ListHostInstances(
                compute_pb2.ListHostInstancesRequest(host=f"{PREFIX}-{i:04d}"), timeout=10
            )
            for inst in resp.instances:
                found[inst.instance_id] = agent_bus_pb2.PowerState.Name(
                    inst.power_state
                ).removeprefix("POWER_STATE_")
    return found


async def test_r2_an_agent_killed_in_each_transitional_task_state_ends_as_nova_s_init_instance(
    chaos_stack: Stack, chaos_report: Report
) -> None:
    stack = chaos_stack
    stack.extra_env["LOOM_NATS__ACK_WAIT_S"] = str(ACK_WAIT_S)
    agent_port = free_port()
    agent_target = f"127.0.0.1:{agent_port}"
    stack.start("scheduler")
    stack.start("conductor")
    stack.start(
        "agent",
        "--simulate",
        str(HOSTS),
        "--host-prefix",
        PREFIX,
        env={
            "LOOM_AGENT__LISTEN": agent_target,
            "LOOM_AGENT__SIM_HYPERVISOR_LATENCY_S": str(LATENCY_S),
        },
    )
    stack.start("gateway")
    await wait_for_hosts(stack, HOSTS)
    admin = resolve_cloud("loom-admin", stack.data_dir / "clouds.yaml")
    slow = 6 * LATENCY_S + 30

    async with httpx.AsyncClient(timeout=60) as http:
        images = f"{stack.gateway_url}/image/v2/images"
        made = await http.post(
            images,
            json={"name": "r2", "disk_format": "raw", "container_format": "bare"}
            | {"visibility": "public"},
            headers=_h(admin),
        )
        image = str(made.json()["id"])
        await http.put(
            f"{images}/{image}/file",
            content=b"\0" * 65536,
            headers={**_h(admin), "Content-Type": "application/octet-stream"},
        )

        async def boot(i: int) -> str:
            body = {
                "server": {
                    "name": f"r2-{CASES[i].task_state}",
                    "imageRef": image,
                    "flavorRef": "1",
                    "networks": "none",
                    "host": f"{PREFIX}-{i:04d}",
                }
            }
            r = await http.post(f"{admin.compute_url}/servers", json=body, headers=_h(admin))
            assert r.status_code == 202, r.text
            return str(r.json()["server"]["id"])

        async def act(sid: str, action: dict[str, Any] | str) -> None:
            if action == "delete":
                r = await http.delete(f"{admin.compute_url}/servers/{sid}", headers=_h(admin))
                assert r.status_code == 204, r.text
                return
            r = await http.post(
                f"{admin.compute_url}/servers/{sid}/action", json=action, headers=_h(admin)
            )
            assert r.status_code == 202, r.text

        # The servers that start from ACTIVE or SHUTOFF, made ready first.
        ids: dict[str, str] = {}
        ready = [i for i, c in enumerate(CASES) if c.before != "-"]
        for i in ready:
            ids[CASES[i].task_state] = await boot(i)
        for i in ready:
            sid = ids[CASES[i].task_state]
            await _until(partial(_settled, http, admin, sid, "ACTIVE"), slow, "ACTIVE")
        for i in ready:
            if CASES[i].before == "SHUTOFF":
                sid = ids[CASES[i].task_state]
                await act(sid, {"os-stop": None})
                await _until(partial(_settled, http, admin, sid, "SHUTOFF"), slow, "stop")

        # Every transitional state at once, then the kill while each call is in progress.
        for i, case in enumerate(CASES):
            if case.action is None:
                ids[case.task_state] = await boot(i)
            else:
                await act(ids[case.task_state], case.action)
        issued = time.monotonic()

        async def in_states() -> bool:
            for case in CASES:
                s = await _server(http, admin, ids[case.task_state])
                if s.get("OS-EXT-STS:task_state") != case.task_state:
                    return False
            return True

        await _until(in_states, LATENCY_S, "every server in its transitional state")
        # The commands reach the agent within a second of their state; kill halfway
        # through their hypervisor calls.
        await asyncio.sleep(max(0.0, LATENCY_S / 2 - (time.monotonic() - issued)) + 1)
        seen_before_kill = {
            c.task_state: (await _server(http, admin, ids[c.task_state])).get(
                "OS-EXT-STS:task_state"
            )
            for c in CASES
        }
        stack.kill("agent")
        killed = time.monotonic()
        stack.start("agent")

        ends: dict[str, dict[str, Any]] = {}

        async def all_settled() -> bool:
            for case in CASES:
                s = await _server(http, admin, ids[case.task_state])
                if s.get("OS-EXT-STS:task_state"):
                    return False
                ends[case.task_state] = s
            return True

        await _until(all_settled, slow + 60, "every server settled after the restart")
        settled_s = time.monotonic() - killed
        powers = await _powers(agent_target)

    rows = []
    for case in CASES:
        sid = ids[case.task_state]
        seen = (str(ends[case.task_state]["status"]), powers.get(sid, "-"))
        rows.append(
            {
                "task_state": case.task_state,
                "at_kill": seen_before_kill[case.task_state],
                "end": f"{seen[0]} ({seen[1]})",
                "nova": case.nova,
                "expected": f"{case.expected[0]} ({case.expected[1]})",
                "pass": seen == case.expected,
            }
        )
    checks = {
        "overcommitted_hosts": int(db_scalar(stack.db_url, invariants.OVERCOMMITTED_HOSTS_SQL)),
        "usage_mismatches": int(db_scalar(stack.db_url, invariants.USAGE_MISMATCH_SQL)),
        "orphaned_allocations": int(db_scalar(stack.db_url, invariants.ORPHANED_ALLOCATIONS_SQL)),
    }
    figures = {
        "latency_s": LATENCY_S,
        "ack_wait_s": ACK_WAIT_S,
        "settled_after_kill_s": round(settled_s, 1),
        "states": rows,
        **checks,
    }
    chaos_report.add("R2", figures)
    assert all(r["at_kill"] == r["task_state"] for r in rows), figures
    assert all(r["pass"] for r in rows), figures
    assert all(v == 0 for v in checks.values()), figures
