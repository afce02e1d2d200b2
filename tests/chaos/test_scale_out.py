"""R6: scale-out. Two gateways, two conductors and two schedulers on one PostgreSQL and a
three-node NATS cluster (Loom's streams kept in three copies). During a boot storm one
replica of each kind is killed with SIGKILL, then started again: a gateway, a conductor, a
scheduler, and the NATS node leading the command stream.

Pass, for every kill: no accepted boot lost, none doubled, no host over-committed, every
accepted boot ACTIVE. Figures: the boots the kill stalled and the longest stall (seconds
with boots waiting and none completing)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from bench.client import CloudEndpoint, resolve_cloud
from controlplane.db import migrate
from controlplane.runtime import bus
from controlplane.runtime.natsserver import NatsCluster
from tests.chaos.conftest import Report, scale
from tests.chaos.support import Layout, headers, lift_quotas, public_image, stream_leader
from tests.e2e.support import (
    OVERCOMMITTED_HOSTS_SQL,
    USAGE_MISMATCH_SQL,
    db_scalar,
    wait_for_hosts,
)
from tests.support.private_postgres import PrivatePostgres
from tests.support.stack import Stack

# Seven services, an agent, three nats-servers and PostgreSQL share two cores here.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(scale(900, 3600))]

HOSTS = scale(3, 12)
BOOTS_PER_KILL = scale(16, 200)
CONCURRENCY = scale(4, 16)
# How long the killed replica stays dead before it is started again.
DOWN_S = scale(3, 10)
# A boot slower than this (from its 202 to ACTIVE) counts as stalled; a boot on these
# simulated hosts takes well under a second when nothing is killed.
STALLED_AFTER_S = 5.0
SETTLE_S = 180.0
KILLS = ("gateway", "conductor", "scheduler", "nats")


def _h(cloud: CloudEndpoint) -> dict[str, str]:
    return headers(cloud)


def _start_all(layout: Layout) -> None:
    layout.start_control_plane()
    layout.stack.start("agent", "--simulate", str(HOSTS), "--host-prefix", "scale")
    layout.start_gateways()


@dataclass
class Storm:
    """One boot storm: what each create got, and when each server first showed ACTIVE."""

    phase: str
    accepted: dict[str, tuple[str, float]] = field(default_factory=dict)  # name -> (id, t)
    answers: Counter[str] = field(default_factory=Counter)
    unanswered: list[str] = field(default_factory=list)
    refused_then_retried: int = 0
    active_at: dict[str, float] = field(default_factory=dict)  # id -> t
    started_at: float = field(default_factory=time.monotonic)
    killed_at: float = 0.0
    in_flight_at_kill: int = 0


class Gateways:
    """The two gateways as a load balancer sees them: a create goes to one, and to the other
    when the first refuses the connection (a request that never arrived is safe to send
    again; one cut off mid-way is not, and is left unanswered)."""

    def __init__(self, http: httpx.AsyncClient, ports: list[int], cloud: CloudEndpoint) -> None:
        self._http = http
        path = urlsplit(cloud.compute_url).path
        self._bases = [f"http://127.0.0.1:{p}{path}" for p in ports]
        self._headers = _h(cloud)
        self._turn = 0

    async def create(self, storm: Storm, name: str, image: str) -> None:
        body = {"server": {"name": name, "imageRef": image, "flavorRef": "1", "networks": "none"}}
        first = self._turn
        self._turn += 1
        deadline = time.monotonic() + 30
        attempt = 0
        while True:
            base = self._bases[(first + attempt) % len(self._bases)]
            try:
                r = await self._http.post(f"{base}/servers", json=body, headers=self._headers)
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    storm.unanswered.append(name)
                    return
                storm.refused_then_retried += 1
                attempt += 1
                await asyncio.sleep(0.05 if attempt % len(self._bases) else 0.5)
                continue
            except httpx.TransportError:
                storm.unanswered.append(name)
                return
            storm.answers[str(r.status_code)] += 1
            if r.status_code == 202:
                storm.accepted[name] = (str(r.json()["server"]["id"]), time.monotonic())
            return

    async def servers(self) -> list[dict[str, Any]]:
        """Every server of the project, from whichever gateway answers."""
        for base in self._bases:
            try:
                r = await self._http.get(
                    f"{base}/servers/detail", params={"limit": 1000}, headers=self._headers
                )
            except httpx.TransportError:
                continue
            if r.status_code == 200:
                return list(r.json()["servers"])
        return []


async def _run_storm(
    gateways: Gateways,
    storm: Storm,
    image: str,
    kill: Callable[[], Awaitable[None]],
    restart: Callable[[], Awaitable[None]],
) -> None:
    """Creates BOOTS_PER_KILL servers; once a third are accepted, kills the replica, and
    starts it again DOWN_S later. Returns when every create has its answer and the replica
    is back."""
    names = [f"r6-{storm.phase}-{i:04d}" for i in range(BOOTS_PER_KILL)]
    todo: asyncio.Queue[str] = asyncio.Queue()
    for name in names:
        todo.put_nowait(name)
    third_accepted = asyncio.Event()

    async def worker() -> None:
        while not todo.empty():
            await gateways.create(storm, todo.get_nowait(), image)
            if len(storm.accepted) >= BOOTS_PER_KILL // 3:
                third_accepted.set()

    async def killer() -> None:
        await third_accepted.wait()
        storm.in_flight_at_kill = sum(
            1 for sid, _ in storm.accepted.values() if sid not in storm.active_at
        )
        storm.killed_at = time.monotonic()
        await kill()
        await asyncio.sleep(DOWN_S)
        await restart()

    async def watcher(done: asyncio.Event) -> None:
        while not done.is_set():
            now = time.monotonic()
            for s in await gateways.servers():
                if s["status"] == "ACTIVE" and s["id"] not in storm.active_at:
                    storm.active_at[s["id"]] = now
            if sent.is_set() and all(sid in storm.active_at for sid, _ in storm.accepted.values()):
                all_active.set()
            await asyncio.sleep(0.25)

    done, sent, all_active = asyncio.Event(), asyncio.Event(), asyncio.Event()
    watching = asyncio.create_task(watcher(done))
    try:
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)), killer())
        third_accepted.set()
        sent.set()
        # Until every accepted boot is ACTIVE (or the settle time is up).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_active.wait(), SETTLE_S)
    finally:
        done.set()
        await watching


def _stall_figures(storm: Storm) -> dict[str, Any]:
    """Boots slower than STALLED_AFTER_S, and the longest time after the kill during which
    accepted boots waited and none completed."""
    durations = {
        sid: storm.active_at[sid] - t
        for sid, t in storm.accepted.values()
        if sid in storm.active_at
    }
    accepted_at = sorted(t for _, t in storm.accepted.values())
    completions = sorted(t for t in storm.active_at.values() if t >= storm.killed_at)
    longest = 0.0
    previous = storm.killed_at
    for t in completions:
        # Only a gap during which some boot was waiting counts as a stall.
        if any(a <= previous for a in accepted_at):
            longest = max(longest, t - previous)
        previous = t
    return {
        "boots_stalled": sum(1 for d in durations.values() if d > STALLED_AFTER_S),
        "longest_stall_s": round(longest, 1),
        "slowest_boot_s": round(max(durations.values(), default=0.0), 1),
        "median_boot_s": round(statistics.median(durations.values()), 2) if durations else None,
    }


async def test_r6_two_of_each_service_on_a_nats_cluster_lose_nothing_when_one_of_anything_dies(
    private_pg: PrivatePostgres, nats_cluster: NatsCluster, tmp_path: Path, chaos_report: Report
) -> None:
    url = private_pg.create_database("loom_scale_out")
    migrate.upgrade(url)
    stack = Stack(db_url=url, nats_url=nats_cluster.url, data_dir=tmp_path / "loom")
    layout = Layout.of(stack)
    stack.extra_env.update(layout.shared_env())
    try:
        await asyncio.to_thread(_start_all, layout)
        await wait_for_hosts(stack, HOSTS)
        clouds = stack.data_dir / "clouds.yaml"
        member = resolve_cloud("loom", clouds)
        admin = resolve_cloud("loom-admin", clouds)
        figures: dict[str, Any] = {
            "hosts": HOSTS,
            "boots_per_kill": BOOTS_PER_KILL,
            "concurrency": CONCURRENCY,
            "down_s": DOWN_S,
            "stalled_after_s": STALLED_AFTER_S,
        }
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            image = await public_image(http, stack, admin, "r6")
            await lift_quotas(http, admin, member.project_id)
            gateways = Gateways(http, layout.gateway_ports, member)

            for kind in KILLS:
                storm = Storm(kind)
                victim: dict[str, int] = {}

                async def kill(kind: str = kind, victim: dict[str, int] = victim) -> None:
                    if kind == "nats":
                        victim["node"] = await stream_leader(nats_cluster, bus.COMPUTE_STREAM)
                        nats_cluster.nodes[victim["node"]].kill()
                    else:
                        stack.kill(f"{kind}#0")

                async def restart(kind: str = kind, victim: dict[str, int] = victim) -> None:
                    if kind == "nats":
                        await asyncio.to_thread(nats_cluster.restart, victim["node"])
                        await asyncio.to_thread(nats_cluster.wait_healthy, 60.0)
                    else:
                        await asyncio.to_thread(stack.start, f"{kind}#0")

                await _run_storm(gateways, storm, image, kill, restart)
                storm_s = time.monotonic() - storm.started_at

                servers = await gateways.servers()
                ours = [s for s in servers if str(s["name"]).startswith(f"r6-{kind}-")]
                by_name = Counter(str(s["name"]) for s in ours)
                status_of = {s["id"]: s["status"] for s in ours}
                accepted_ids = {sid for sid, _ in storm.accepted.values()}
                figures[kind] = {
                    "accepted": len(storm.accepted),
                    "storm_s": round(storm_s, 1),
                    "answers": dict(sorted(storm.answers.items())),
                    "unanswered": len(storm.unanswered),
                    "refused_then_sent_to_the_other_gateway": storm.refused_then_retried,
                    "in_flight_at_kill": storm.in_flight_at_kill,
                    "killed_after_s": round(storm.killed_at - storm.started_at, 1)
                    if storm.killed_at
                    else None,
                    **_stall_figures(storm),
                    "active": sum(1 for sid in accepted_ids if status_of.get(sid) == "ACTIVE"),
                    "lost": sum(1 for sid in accepted_ids if status_of.get(sid) != "ACTIVE"),
                    "duplicated": sum(n - 1 for n in by_name.values() if n > 1),
                    # Servers made by a create whose answer never came (or was not 202).
                    "made_without_202": len(ours) - len(accepted_ids & set(status_of)),
                    "not_active_at_all": sorted(
                        Counter(s["status"] for s in ours if s["status"] != "ACTIVE").items()
                    ),
                    "overcommitted_hosts": db_scalar(url, OVERCOMMITTED_HOSTS_SQL),
                    "usage_mismatches": db_scalar(url, USAGE_MISMATCH_SQL),
                }
    finally:
        await asyncio.to_thread(stack.stop_all)
    chaos_report.add("R6", figures)
    for kind in KILLS:
        got = figures[kind]
        assert got["accepted"] > 0, figures
        assert got["killed_after_s"] is not None, figures
        assert got["lost"] == 0, figures
        assert got["duplicated"] == 0, figures
        assert got["overcommitted_hosts"] == 0, figures
        assert got["usage_mismatches"] == 0, figures
        assert got["active"] == got["accepted"], figures
        assert got["not_active_at_all"] == [], figures
