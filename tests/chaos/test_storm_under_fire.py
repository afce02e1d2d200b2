"""R1: a boot storm under fire. Many clients boot servers onto simulated hosts sized for
about 80% fill, through two gateways, two conductors and two schedulers on a PostgreSQL of
the test's own and a three-node NATS cluster. During the storm, each of these fails once:
an agent process (SIGKILL, then started again), a scheduler, a conductor, the NATS node
leading the command stream, PostgreSQL (stopped as a crash, then started again), and
another agent is cut off from NATS for a while (iptables: its packets dropped both ways,
its connections left open, as behind a broken link).

Pass: no host over-committed, usage equal to allocations, no allocation, domain or outbox
row left without its server, no server lost or doubled, at least 99% of the accepted
boots ACTIVE and every other one in ERROR with a fault."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from loom.compute.v1 import compute_pb2, compute_pb2_grpc
from sqlalchemy.exc import OperationalError

from bench.client import CloudEndpoint, resolve_cloud
from controlplane.db import migrate
from controlplane.runtime import bus
from controlplane.runtime.natsserver import NatsCluster, free_port
from tests.chaos.conftest import FULL, Report, scale
from tests.chaos.support import Layout, headers, lift_quotas, public_image, stream_leader
from tests.e2e.support import db_scalar, wait_for_hosts
from tests.support import invariants
from tests.support.partition import Partition
from tests.support.private_postgres import PrivatePostgres
from tests.support.stack import Stack, StackError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(scale(900, 3600))]

AGENTS = scale(2, 5)
HOSTS_PER_AGENT = scale(2, 10)
HOSTS = AGENTS * HOSTS_PER_AGENT
# Flavor "1" (512 MiB) fits this many times on a host (memory is the limit: ratio 1.0, no
# reserve); BOOTS fill 80% of the fleet.
SLOTS_PER_HOST = scale(10, 50)
BOOTS = HOSTS * SLOTS_PER_HOST * 4 // 5
CLIENTS = scale(8, 200)
DOWN_S = scale(3, 10)
PARTITION_S = scale(8, 30)
# A create refused for the moment (503, connection refused, cut off) is sent again, under a
# new name, until this long after the boot's first attempt.
RETRY_FOR_S = 180.0
SETTLE_S = scale(300, 900)
# How long a killed service is started again, as a supervisor would, while it exits at start.
RESTART_FOR_S = 120.0
# How often the servers are listed to see which boots have settled.
WATCH_S = 2.0 if FULL else 0.5
FLAVOR_MB = 512


@dataclass
class Boots:
    """What the clients asked for and were told, and what the watcher saw of it."""

    accepted: dict[str, str] = field(default_factory=dict)  # name -> server id
    accepted_at: dict[str, float] = field(default_factory=dict)  # server id -> t
    settled_at: dict[str, float] = field(default_factory=dict)  # server id -> t first seen
    answers: Counter[str] = field(default_factory=Counter)
    resent: int = 0
    given_up: list[str] = field(default_factory=list)
    waited_out: int = 0
    settled: dict[str, asyncio.Event] = field(default_factory=dict)  # id -> ACTIVE or ERROR
    settled_count: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def settled_event(self, server_id: str) -> asyncio.Event:
        return self.settled.setdefault(server_id, asyncio.Event())


@dataclass
class Fault:
    """One failure: injected once `at` of the boots have settled, undone `lasts_s` later."""

    name: str
    at: float
    lasts_s: float
    inject: Callable[[], Awaitable[None]]
    undo: Callable[[], Awaitable[None]]
    injected_after_s: float | None = None
    undone_after_s: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class NoListing(Exception):
    """Neither gateway listed the servers (each refused, cut off or answered 503)."""


class Clients:
    """The storm's clients: each create goes to one gateway in turn; one that gets no
    answer it can trust (503, refused, cut off) is sent again under a new name, so a
    server it may have made still shows (made without a 202), never doubles a name."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        ports: list[int],
        cloud: CloudEndpoint,
        admin: CloudEndpoint,
        image: str,
    ) -> None:
        self._http = http
        path = httpx.URL(cloud.compute_url).path
        self._bases = [f"http://127.0.0.1:{p}{path}" for p in ports]
        self._headers = headers(cloud)
        self._admin_headers = headers(admin)
        self._image = image
        self._turn = 0

    async def boot(self, boots: Boots, index: int) -> None:
        first = time.monotonic()
        attempt = 0
        while True:
            name = f"r1-{index:05d}-{attempt}"
            base = self._bases[self._turn % len(self._bases)]
            self._turn += 1
            body = {
                "server": {
                    "name": name,
                    "imageRef": self._image,
                    "flavorRef": "1",
                    "networks": "none",
                }
            }
            wait = 1.0
            try:
                r = await self._http.post(f"{base}/servers", json=body, headers=self._headers)
            except httpx.ConnectError:
                boots.answers["refused"] += 1
                wait = 0.2
            except httpx.TransportError:
                boots.answers["cut off"] += 1
            else:
                boots.answers[str(r.status_code)] += 1
                if r.status_code == 202:
                    server_id = str(r.json()["server"]["id"])
                    boots.accepted[name] = server_id
                    boots.accepted_at[server_id] = time.monotonic()
                    try:
                        # As a client that waits for its server before its next one.
                        await asyncio.wait_for(boots.settled_event(server_id).wait(), SETTLE_S)
                    except TimeoutError:
                        boots.waited_out += 1
                    return
                if r.status_code != 503 and r.status_code < 500:
                    boots.given_up.append(f"{name}: {r.status_code} {r.text[:200]}")
                    return
                with contextlib.suppress(ValueError):
                    wait = float(r.headers.get("retry-after", "1"))
            if time.monotonic() - first > RETRY_FOR_S:
                boots.given_up.append(f"{name}: no answer for {RETRY_FOR_S} s")
                return
            attempt += 1
            boots.resent += 1
            await asyncio.sleep(wait)

    async def servers(self) -> list[dict[str, Any]]:
        """Every server of every project (paged, as the admin sees them, hosts included),
        from whichever gateway answers."""
        for base in self._bases:
            found: list[dict[str, Any]] = []
            marker = ""
            try:
                while True:
                    params: dict[str, Any] = {"limit": 1000, "all_tenants": 1}
                    if marker:
                        params["marker"] = marker
                    r = await self._http.get(
                        f"{base}/servers/detail", params=params, headers=self._admin_headers
                    )
                    if r.status_code != 200:
                        break
                    page = list(r.json()["servers"])
                    found += page
                    if len(page) < 1000:
                        return found
                    marker = str(page[-1]["id"])
            except httpx.TransportError:
                continue
        raise NoListing("no gateway listed the servers")


async def _storm(clients: Clients, boots: Boots, faults: list[Fault]) -> None:
    """BOOTS boots from CLIENTS clients, each waiting for its server (ACTIVE or ERROR)
    before its next, while the faults come and go: each injected once `at` of the boots
    have settled. Returns once every boot has settled (or waited SETTLE_S) and every fault
    is undone."""
    todo: asyncio.Queue[int] = asyncio.Queue()
    for i in range(BOOTS):
        todo.put_nowait(i)
    sent = asyncio.Event()
    progress = asyncio.Condition()  # notified after each look at the servers

    async def client() -> None:
        while not todo.empty():
            await clients.boot(boots, todo.get_nowait())

    async def watch() -> None:
        while not (sent.is_set() and all(e.is_set() for e in boots.settled.values())):
            with contextlib.suppress(NoListing):
                for s in await clients.servers():
                    if s["status"] in ("ACTIVE", "ERROR"):
                        event = boots.settled_event(str(s["id"]))
                        if not event.is_set():
                            event.set()
                            boots.settled_count += 1
                            boots.settled_at[str(s["id"])] = time.monotonic()
            async with progress:
                progress.notify_all()
            await asyncio.sleep(WATCH_S)

    async def fire(fault: Fault) -> None:
        async with progress:
            await progress.wait_for(
                lambda: boots.settled_count >= fault.at * BOOTS or sent.is_set()
            )
        fault.injected_after_s = round(time.monotonic() - boots.started_at, 1)
        await fault.inject()
        await asyncio.sleep(fault.lasts_s)
        await fault.undo()
        fault.undone_after_s = round(time.monotonic() - boots.started_at, 1)

    async def send_all() -> None:
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        sent.set()

    watching = asyncio.create_task(watch())
    try:
        await asyncio.gather(send_all(), *(fire(f) for f in faults))
    finally:
        sent.set()
        for event in boots.settled.values():
            event.set()
        await watching


async def _settle(clients: Clients, within: float) -> tuple[list[dict[str, Any]], float]:
    """Polls until no server of the storm is still building; returns them and how long. A
    listing refused meanwhile (503 while PostgreSQL, restarted by the last fault, finishes
    its recovery) is asked again."""
    began = time.monotonic()
    while True:
        try:
            listed = await clients.servers()
        except NoListing:
            if time.monotonic() - began > within:
                raise
            await asyncio.sleep(1)
            continue
        servers = [s for s in listed if str(s["name"]).startswith("r1-")]
        if all(s["status"] in ("ACTIVE", "ERROR") for s in servers):
            return servers, time.monotonic() - began
        if time.monotonic() - began > within:
            return servers, time.monotonic() - began
        await asyncio.sleep(2)


async def _domains(agent_ports: list[int], hosts: dict[int, list[str]]) -> list[tuple[str, str]]:
    """(host, instance id) of every domain the hosts hold."""
    found: list[tuple[str, str]] = []
    for agent, port in enumerate(agent_ports):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = compute_pb2_grpc.ComputeServiceStub(channel)
            for host in hosts[agent]:
                resp = await stub.ListHostInstances(
                    compute_pb2.ListHostInstancesRequest(host=host), timeout=30
                )
                found += [(host, inst.instance_id) for inst in resp.instances]
    return found


async def _wait_outbox_empty(url: str, within: float) -> int:
    """The outbox rows left once Loom is idle (0), waiting up to `within` for them to go,
    and for PostgreSQL to accept connections again after the last fault."""
    deadline = time.monotonic() + within
    while True:
        try:
            rows = int(db_scalar(url, invariants.OUTBOX_ROWS_SQL))
        except OperationalError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)
            continue
        if rows == 0 or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(1)


async def test_r1_a_boot_storm_survives_every_component_failing_once_and_loses_nothing(
    private_pg: PrivatePostgres, nats_cluster: NatsCluster, tmp_path: Path, chaos_report: Report
) -> None:
    url = private_pg.create_database("loom_r1")
    migrate.upgrade(url)
    stack = Stack(db_url=url, nats_url=nats_cluster.url, data_dir=tmp_path / "loom")
    layout = Layout.of(stack)
    stack.extra_env.update(
        layout.shared_env()
        | {
            "LOOM_SCHEDULER__RAM_ALLOCATION_RATIO": "1.0",
            "LOOM_AGENT__RESERVED_HOST_MEMORY_MB": "0",
            "LOOM_AGENT__SIM_MEMORY_MB": str(SLOTS_PER_HOST * FLAVOR_MB),
        }
    )
    partition = Partition(f"loom-r1-{tmp_path.name}")
    agent_ports = [free_port() for _ in range(AGENTS)]
    hosts = {a: [f"r1a{a}-{i:04d}" for i in range(HOSTS_PER_AGENT)] for a in range(AGENTS)}
    partitioned = AGENTS - 1  # agent 0 is the one killed

    def start_agent(a: int) -> None:
        stack.start(
            f"agent#{a}",
            "--simulate",
            str(HOSTS_PER_AGENT),
            "--host-prefix",
            f"r1a{a}",
            env={"LOOM_AGENT__LISTEN": f"127.0.0.1:{agent_ports[a]}"},
            preexec=partition.enter if a == partitioned else None,
        )

    def start_all() -> None:
        layout.start_control_plane()
        for a in range(AGENTS):
            start_agent(a)
        layout.start_gateways()

    figures: dict[str, Any] = {
        "hosts": HOSTS,
        "agents": AGENTS,
        "slots_per_host": SLOTS_PER_HOST,
        "boots": BOOTS,
        "clients": CLIENTS,
        "down_s": DOWN_S,
        "partition_s": PARTITION_S,
    }
    try:
        await asyncio.to_thread(start_all)
        await wait_for_hosts(stack, HOSTS)
        clouds = stack.data_dir / "clouds.yaml"
        member = resolve_cloud("loom", clouds)
        admin = resolve_cloud("loom-admin", clouds)
        nats_ports = [node.port for node in nats_cluster.nodes]
        victim: dict[str, int] = {}

        async def kill(name: str) -> None:
            stack.kill(name)

        restarts: Counter[str] = Counter()

        async def restart(name: str) -> None:
            # As a supervisor restarts a service: again after a second while it exits at
            # start (a service started while PostgreSQL is down, when faults overlap).
            deadline = time.monotonic() + RESTART_FOR_S
            while True:
                restarts[name] += 1
                try:
                    await asyncio.to_thread(stack.start, name)
                    return
                except StackError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(1)

        async def kill_nats_leader() -> None:
            victim["node"] = await stream_leader(nats_cluster, bus.COMPUTE_STREAM)
            nats_cluster.nodes[victim["node"]].kill()

        async def restart_nats() -> None:
            await asyncio.to_thread(nats_cluster.restart, victim["node"])
            await asyncio.to_thread(nats_cluster.wait_healthy, 60.0)

        async def cut() -> None:
            process = stack.services[f"agent#{partitioned}"].process
            assert process is not None
            faults_by_name["agent partitioned from NATS"].detail["connections_cut"] = partition.cut(
                process.pid, nats_ports
            )

        async def heal() -> None:
            partition.heal()

        async def stop_pg() -> None:
            await asyncio.to_thread(private_pg.stop, "immediate")

        async def start_pg() -> None:
            await asyncio.to_thread(private_pg.start)

        faults = [
            Fault(
                "agent killed", 0.10, DOWN_S, lambda: kill("agent#0"), lambda: restart("agent#0")
            ),
            Fault("agent partitioned from NATS", 0.20, PARTITION_S, cut, heal),
            Fault(
                "scheduler killed",
                0.30,
                DOWN_S,
                lambda: kill("scheduler#0"),
                lambda: restart("scheduler#0"),
            ),
            Fault(
                "conductor killed",
                0.45,
                DOWN_S,
                lambda: kill("conductor#0"),
                lambda: restart("conductor#0"),
            ),
            Fault("NATS stream leader killed", 0.60, DOWN_S, kill_nats_leader, restart_nats),
            Fault("PostgreSQL crashed and restarted", 0.75, DOWN_S, stop_pg, start_pg),
        ]
        faults_by_name = {f.name: f for f in faults}

        limits = httpx.Limits(max_connections=CLIENTS + 8, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            image = await public_image(http, stack, admin, "r1")
            await lift_quotas(http, admin, member.project_id)
            clients = Clients(http, layout.gateway_ports, member, admin, image)
            boots = Boots()
            await _storm(clients, boots, faults)
            storm_s = time.monotonic() - boots.started_at
            servers, settle_s = await _settle(clients, SETTLE_S)

        outbox_rows = await _wait_outbox_empty(url, 60)
        domains = await _domains(agent_ports, hosts)
    finally:
        await asyncio.to_thread(stack.stop_all)
        partition.remove()

    live = {str(s["id"]): s for s in servers}
    host_of = {sid: str(s.get("OS-EXT-SRV-ATTR:host") or "") for sid, s in live.items()}
    accepted = set(boots.accepted.values())
    status = Counter(str(s["status"]) for s in servers)
    by_name = Counter(str(s["name"]) for s in servers)
    domain_count = Counter(sid for _, sid in domains)
    took = sorted(
        boots.settled_at[sid] - t for sid, t in boots.accepted_at.items() if sid in boots.settled_at
    )
    figures.update(
        {
            "boot_s_median": round(statistics.median(took), 1) if took else None,
            "boot_s_p99": round(took[int(0.99 * (len(took) - 1))], 1) if took else None,
            "boot_s_max": round(took[-1], 1) if took else None,
            "boots_over_10_s": sum(1 for t in took if t > 10),
            # Where the slow boots were built: the agent that held each one's host.
            "boots_over_10_s_by_agent": dict(
                sorted(
                    Counter(
                        host_of.get(sid, "?").split("-")[0]
                        for sid, t in boots.accepted_at.items()
                        if boots.settled_at.get(sid, t) - t > 10
                    ).items()
                )
            ),
            "storm_s": round(storm_s, 1),
            "boots_per_s": round(len(accepted) / storm_s, 1),
            "settled_s_after_storm": round(settle_s, 1),
            "answers": dict(sorted(boots.answers.items())),
            "accepted": len(accepted),
            "resent": boots.resent,
            "clients_waited_out": boots.waited_out,
            # Starts a killed service took (more than 1: it exited at start and was
            # started again, as a supervisor would).
            "service_starts": dict(sorted(restarts.items())),
            "given_up": boots.given_up[:10],
            "servers": len(servers),
            "made_without_202": len(set(live) - accepted),
            "status": dict(sorted(status.items())),
            "active_of_accepted": sum(
                1 for sid in accepted if live.get(sid, {}).get("status") == "ACTIVE"
            ),
            "lost": sorted(sid for sid in accepted if sid not in live)[:10],
            "unsettled": sum(1 for s in servers if s["status"] not in ("ACTIVE", "ERROR")),
            "error_without_fault": sum(
                1 for s in servers if s["status"] == "ERROR" and not s.get("fault")
            ),
            "duplicated_names": sum(n - 1 for n in by_name.values() if n > 1),
            "duplicated_instances_sql": int(db_scalar(url, invariants.DUPLICATED_INSTANCES_SQL)),
            "overcommitted_hosts": int(db_scalar(url, invariants.OVERCOMMITTED_HOSTS_SQL)),
            "usage_mismatches": int(db_scalar(url, invariants.USAGE_MISMATCH_SQL)),
            "orphaned_allocations": int(db_scalar(url, invariants.ORPHANED_ALLOCATIONS_SQL)),
            "outbox_rows": outbox_rows,
            # A domain whose server is gone, or lives on another host.
            "orphaned_domains": sum(
                1 for host, sid in domains if sid not in live or host_of[sid] != host
            ),
            "active_without_domain": sum(
                1
                for sid, s in live.items()
                if s["status"] == "ACTIVE" and (host_of[sid], sid) not in set(domains)
            ),
            "doubled_domains": sum(1 for n in domain_count.values() if n > 1),
            "faults": [
                {
                    "fault": f.name,
                    "at_settled": f.at,
                    "injected_after_s": f.injected_after_s,
                    "undone_after_s": f.undone_after_s,
                    **f.detail,
                }
                for f in faults
            ],
        }
    )
    chaos_report.add("R1", figures)
    print(json.dumps(figures, indent=1, sort_keys=True))
    assert all(f.injected_after_s is not None for f in faults), figures
    assert faults_by_name["agent partitioned from NATS"].detail["connections_cut"] > 0, figures
    assert boots.given_up == [], figures
    assert figures["lost"] == [], figures
    assert figures["unsettled"] == 0, figures
    assert figures["error_without_fault"] == 0, figures
    assert figures["duplicated_names"] == 0, figures
    assert figures["duplicated_instances_sql"] == 0, figures
    assert figures["overcommitted_hosts"] == 0, figures
    assert figures["usage_mismatches"] == 0, figures
    assert figures["orphaned_allocations"] == 0, figures
    assert figures["outbox_rows"] == 0, figures
    assert figures["orphaned_domains"] == 0, figures
    assert figures["active_without_domain"] == 0, figures
    assert figures["doubled_domains"] == 0, figures
    assert figures["active_of_accepted"] >= 0.99 * figures["accepted"], figures
