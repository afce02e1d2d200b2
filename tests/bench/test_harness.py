"""The benchmark harness itself, on a small real Loom (PostgreSQL, NATS, test:/// hosts)."""

from __future__ import annotations

import asyncio

import pytest

from bench.bootstorm import CLIENT_MODELS, ClientModel, storm_against
from bench.client import resolve_cloud
from bench.launch import launch_loom, prepare_tenant
from bench.memory import memory_rows, run_memory_bench
from bench.scheduler_bench import run_scheduler_bench


@pytest.mark.parametrize("model", CLIENT_MODELS)
def test_a_small_storm_boots_every_server_then_sees_every_one_deleted(model: ClientModel) -> None:
    with launch_loom(4) as loom:
        flavor_name, image = asyncio.run(prepare_tenant(loom))
        endpoint = resolve_cloud("loom", loom.clouds_yaml)

        result = storm_against(
            endpoint,
            flavor_name=flavor_name,
            image=image,
            servers=24,
            concurrency=4,
            client_model=model,
            progress=False,
        )
        assert all(r.post_end >= r.post_start > 0 for r in result.records)
        assert all(r.active_at >= r.post_end for r in result.records)
        assert all(r.gone_at >= r.delete_start > 0 for r in result.records)
        summary = result.summary()
    assert (summary["active"], summary["error"], summary["failed_requests"]) == (24, 0, 0)
    assert summary["client_model"] == model
    assert summary["deletes_per_s"] > 0
    assert isinstance(summary["polls"], int)
    assert summary["polls"] > 0


def test_the_memory_bench_reads_every_process_after_each_round() -> None:
    result = run_memory_bench(4, [16, 16], concurrency=4, warmup=8)
    assert [s["step"] for s in result["steps"]] == ["warm-up", "round 1", "round 2"]
    for step in result["steps"]:
        assert (step["active"], step["deleted"]) == (step["servers"], step["servers"])
        assert set(step["rss_mib"]) == {"gateway", "conductor", "scheduler", "agent", "nats-server"}
        assert all(v > 1 for v in step["rss_mib"].values())
    assert result["servers_between_first_and_last_reading"] == 16
    rows = memory_rows(result)
    assert rows[-1]["step"] == "growth MiB / 1000 servers"


def test_with_two_conductors_the_gateway_keeps_creating_servers_when_one_stops() -> None:
    with launch_loom(2, conductors=2) as loom:
        flavor_name, image = asyncio.run(prepare_tenant(loom))
        endpoint = resolve_cloud("loom", loom.clouds_yaml)
        assert {"conductor", "conductor#2"} <= set(loom.pids())

        def boot(n: int) -> dict[str, object]:
            return storm_against(
                endpoint,
                flavor_name=flavor_name,
                image=image,
                servers=n,
                concurrency=2,
                progress=False,
            ).summary()

        both = boot(8)
        assert (both["active"], both["failed_requests"]) == (8, 0)
        loom.stack.stop("conductor")
        one = boot(8)
        assert (one["active"], one["failed_requests"]) == (8, 0)


@pytest.mark.parametrize("batch", [1, 8])
def test_the_scheduler_bench_places_every_decision_and_finds_no_overcommit(batch: int) -> None:
    # Each host takes 383 servers of 512 MiB (128 GiB x 1.5 - 512 MiB reserved): two hosts
    # take 766 of 800, and the last 34 find no host.
    result = run_scheduler_bench(2, 1, 800, concurrency=4, batch=batch)
    assert result["batch"] == batch
    assert (result["placed"], result["no_valid_host"]) == (766, 34)
    assert result["allocations"] == 766
    assert (result["overcommitted_hosts"], result["usage_mismatches"]) == (0, 0)
    assert result["decisions_per_s"] > 0
