"""`python -m bench` (what `make bench` runs).

  python -m bench                         all three, at the sizes the targets name
  python -m bench --quick                 smaller sizes, for a first look
  python -m bench boot-storm -n 1000 --hosts 1000 -c 32
  python -m bench boot-storm --cloud NAME [--clouds-yaml FILE]   any OpenStack cloud
  python -m bench boot-storm -n 400 --hosts 40 -c 32 --trace FILE   spans to FILE
  python -m bench boot-storm -n 400 --hosts 40 --ports   each server on a tenant network
  python -m bench trace FILE [--server ID]   the slowest (or that) boot's spans as a tree
  python -m bench scheduler --hosts 1000 10000 --replicas 1 2
  python -m bench sweep
  python -m bench memory --hosts 1000 --rounds 1000 2000 4000

Results go to bench/results/<time>/: results.json, report.txt and PNG charts.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.bootstorm import CLIENT_MODELS, ClientModel, storm_against
from bench.client import resolve_cloud
from bench.stats import nats_message_count, postgres_cpu_s, read_process, statement_count

RESULTS = Path(__file__).resolve().parent / "results"


def _loom_boot_storm(
    servers: int,
    hosts: int,
    concurrency: int,
    out: Path,
    *,
    sim_memory_mb: int | None = None,
    client_model: ClientModel = "wait",
    settings: dict[str, str] | None = None,
    conductors: int = 1,
    ports: bool = False,
) -> dict[str, Any]:
    from bench.launch import launch_loom, prepare_network, prepare_tenant

    with launch_loom(
        hosts, sim_memory_mb=sim_memory_mb, settings=settings, conductors=conductors
    ) as loom:
        flavor_name, image = asyncio.run(prepare_tenant(loom))
        network_id = asyncio.run(prepare_network(loom, servers)) if ports else ""
        endpoint = resolve_cloud("loom", loom.clouds_yaml)
        pids = loom.pids()
        time.sleep(1.0)  # let start-up writes settle before the baseline

        def counters() -> tuple[int, int, float, dict[str, float]]:
            cpu = {
                name: (r.cpu_s if (r := read_process(name, pid)) else 0.0)
                for name, pid in pids.items()
            }
            return (
                statement_count(loom.stats_dir),
                nats_message_count(loom.nats.monitor_port),
                postgres_cpu_s(),
                cpu,
            )

        # Background work (heartbeats, refreshes) while idle, to report net figures too.
        idle0 = counters()
        time.sleep(2.0)
        idle1 = counters()
        idle_stmt_rate = (idle1[0] - idle0[0]) / 2.0

        at_boots_done: list[tuple[int, int, float, dict[str, float]]] = []

        before = counters()
        client_cpu0 = time.process_time()
        result = storm_against(
            endpoint,
            flavor_name=flavor_name,
            image=image,
            servers=servers,
            concurrency=concurrency,
            client_model=client_model,
            network_id=network_id,
            on_boots_done=lambda: at_boots_done.append(counters()),
        )
        client_cpu_s = time.process_time() - client_cpu0
        time.sleep(1.0)  # the stats files are written twice a second
        after = counters()
        summary = result.summary()
        n = max(summary["active"], 1)
        boot_and_delete_s = result.delete_finished - result.boot_started
        loom_cpu = sum(after[3].values()) - sum(before[3].values())
        pg_cpu = after[2] - before[2]
        readings = {name: read_process(name, pid) for name, pid in pids.items()}
        summary.update(
            {
                "hosts": hosts,
                "sql_statements_per_boot": (after[0] - before[0]) / n,
                "sql_statements_per_boot_net_of_idle": (
                    after[0] - before[0] - idle_stmt_rate * (time.time() - result.boot_started)
                )
                / n,
                "nats_messages_per_boot": (after[1] - before[1]) / n,
                "cpu_ms_per_boot": (loom_cpu + pg_cpu) * 1000 / n,
                "cpu_ms_per_boot_loom_only": loom_cpu * 1000 / n,
                # The load generator (this process: clients and poller) shares the cores.
                "client_cpu_ms_per_boot": client_cpu_s * 1000 / n,
                "cpu_s_by_process": {
                    k: round(after[3][k] - before[3].get(k, 0.0), 3) for k in after[3]
                }
                | {"postgres": round(pg_cpu, 3)},
                "peak_rss_mib": {
                    k: round(r.peak_rss_mib, 1) for k, r in readings.items() if r is not None
                },
                "fleet_peak_rss_mib": agent.peak_rss_mib
                if (agent := readings.get("agent")) is not None
                else float("nan"),
                "boot_phase": _phase_costs(before, at_boots_done[0], n) if at_boots_done else {},
                "boot_and_delete_wall_s": boot_and_delete_s,
                "settings": settings or {},
                "conductors": conductors,
                "ports_per_server": 1 if ports else 0,
                "note": "boot and delete counters together; per boot = per boot+delete cycle",
            }
        )
        summary["fleet_rss_kib_per_host"] = summary["fleet_peak_rss_mib"] * 1024 / hosts
        report.boot_storm_chart(
            out / f"boot-storm-n{servers}-h{hosts}.png",
            result.records,
            f"Loom boot storm: N={servers}, H={hosts}, C={concurrency}",
        )
        return dict(summary)


def _settings(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set wants SECTION.KEY=VALUE, not {pair!r}")
        out[key] = value
    return out


def _phase_costs(
    start: tuple[int, int, float, dict[str, float]],
    end: tuple[int, int, float, dict[str, float]],
    n: int,
) -> dict[str, Any]:
    """Per-boot costs of the boot phase alone (from the first POST to the last ACTIVE).
    The stats files are written twice a second, so statements here are approximate."""
    by_process = {k: end[3][k] - start[3].get(k, 0.0) for k in end[3]}
    by_process["postgres"] = end[2] - start[2]
    return {
        "sql_statements_per_boot": (end[0] - start[0]) / n,
        "nats_messages_per_boot": (end[1] - start[1]) / n,
        "cpu_ms_per_boot": sum(by_process.values()) * 1000 / n,
        "cpu_ms_per_boot_by_process": {k: round(v * 1000 / n, 2) for k, v in by_process.items()},
    }


def _cloud_boot_storm(
    cloud: str,
    clouds_yaml: Path | None,
    servers: int,
    concurrency: int,
    flavor: str,
    image: str,
    out: Path,
    client_model: ClientModel = "wait",
) -> dict[str, Any]:
    result = storm_against(
        resolve_cloud(cloud, clouds_yaml),
        flavor_name=flavor,
        image=image,
        servers=servers,
        concurrency=concurrency,
        client_model=client_model,
    )
    report.boot_storm_chart(
        out / f"boot-storm-{cloud}.png", result.records, f"{cloud}: N={servers}, C={concurrency}"
    )
    return {"cloud": cloud, **result.summary()}


BOOT_COLUMNS = [
    "servers",
    "hosts",
    "concurrency",
    "client_model",
    "active",
    "error",
    "boots_per_s",
    "deletes_per_s",
    "post_ms_p50",
    "post_ms_p99",
    "tta_ms_p50",
    "tta_ms_p99",
    "sql_statements_per_boot",
    "nats_messages_per_boot",
    "cpu_ms_per_boot",
    "fleet_peak_rss_mib",
]
# Decisions per scheduler call: single calls, and batches of the size the scheduling worker
# sends under load.
SCHED_BATCHES = [1, 8]
SCHED_COLUMNS = [
    "hosts",
    "replicas",
    "batch",
    "decisions",
    "placed",
    "decisions_per_s",
    "latency_ms_p50",
    "latency_ms_p99",
    "overcommitted_hosts",
    "usage_mismatches",
    "scheduler_peak_rss_mib",
    "scheduler_cpu_ms_per_decision",
    "postgres_cpu_ms_per_decision",
    "client_cpu_ms_per_decision",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    sub = p.add_subparsers(dest="what")
    bs = sub.add_parser("boot-storm")
    bs.add_argument("-n", "--servers", type=int, default=1000)
    bs.add_argument("--hosts", type=int, default=1000)
    bs.add_argument("-c", "--concurrency", type=int, default=32)
    bs.add_argument("--cloud", help="a clouds.yaml entry: measure that cloud instead of Loom")
    bs.add_argument("--clouds-yaml", type=Path)
    bs.add_argument("--flavor", default="m1.tiny")
    bs.add_argument("--image", default="", help="image id (with --cloud)")
    bs.add_argument(
        "--client-model",
        choices=CLIENT_MODELS,
        default="wait",
        help="wait: each client waits for its server before the next (default); "
        "fire: clients POST without waiting",
    )
    bs.add_argument("--conductors", type=int, default=1, help="conductor processes")
    bs.add_argument(
        "--ports",
        action="store_true",
        help="each server on a port of one tenant network (simulated hosts: no data plane)",
    )
    bs.add_argument(
        "--trace",
        type=Path,
        metavar="FILE",
        help="every service records spans to FILE (JSON lines); the slowest boot's tree is "
        "printed and saved as slowest-boot-trace.txt",
    )
    bs.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a Loom setting for every service, e.g. conductor.scheduling_lanes=2",
    )
    sc = sub.add_parser("scheduler")
    sc.add_argument("--hosts", type=int, nargs="+", default=[1000, 10000])
    sc.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    sc.add_argument("--decisions", type=int, default=5000)
    sc.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=SCHED_BATCHES,
        help="decisions per call: 1 is SelectDestinations, more is SelectDestinationsBatch",
    )
    sub.add_parser("sweep")
    tr = sub.add_parser("trace", help="one boot's spans as a tree, from a span file")
    tr.add_argument("file", type=Path, help="spans, JSON lines (tracing.exporter file:FILE)")
    tr.add_argument("--server", help="this server's boot (default: the slowest boot)")
    mem_p = sub.add_parser("memory", help="RSS after deletes, over rounds of growing N")
    mem_p.add_argument("--hosts", type=int, default=1000)
    mem_p.add_argument("--rounds", type=int, nargs="+", default=[1000, 2000, 4000])
    args = p.parse_args(argv)
    if args.what == "trace":
        from bench.trace import read_spans, render

        if not args.file.is_file():
            raise SystemExit(f"no span file {args.file}")
        print(render(read_spans(args.file), args.server))
        return 0

    out = RESULTS / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": report.machine(), "started": str(datetime.now(UTC))}
    text: list[str] = []
    what = args.what or "all"

    if what in ("all", "boot-storm"):
        if what == "boot-storm" and args.cloud:
            rows = [
                _cloud_boot_storm(
                    args.cloud,
                    args.clouds_yaml,
                    args.servers,
                    args.concurrency,
                    args.flavor,
                    args.image,
                    out,
                    args.client_model,
                )
            ]
        elif what == "boot-storm":
            settings = _settings(args.set)
            if args.trace is not None:
                args.trace.unlink(missing_ok=True)  # this run's spans only
                settings["tracing.exporter"] = f"file:{args.trace.resolve()}"
            rows = [
                _loom_boot_storm(
                    args.servers,
                    args.hosts,
                    args.concurrency,
                    out,
                    client_model=args.client_model,
                    settings=settings,
                    conductors=args.conductors,
                    ports=args.ports,
                )
            ]
            if args.trace is not None:
                from bench.trace import read_spans, render

                tree = render(read_spans(args.trace))
                (out / "slowest-boot-trace.txt").write_text(tree + "\n")
                print(tree)
        else:
            n, h = (200, 100) if args.quick else (1000, 1000)
            rows = [_loom_boot_storm(n, h, 32, out)]
        results["boot_storm"] = rows
        text += ["Boot storm", report.table(rows, BOOT_COLUMNS), ""]

    if what in ("all", "scheduler"):
        hosts = args.hosts if what == "scheduler" else ([1000] if args.quick else [1000, 10000])
        replicas = args.replicas if what == "scheduler" else [1, 2]
        decisions = args.decisions if what == "scheduler" else (1000 if args.quick else 5000)
        batches = args.batch if what == "scheduler" else SCHED_BATCHES
        rows = [run_sched(h, r, decisions, b) for h in hosts for r in replicas for b in batches]
        results["scheduler"] = rows
        text += ["Scheduler select-and-claim", report.table(rows, SCHED_COLUMNS), ""]

    if what in ("all", "memory"):
        from bench.memory import memory_rows, run_memory_bench

        if what == "memory":
            mem_hosts, mem_rounds = args.hosts, args.rounds
        else:
            mem_hosts, mem_rounds = (100, [200, 400]) if args.quick else (1000, [1000, 2000, 4000])
        memory = run_memory_bench(mem_hosts, mem_rounds)
        results["memory"] = memory
        rows = memory_rows(memory)
        text += [
            f"RSS (MiB) after each round's deletes, H={mem_hosts}",
            report.table(rows, list(rows[0].keys())),
            "",
        ]

    if what in ("all", "sweep"):
        host_sizes = [10, 100] if args.quick else [10, 100, 1000]
        server_counts = [100, 500] if args.quick else [100, 1000, 5000]
        rows = []
        for h in host_sizes:
            for n in server_counts:
                # Few hosts must still hold N servers: give them more memory.
                mem = max(131072, n * 512 * 2 // h) if h * 256 < n else None
                rows.append(_loom_boot_storm(n, h, 32, out, sim_memory_mb=mem))
        results["sweep"] = rows
        report.sweep_chart(out / "sweep.png", rows)
        text += ["Scaling sweep", report.table(rows, BOOT_COLUMNS), ""]

    report.write_json(out / "results.json", results)
    (out / "report.txt").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    print(f"results in {out}")
    return 0


def run_sched(hosts: int, replicas: int, decisions: int, batch: int = 1) -> dict[str, Any]:
    from bench.scheduler_bench import run_scheduler_bench

    return run_scheduler_bench(hosts, replicas, decisions, batch=batch)


if __name__ == "__main__":
    raise SystemExit(main())
