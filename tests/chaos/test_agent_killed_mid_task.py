"""R2: an agent killed (SIGKILL) while a hypervisor call is in progress, in each
transitional task state, comes back to the end state Nova's compute `_init_instance` gives
(or, where Loom documents otherwise, Loom's own).

Each state gets a server on a simulated host of its own (a move also gets a destination of
its own), all in one agent process whose every hypervisor call takes LATENCY_S
(`agent.sim_hypervisor_latency_s`), so that one kill lands while every call is in progress.
The agent logs each simulated call as it starts: the kill waits until every case's call has
started, and the scenario checks from that log that each was still running when it struck.
A simulated hypervisor (test:///) lives in the agent process: the kill also loses its
domains, as a host reboot would; on restart the agent re-creates the ones the record needs
(reconcile) and JetStream redelivers the commands it never acked (after `nats.ack_wait_s`).
The agent reaches the Image API as `loom up`'s does, so snapshots, backups and shelves
upload there."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from loom.compute.v1 import agent_bus_pb2, compute_pb2, compute_pb2_grpc

from bench.client import CloudEndpoint, resolve_cloud
from controlplane.runtime.natsserver import free_port
from tests.chaos.conftest import Report
from tests.chaos.support import lift_quotas, public_image
from tests.e2e.support import db_scalar, wait_for_hosts
from tests.support import invariants
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

LATENCY_S = 8
ACK_WAIT_S = 3
PREFIX = "r2"
MICROVERSION = "2.74"
# How long after the last case's call started the kill comes: every call is then in progress.
KILL_AFTER_LAST_CALL_S = 1.0


def _h(cloud: CloudEndpoint, microversion: str = MICROVERSION) -> dict[str, str]:
    return {"X-Auth-Token": cloud.token, "OpenStack-API-Version": f"compute {microversion}"}


@dataclass(frozen=True)
class Case:
    """One transitional task state: how a server gets there, and the end states."""

    # Unique: the task state, or what tells two cases of one task state apart.
    name: str
    # What the API shows while the hypervisor call below is in progress.
    task_state: str
    # Where the server rests before the action ("-": the action is the build itself).
    before: str
    # The action that puts it in task_state: a server action's body, "delete", "migrate"
    # (to the case's own destination host) or "rebuild" (from its own image).
    action: dict[str, Any] | str | None
    # The simulated hypervisor call (nodeagent's LibvirtDriver verb) the kill must cut.
    call: str
    # What Nova's _init_instance gives, and what Loom must give (status, power on its host).
    nova: str
    expected: tuple[str, str]
    # Seconds its action is issued before the others': its state follows a first call
    # (a move's stop of the source) that must be over when the others' calls start.
    lead_s: float = 0
    # A move: the case has a destination host of its own.
    moves: bool = False
    # The microversion its action needs.
    microversion: str = MICROVERSION


_NOT_HANDLED = "not handled: the task is left as it was (reset-state)"

CASES = [
    # Loom finishes the build: its command comes back and is carried out (docs/reliability.md).
    Case("spawning", "spawning", "-", None, "create", "ERROR", ("ACTIVE", "RUNNING")),
    Case(
        "powering-off",
        "powering-off",
        "ACTIVE",
        {"os-stop": None},
        "stop",
        "SHUTOFF (stop retried)",
        ("SHUTOFF", "SHUTDOWN"),
    ),
    Case(
        "powering-on",
        "powering-on",
        "SHUTOFF",
        {"os-start": None},
        "start",
        "ACTIVE (start retried)",
        ("ACTIVE", "RUNNING"),
    ),
    Case(
        "rebooting",
        "rebooting",
        "ACTIVE",
        {"reboot": {"type": "SOFT"}},
        "reboot",
        "ACTIVE (reboot retried)",
        ("ACTIVE", "RUNNING"),
    ),
    Case(
        "rebooting_hard",
        "rebooting_hard",
        "ACTIVE",
        {"reboot": {"type": "HARD"}},
        "reboot",
        "ACTIVE (reboot retried)",
        ("ACTIVE", "RUNNING"),
    ),
    Case(
        "deleting",
        "deleting",
        "ACTIVE",
        "delete",
        "destroy",
        "DELETED (deletion restarted)",
        ("DELETED", "-"),
    ),
    Case(
        "resize_migrating",
        "resize_migrating",
        "ACTIVE",
        "migrate",
        "stop",
        "ACTIVE (reverted to the source, task cleared)",
        ("VERIFY_RESIZE", "RUNNING"),
        moves=True,
    ),
    # The destination defining the moved server (the source was stopped LATENCY_S before).
    Case(
        "resize_finish",
        "resize_finish",
        "ACTIVE",
        "migrate",
        "create",
        _NOT_HANDLED,
        ("VERIFY_RESIZE", "RUNNING"),
        lead_s=LATENCY_S,
        moves=True,
    ),
    # The destination dropping its copy (the source is started after it).
    Case(
        "resize_reverting",
        "resize_reverting",
        "VERIFY_RESIZE",
        {"revertResize": None},
        "destroy",
        _NOT_HANDLED,
        ("ACTIVE", "RUNNING"),
        moves=True,
    ),
    # The source dropping the copy it kept.
    Case(
        "resize_confirming",
        "resize_confirming",
        "VERIFY_RESIZE",
        {"confirmResize": None},
        "destroy",
        _NOT_HANDLED,
        ("ACTIVE", "RUNNING"),
        moves=True,
    ),
    Case(
        "pausing",
        "pausing",
        "ACTIVE",
        {"pause": None},
        "pause",
        "ACTIVE (task cleared: the guest still runs)",
        ("PAUSED", "PAUSED"),
    ),
    Case(
        "unpausing",
        "unpausing",
        "PAUSED",
        {"unpause": None},
        "unpause",
        "ACTIVE (unpause retried)",
        ("ACTIVE", "RUNNING"),
    ),
    Case(
        "suspending",
        "suspending",
        "ACTIVE",
        {"suspend": None},
        "suspend",
        _NOT_HANDLED,
        ("SUSPENDED", "SUSPENDED"),
    ),
    Case(
        "resuming",
        "resuming",
        "SUSPENDED",
        {"resume": None},
        "resume",
        _NOT_HANDLED,
        ("ACTIVE", "RUNNING"),
    ),
    # The shut-down part of a shelve (its snapshot follows it).
    Case(
        "shelving",
        "shelving",
        "ACTIVE",
        {"shelve": None},
        "stop",
        _NOT_HANDLED,
        ("SHELVED", "SHUTDOWN"),
    ),
    Case(
        "shelving_offloading",
        "shelving_offloading",
        "SHELVED",
        {"shelveOffload": None},
        "destroy",
        _NOT_HANDLED,
        ("SHELVED_OFFLOADED", "-"),
    ),
    # A shelved server still on its host is started there.
    Case(
        "unshelving",
        "unshelving",
        "SHELVED",
        {"unshelve": None},
        "start",
        "ACTIVE (Nova's conductor makes it a start, powering-on, which is retried)",
        ("ACTIVE", "RUNNING"),
    ),
    # An offloaded one is built again (task spawning), here on its own host (2.91).
    Case(
        "unshelving (offloaded)",
        "spawning",
        "SHELVED_OFFLOADED",
        {"unshelve": {"host": "{host}"}},
        "create",
        "ERROR",
        ("ACTIVE", "RUNNING"),
        microversion="2.91",
    ),
    # The agent reports rebuild_spawning before its first call (the old domain's removal):
    # "rebuilding" itself has no hypervisor call to kill in.
    Case(
        "rebuild_spawning",
        "rebuild_spawning",
        "ACTIVE",
        "rebuild",
        "destroy",
        "ERROR",
        ("ACTIVE", "RUNNING"),
    ),
    Case(
        "image_snapshot",
        "image_snapshot",
        "ACTIVE",
        {"createImage": {"name": "r2-snapshot"}},
        "snapshot",
        "ACTIVE (task cleared, the interrupted snapshot cleaned up)",
        ("ACTIVE", "RUNNING"),
    ),
    Case(
        "image_backup",
        "image_backup",
        "ACTIVE",
        {"createBackup": {"name": "r2-backup", "backup_type": "daily", "rotation": 2}},
        "snapshot",
        "ACTIVE (task cleared: in the driver's snapshot the task is image_pending_upload)",
        ("ACTIVE", "RUNNING"),
    ),
]
# Each case's server starts on host i; each move's destination follows them, in order.
MOVES = [i for i, c in enumerate(CASES) if c.moves]
HOSTS = len(CASES) + len(MOVES)

# How a server gets to each `before` state from ACTIVE: (action, status it then rests in).
_TO_BEFORE: dict[str, list[tuple[dict[str, Any] | str, str]]] = {
    "ACTIVE": [],
    "SHUTOFF": [({"os-stop": None}, "SHUTOFF")],
    "PAUSED": [({"pause": None}, "PAUSED")],
    "SUSPENDED": [({"suspend": None}, "SUSPENDED")],
    "SHELVED": [({"shelve": None}, "SHELVED")],
    "SHELVED_OFFLOADED": [
        ({"shelve": None}, "SHELVED"),
        ({"shelveOffload": None}, "SHELVED_OFFLOADED"),
    ],
    "VERIFY_RESIZE": [("migrate", "VERIFY_RESIZE")],
}


def _host(i: int) -> str:
    return f"{PREFIX}-{i:04d}"


def _dest(i: int) -> str:
    return _host(len(CASES) + MOVES.index(i))


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
    assert s["status"] != "ERROR", s
    return bool(s["status"] == status and not s.get("OS-EXT-STS:task_state"))


async def _domains(agent_target: str) -> dict[tuple[str, str], str]:
    """(host, instance) → power state, for every domain of every simulated host."""
    found: dict[tuple[str, str], str] = {}
    async with grpc.aio.insecure_channel(agent_target) as channel:
        stub = compute_pb2_grpc.ComputeServiceStub(channel)
        for i in range(HOSTS):
            resp = await stub.ListHostInstances(
                compute_pb2.ListHostInstancesRequest(host=_host(i)), timeout=10
            )
            for inst in resp.instances:
                found[(_host(i), inst.instance_id)] = agent_bus_pb2.PowerState.Name(
                    inst.power_state
                ).removeprefix("POWER_STATE_")
    return found


def _calls(log_path: Path) -> list[tuple[datetime, str, str]]:
    """The simulated hypervisor calls the agent's log shows started: (when, instance, call)."""
    calls = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "simulated hypervisor call":
            ts = datetime.fromisoformat(entry["ts"])
            calls.append((ts, str(entry["instance"]), str(entry["call"])))
    return calls


def _call_started(
    calls: list[tuple[datetime, str, str]], sid: str, call: str, since: datetime
) -> datetime | None:
    starts = [ts for ts, iid, name in calls if iid == sid and name == call and ts >= since]
    return max(starts) if starts else None


async def test_r2_an_agent_killed_in_each_transitional_task_state_ends_as_nova_s_init_instance(
    chaos_stack: Stack, chaos_report: Report
) -> None:
    stack = chaos_stack
    stack.extra_env["LOOM_NATS__ACK_WAIT_S"] = str(ACK_WAIT_S)
    # A shelved server keeps its host until it is offloaded by hand (Nova's -1), so that
    # shelving, offloading and unshelving each have a state of their own.
    stack.extra_env["LOOM_CONDUCTOR__SHELVED_OFFLOAD_TIME"] = "-1"
    agent_port = free_port()
    agent_target = f"127.0.0.1:{agent_port}"
    stack.start("scheduler")
    stack.start("conductor")
    stack.start("gateway")
    admin = resolve_cloud("loom-admin", stack.data_dir / "clouds.yaml")
    stack.write_image_token(admin.token)
    stack.start(
        "agent",
        "--simulate",
        str(HOSTS),
        "--host-prefix",
        PREFIX,
        env={
            "LOOM_AGENT__LISTEN": agent_target,
            "LOOM_AGENT__SIM_HYPERVISOR_LATENCY_S": str(LATENCY_S),
            **stack.agent_image_env(),
        },
    )
    await wait_for_hosts(stack, HOSTS)
    agent_log = stack.services["agent"].log_path
    slow = 6 * LATENCY_S + 30

    async with httpx.AsyncClient(timeout=60) as http:
        images = f"{stack.gateway_url}/image/v2/images"
        await lift_quotas(http, admin, admin.project_id)
        image = await public_image(http, stack, admin, "r2")

        async def boot(i: int) -> str:
            body = {
                "server": {
                    "name": f"r2-{CASES[i].name.replace(' ', '-')}",
                    "imageRef": image,
                    "flavorRef": "1",
                    "networks": "none",
                    "host": _host(i),
                }
            }
            r = await http.post(f"{admin.compute_url}/servers", json=body, headers=_h(admin))
            assert r.status_code == 202, r.text
            return str(r.json()["server"]["id"])

        async def act(i: int, sid: str, action: dict[str, Any] | str, mv: str) -> dict[str, Any]:
            if action == "delete":
                r = await http.delete(f"{admin.compute_url}/servers/{sid}", headers=_h(admin))
                assert r.status_code == 204, r.text
                return {}
            if action == "migrate":
                action = {"migrate": {"host": _dest(i)}}
            elif action == "rebuild":
                action = {"rebuild": {"imageRef": image}}
            body = json.loads(json.dumps(action).replace('"{host}"', json.dumps(_host(i))))
            r = await http.post(
                f"{admin.compute_url}/servers/{sid}/action", json=body, headers=_h(admin, mv)
            )
            assert r.status_code in (202, 204), r.text
            answer: dict[str, Any] = r.json() if r.content else {}
            return answer

        # Every server that starts from a resting state is made ready first, all at once.
        ids: dict[str, str] = {}

        async def prepare(i: int) -> None:
            case = CASES[i]
            sid = ids[case.name] = await boot(i)
            await _until(partial(_settled, http, admin, sid, "ACTIVE"), slow, "ACTIVE")
            for action, rests_in in _TO_BEFORE[case.before]:
                await act(i, sid, action, MICROVERSION)
                await _until(partial(_settled, http, admin, sid, rests_in), slow, rests_in)

        await asyncio.gather(*(prepare(i) for i, c in enumerate(CASES) if c.before != "-"))

        # Every transitional state at once (a case with a lead before the others), then
        # the kill once every case's hypervisor call has started.
        issued: dict[str, datetime] = {}
        answers: dict[str, dict[str, Any]] = {}

        async def issue(i: int) -> None:
            case = CASES[i]
            issued[case.name] = datetime.now(UTC)
            if case.action is None:
                ids[case.name] = await boot(i)
            else:
                answers[case.name] = await act(i, ids[case.name], case.action, case.microversion)

        for lead in sorted({c.lead_s for c in CASES}, reverse=True):
            for i, case in enumerate(CASES):
                if case.lead_s == lead:
                    await issue(i)
            await asyncio.sleep(lead)

        async def in_states() -> bool:
            for case in CASES:
                s = await _server(http, admin, ids[case.name])
                if s.get("OS-EXT-STS:task_state") != case.task_state:
                    return False
            return True

        await _until(in_states, LATENCY_S, "every server in its transitional state")

        async def calls_started() -> bool:
            calls = _calls(agent_log)
            return all(
                _call_started(calls, ids[c.name], c.call, issued[c.name]) is not None for c in CASES
            )

        await _until(calls_started, 2 * LATENCY_S, "every case's hypervisor call started")
        await asyncio.sleep(KILL_AFTER_LAST_CALL_S)
        seen_before_kill = {
            c.name: (await _server(http, admin, ids[c.name])).get("OS-EXT-STS:task_state")
            for c in CASES
        }
        stack.kill("agent")
        killed_at = datetime.now(UTC)
        killed = time.monotonic()
        calls = _calls(agent_log)
        in_call = {}
        for case in CASES:
            started = _call_started(calls, ids[case.name], case.call, issued[case.name])
            in_call[case.name] = (
                started is not None and (killed_at - started).total_seconds() < LATENCY_S
            )
        stack.start("agent")

        ends: dict[str, dict[str, Any]] = {}

        async def all_settled() -> bool:
            for case in CASES:
                s = await _server(http, admin, ids[case.name])
                if s.get("OS-EXT-STS:task_state"):
                    return False
                ends[case.name] = s
            return True

        await _until(all_settled, slow + 60, "every server settled after the restart")
        settled_s = time.monotonic() - killed
        domains = await _domains(agent_target)
        snapshots = {}
        for name in ("image_snapshot", "image_backup"):
            image_id = answers[name]["image_id"]
            r = await http.get(f"{images}/{image_id}", headers=_h(admin))
            snapshots[name] = (
                r.json()["status"] if r.status_code == 200 else f"HTTP {r.status_code}"
            )

    rows = []
    for i, case in enumerate(CASES):
        sid = ids[case.name]
        end = ends[case.name]
        host = end.get("OS-EXT-SRV-ATTR:host") or ""
        seen = (str(end["status"]), domains.get((host, sid), "-"))
        # Domains of the server on any host but its own: only a resize's source keeps one,
        # shut off, while the server waits in VERIFY_RESIZE (a revert starts it again).
        copies = {h: p for (h, iid), p in domains.items() if iid == sid and h != host}
        kept = {_host(i): "SHUTDOWN"} if seen[0] == "VERIFY_RESIZE" else {}
        row: dict[str, Any] = {
            "case": case.name,
            "task_state": case.task_state,
            "at_kill": seen_before_kill[case.name],
            "call_in_progress_at_kill": case.call if in_call[case.name] else None,
            "end": f"{seen[0]} ({seen[1]})",
            "nova": case.nova,
            "expected": f"{case.expected[0]} ({case.expected[1]})",
            "other_domains": copies,
            "pass": seen == case.expected and copies == kept,
        }
        if case.name in snapshots:
            row["image"] = snapshots[case.name]
            row["pass"] = row["pass"] and snapshots[case.name] == "active"
        rows.append(row)
    checks = {
        "overcommitted_hosts": int(db_scalar(stack.db_url, invariants.OVERCOMMITTED_HOSTS_SQL)),
        "usage_mismatches": int(db_scalar(stack.db_url, invariants.USAGE_MISMATCH_SQL)),
        "orphaned_allocations": int(db_scalar(stack.db_url, invariants.ORPHANED_ALLOCATIONS_SQL)),
    }
    figures = {
        "latency_s": LATENCY_S,
        "ack_wait_s": ACK_WAIT_S,
        "hosts": HOSTS,
        "settled_after_kill_s": round(settled_s, 1),
        "states": rows,
        **checks,
    }
    chaos_report.add("R2", figures)
    assert all(r["at_kill"] == r["task_state"] for r in rows), figures
    assert all(r["call_in_progress_at_kill"] for r in rows), figures
    assert all(r["pass"] for r in rows), figures
    assert all(v == 0 for v in checks.values()), figures
