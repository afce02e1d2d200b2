"""R3: every bus message handled twice and 5% of them never acked (so JetStream redelivers
them after ack_wait) reach the same end state as a clean run of the same storm.

The faults are injected at Loom's own consumers (controlplane/runtime/busfaults.py:
`nats.fault_duplicate`, `nats.fault_drop_before_ack`), so every real handler, its ack and
its idempotency run. One stack runs the storm twice: clean, then with the conductor and
the agents restarted with the faults on. The end states are compared by server name."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from loom.compute.v1 import agent_bus_pb2, compute_pb2, compute_pb2_grpc

from bench.client import CloudEndpoint, resolve_cloud
from controlplane.runtime.natsserver import free_port
from tests.chaos.conftest import Report, scale
from tests.chaos.support import lift_quotas, public_image
from tests.e2e.support import db_scalar, wait_for_hosts
from tests.support import invariants
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

HOSTS = 3
ACK_WAIT_S = 3
DROP = 0.05
# Long enough for every withheld ack's message to come back (and its own copies too).
QUIET_S = 3 * ACK_WAIT_S


def _h(cloud: CloudEndpoint) -> dict[str, str]:
    return {"X-Auth-Token": cloud.token, "OpenStack-API-Version": "compute 2.74"}


@dataclass(frozen=True)
class EndState:
    """One server of the storm as it ended: its status, and the domains of it the hosts
    run (count and power state)."""

    status: str
    domains: int
    power: str


async def _statuses(
    http: httpx.AsyncClient, cloud: CloudEndpoint, ids: list[str]
) -> dict[str, str]:
    """Each server's status, with its task when it has one ("DELETED" once gone)."""
    seen: dict[str, str] = {}
    for sid in ids:
        r = await http.get(f"{cloud.compute_url}/servers/{sid}", headers=_h(cloud))
        if r.status_code == 404:
            seen[sid] = "DELETED"
            continue
        server = r.json()["server"]
        seen[sid] = str(server["status"])
        if server.get("OS-EXT-STS:task_state"):
            seen[sid] += f"/{server['OS-EXT-STS:task_state']}"
    return seen


async def _wait_for(
    http: httpx.AsyncClient, cloud: CloudEndpoint, ids: list[str], want: str, within: float
) -> None:
    """Polls until each server shows `want` with no task (or ERROR)."""
    deadline = time.monotonic() + within
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        seen = await _statuses(http, cloud, pending)
        pending = [sid for sid in pending if seen[sid] not in (want, "ERROR")]
        if pending:
            await asyncio.sleep(0.3)


async def _action(
    http: httpx.AsyncClient, cloud: CloudEndpoint, sid: str, body: dict[str, Any]
) -> None:
    r = await http.post(f"{cloud.compute_url}/servers/{sid}/action", json=body, headers=_h(cloud))
    assert r.status_code == 202, r.text


async def _storm(
    http: httpx.AsyncClient, cloud: CloudEndpoint, image: str, prefix: str, n: int
) -> dict[str, str]:
    """Boots n servers, stops half, starts half of those again, reboots a quarter and
    deletes the last quarter, each step settled before the next. Returns name -> id."""
    body = {"server": {"imageRef": image, "flavorRef": "1", "networks": "none"}}
    ids: dict[str, str] = {}
    for i in range(n):
        name = f"{prefix}-{i:04d}"
        r = await http.post(
            f"{cloud.compute_url}/servers",
            json={"server": {**body["server"], "name": name}},
            headers=_h(cloud),
        )
        assert r.status_code == 202, r.text
        ids[name] = r.json()["server"]["id"]
    order = list(ids.values())
    within = 60 + n
    await _wait_for(http, cloud, order, "ACTIVE", within)
    stopped, rest = order[: n // 2], order[n // 2 :]
    rebooted, deleted = rest[: len(rest) // 2], rest[len(rest) // 2 :]
    started = stopped[: len(stopped) // 2]
    for sid in stopped:
        await _action(http, cloud, sid, {"os-stop": None})
    await _wait_for(http, cloud, stopped, "SHUTOFF", within)
    for sid in started:
        await _action(http, cloud, sid, {"os-start": None})
    for sid in rebooted:
        await _action(http, cloud, sid, {"reboot": {"type": "SOFT"}})
    await _wait_for(http, cloud, started + rebooted, "ACTIVE", within)
    for sid in deleted:
        r = await http.delete(f"{cloud.compute_url}/servers/{sid}", headers=_h(cloud))
        assert r.status_code == 204, r.text
    await _wait_for(http, cloud, deleted, "DELETED", within)
    return ids


async def _domains(agent_target: str, hosts: list[str]) -> dict[str, list[str]]:
    """instance id -> the power state of each domain of it, on every host."""
    found: dict[str, list[str]] = {}
    async with grpc.aio.insecure_channel(agent_target) as channel:
        stub = compute_pb2_grpc.ComputeServiceStub(channel)
        for host in hosts:
            resp = await stub.ListHostInstances(
                compute_pb2.ListHostInstancesRequest(host=host), timeout=10
            )
            for inst in resp.instances:
                found.setdefault(inst.instance_id, []).append(
                    agent_bus_pb2.PowerState.Name(inst.power_state)
                )
    return found


async def _end_state(
    http: httpx.AsyncClient,
    cloud: CloudEndpoint,
    ids: dict[str, str],
    agent_target: str,
    hosts: list[str],
) -> dict[str, EndState]:
    domains = await _domains(agent_target, hosts)
    seen = await _statuses(http, cloud, list(ids.values()))
    return {
        name.split("-", 1)[1]: EndState(
            status=seen[sid],
            domains=len(domains.get(sid, [])),
            power=",".join(sorted(domains.get(sid, []))) or "-",
        )
        for name, sid in ids.items()
    }


def _scrape(url: str) -> dict[str, float]:
    """Sums of the loom_bus_* and loom_agent_stale_* counters one service serves, over
    their labels."""
    sums: dict[str, float] = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        match = re.match(
            r"^(loom_bus_\w+|loom_agent_stale_\w+)_total(\{[^}]*\})? ([0-9.e+]+)$", line
        )
        if match:
            sums[match.group(1)] = sums.get(match.group(1), 0.0) + float(match.group(3))
    return sums


def _invariants(stack: Stack) -> dict[str, int]:
    return {
        "overcommitted_hosts": int(db_scalar(stack.db_url, invariants.OVERCOMMITTED_HOSTS_SQL)),
        "usage_mismatches": int(db_scalar(stack.db_url, invariants.USAGE_MISMATCH_SQL)),
        "orphaned_allocations": int(db_scalar(stack.db_url, invariants.ORPHANED_ALLOCATIONS_SQL)),
        "outbox_rows": int(db_scalar(stack.db_url, invariants.OUTBOX_ROWS_SQL)),
        "duplicated_instances": int(db_scalar(stack.db_url, invariants.DUPLICATED_INSTANCES_SQL)),
    }


async def test_r3_duplicated_and_unacked_bus_messages_end_where_a_clean_run_ends(
    chaos_stack: Stack, chaos_report: Report
) -> None:
    stack = chaos_stack
    stack.extra_env["LOOM_NATS__ACK_WAIT_S"] = str(ACK_WAIT_S)
    agent_port = free_port()
    hosts = [f"r3-{i:04d}" for i in range(HOSTS)]
    stack.start("scheduler")
    stack.start("conductor")
    stack.start(
        "agent",
        "--simulate",
        str(HOSTS),
        "--host-prefix",
        "r3",
        env={"LOOM_AGENT__LISTEN": f"127.0.0.1:{agent_port}"},
    )
    stack.start("gateway")
    await wait_for_hosts(stack, HOSTS)
    agent_target = f"127.0.0.1:{agent_port}"
    admin = resolve_cloud("loom-admin", stack.data_dir / "clouds.yaml")
    n = scale(8, 200)

    async with httpx.AsyncClient(timeout=60) as http:
        image = await public_image(http, stack, admin, "r3")
        await lift_quotas(http, admin, admin.project_id)

        began = time.monotonic()
        clean_ids = await _storm(http, admin, image, "clean", n)
        clean_s = time.monotonic() - began
        clean = await _end_state(http, admin, clean_ids, agent_target, hosts)

        # The same storm with every message handled twice and 5% never acked.
        for name in ("conductor", "agent"):
            stack.stop(name)
            stack.services[name].env.update(
                {
                    "LOOM_NATS__FAULT_DUPLICATE": "true",
                    "LOOM_NATS__FAULT_DROP_BEFORE_ACK": str(DROP),
                }
            )
            stack.start(name)
        await wait_for_hosts(stack, HOSTS)
        # The gateway's channel to the conductor reconnects on its own schedule.
        back = time.monotonic()
        while (
            await http.get(f"{admin.compute_url}/servers", headers=_h(admin))
        ).status_code != 200:
            assert time.monotonic() - back < 120, "the gateway never reached the new conductor"
            await asyncio.sleep(0.2)
        gateway_back_s = time.monotonic() - back
        began = time.monotonic()
        faulty_ids = await _storm(http, admin, image, "faulty", n)
        faulty_s = time.monotonic() - began
        await asyncio.sleep(QUIET_S)
        faulty = await _end_state(http, admin, faulty_ids, agent_target, hosts)
        counters: dict[str, float] = {}
        for name in ("conductor", "agent"):
            for key, value in _scrape(stack.services[name].metrics_url).items():
                counters[key] = counters.get(key, 0.0) + value

    diff = {k: (clean.get(k), faulty.get(k)) for k in clean.keys() | faulty.keys()}
    diff = {k: v for k, v in diff.items() if v[0] != v[1]}
    checks = _invariants(stack)
    figures: dict[str, Any] = {
        "hosts": HOSTS,
        "servers_per_run": n,
        "ack_wait_s": ACK_WAIT_S,
        "drop_before_ack": DROP,
        "messages_duplicated": int(counters.get("loom_bus_fault_duplicated", 0)),
        "acks_dropped": int(counters.get("loom_bus_fault_ack_dropped", 0)),
        "redelivered": int(counters.get("loom_bus_redelivered", 0)),
        "stale_commands_skipped": int(counters.get("loom_agent_stale_commands_skipped", 0)),
        "gateway_answered_after_restart_s": round(gateway_back_s, 1),
        "clean_storm_s": round(clean_s, 1),
        "faulty_storm_s": round(faulty_s, 1),
        "end_state_diff": len(diff),
        "diff": {k: [str(a), str(b)] for k, (a, b) in sorted(diff.items())},
        **checks,
    }
    chaos_report.add("R3", figures)
    assert figures["messages_duplicated"] > 0, figures
    assert figures["acks_dropped"] > 0 or n < 20, figures
    assert diff == {}, figures
    assert all(v == 0 for v in checks.values()), figures
    # The clean run is the expected storm: the sanity of the comparison itself.
    statuses = sorted(s.status for s in clean.values())
    assert statuses.count("DELETED") == n - n // 2 - (n - n // 2) // 2, clean
    assert "ERROR" not in statuses, clean
