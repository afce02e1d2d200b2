"""Memory after deletes: does any process keep what N servers left behind?

One Loom (the boot storm's processes), rounds of boot-N-then-delete-all with growing N.
After a warm-up round and after each round, once every server is gone and the services
have had a moment to settle, the resident set (RSS) of each process is read. A process
that keeps per-server state after the servers are deleted grows from round to round in
proportion to the servers it has seen; one that does not stays flat. The report gives
each process's RSS after every round and its growth per thousand servers booted and
deleted between the first and the last measured round.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.bootstorm import ClientModel, StormResult, storm_against
from bench.client import resolve_cloud
from bench.stats import read_process

SETTLE_S = 3.0


def run_memory_bench(
    hosts: int,
    rounds: list[int],
    *,
    concurrency: int = 32,
    warmup: int = 200,
    client_model: ClientModel = "wait",
) -> dict[str, Any]:
    from bench.launch import launch_loom, prepare_tenant

    with launch_loom(hosts) as loom:
        flavor_name, image = asyncio.run(prepare_tenant(loom))
        endpoint = resolve_cloud("loom", loom.clouds_yaml)
        pids = loom.pids()

        def rss() -> dict[str, float]:
            out: dict[str, float] = {}
            for name, pid in pids.items():
                reading = read_process(name, pid)
                if reading is not None:
                    out[name] = round(reading.rss_mib, 1)
            return out

        def one_round(servers: int) -> StormResult:
            return storm_against(
                endpoint,
                flavor_name=flavor_name,
                image=image,
                servers=servers,
                concurrency=concurrency,
                client_model=client_model,
                progress=False,
            )

        steps: list[dict[str, Any]] = []
        plan = [("warm-up", warmup), *((f"round {i + 1}", n) for i, n in enumerate(rounds))]
        for label, servers in plan:
            result = one_round(servers)
            time.sleep(SETTLE_S)
            steps.append(
                {
                    "step": label,
                    "servers": servers,
                    "active": sum(1 for r in result.records if r.status == "ACTIVE"),
                    "deleted": sum(1 for r in result.records if r.gone_at),
                    "rss_mib": rss(),
                }
            )

    measured = steps[1:]
    first, last = measured[0], measured[-1]
    between = sum(s["servers"] for s in measured[1:])  # servers seen after the first reading
    growth = {
        name: round((last["rss_mib"][name] - first["rss_mib"][name]) * 1000 / between, 2)
        if between
        else 0.0
        for name in last["rss_mib"]
        if name in first["rss_mib"]
    }
    return {
        "hosts": hosts,
        "concurrency": concurrency,
        "client_model": client_model,
        "steps": steps,
        "rss_growth_mib_per_1000_servers": growth,
        "servers_between_first_and_last_reading": between,
    }


def memory_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per step: RSS of each process after that step's deletes."""
    rows = []
    for step in result["steps"]:
        rows.append({"step": step["step"], "servers": step["servers"], **step["rss_mib"]})
    rows.append(
        {
            "step": "growth MiB / 1000 servers",
            "servers": result["servers_between_first_and_last_reading"],
            **result["rss_growth_mib_per_1000_servers"],
        }
    )
    return rows
