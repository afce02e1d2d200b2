"""What the conductor relies on from the scheduler, run against every scheduler its tests use.

The conductor's tests run against Loom's real scheduler; one of them plays a scheduler
older than SelectDestinationsBatch (the same servicer served without that method,
tests/support/scheduler.py). Each case here runs against both, through the conductor's own
SchedulerClient, so the stand-in can only differ where it is meant to: the batch RPC.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from loom.common.v1 import common_pb2
from loom.scheduler.v1 import scheduler_pb2 as pb

from controlplane.conductor.context import SchedulerClient
from controlplane.config import SchedulerConfig
from controlplane.runtime.grpcserver import insecure_or_secure_channel
from tests.support import polling
from tests.support.scheduler import SchedulerUnderTest, running_scheduler

SMALL = common_pb2.Resources(vcpus=1, memory_mb=512, disk_gb=1)
HUGE = common_pb2.Resources(vcpus=1, memory_mb=1 << 20, disk_gb=1)


@pytest.fixture(params=["real", "older"])
async def sched(request: pytest.FixtureRequest, pg_url: str) -> AsyncIterator[SchedulerUnderTest]:
    cfg = SchedulerConfig(num_alternates=2)
    async with running_scheduler(pg_url, cfg, older=request.param == "older") as s:
        yield s


@pytest.fixture
async def client(sched: SchedulerUnderTest) -> AsyncIterator[SchedulerClient]:
    channel = insecure_or_secure_channel(sched.target)
    try:
        yield SchedulerClient(channel)
    finally:
        await channel.close()


def select(
    consumer: str, resources: common_pb2.Resources = SMALL, **kw: object
) -> pb.SelectDestinationsRequest:
    return pb.SelectDestinationsRequest(
        request_id=f"select-{consumer}",
        consumer_id=consumer,
        project_id="p1",
        resources=resources,
        num_alternates=2,
        **kw,  # type: ignore[arg-type]
    )


async def usage(sched: SchedulerUnderTest, host: str) -> tuple[int, int]:
    """(memory used, allocations) on the host, as the scheduler's database has them."""
    state = await sched.host(host)
    assert state is not None
    return state.memory_mb.used, state.allocation_count


async def test_select_claims_the_host_with_most_free_memory_and_names_alternates(
    sched: SchedulerUnderTest, client: SchedulerClient
) -> None:
    await sched.add_host("small", memory_mb=4096)
    await sched.add_host("large", memory_mb=8192)
    await sched.add_host("medium", memory_mb=6144)
    resp = await client.select_destinations(select("vm-1"))
    assert resp.WhichOneof("outcome") == "placement"
    assert (resp.placement.selected.host, resp.placement.selected.claimed) == ("large", True)
    assert [(a.host, a.claimed) for a in resp.placement.alternates] == [
        ("medium", False),
        ("small", False),
    ]
    assert await sched.claims() == {"vm-1": "large"}
    assert await usage(sched, "large") == (512, 1)


async def test_selecting_again_for_a_placed_consumer_returns_its_host_and_claims_nothing_more(
    sched: SchedulerUnderTest, client: SchedulerClient
) -> None:
    await sched.add_host("a", memory_mb=4096)
    await sched.add_host("b", memory_mb=4096)
    first = await client.select_destinations(select("vm-1"))
    again = await client.select_destinations(select("vm-1"))
    assert again.placement.selected.host == first.placement.selected.host
    assert again.placement.selected.claimed
    assert await usage(sched, first.placement.selected.host) == (512, 1)


async def test_select_answers_no_valid_host_naming_the_filter_and_claims_nothing(
    sched: SchedulerUnderTest, client: SchedulerClient
) -> None:
    await sched.add_host("a", memory_mb=4096)
    resp = await client.select_destinations(select("vm-1", HUGE))
    assert resp.WhichOneof("outcome") == "no_valid_host"
    assert resp.no_valid_host.hosts_considered == 1
    removed = {r.filter: r.hosts_removed for r in resp.no_valid_host.rejections}
    assert removed["capacity"] == 1
    assert await sched.claims() == {}


async def test_select_leaves_out_ignored_disabled_and_other_zone_hosts(
    sched: SchedulerUnderTest, client: SchedulerClient
) -> None:
    await sched.add_host("ignored", memory_mb=16384)
    await sched.add_host("disabled", memory_mb=16384)
    await sched.add_host("elsewhere", memory_mb=16384, zone="az-2")
    await sched.add_host("chosen", memory_mb=4096, zone="az-1")
    await client.set_host_enabled("off-1", "disabled", False, "maintenance")
    resp = await client.select_destinations(
        select("vm-1", ignore_hosts=["ignored"], availability_zone="az-1")
    )
    assert resp.placement.selected.host == "chosen"
    assert list(resp.placement.alternates) == []


async def test_a_claim_on_a_named_host_fits_or_is_refused_with_a_reason(
    sched: SchedulerUnderTest, client: SchedulerClient
) -> None:
    await sched.add_host("a", memory_mb=1024)
    assert (await client.claim("c1", "vm-1", "p1", SMALL, "a")).claimed
    assert (await client.claim("c2", "vm-2", "p1", SMALL, "a")).claimed
    full = await client.claim("c3", "vm-3", "p1", SMALL, "a")
    assert not full.claimed
    assert full.reason
    assert await usage(sched, "a") == (1024, 2)


async def test_a_claim_on_a_disabled_host_is_refused(
    sched: SchedulerUnderTest, client: SchedulerClient
) -> None:
    await sched.add_host("a")
    await client.set_host_enabled("off-1", "a", False, "maintenance")
    refused = await client.claim("c1", "vm-1", "p1", SMALL, "a")
    assert not refused.claimed
    assert refused.reason
    assert await sched.claims() == {}


async def test_claiming_again_for_a_consumer_holds_on_its_host_and_refuses_another(
    sched: SchedulerUnderTest, client: SchedulerClient
) -> None:
    await sched.add_host("a")
    await sched.add_host("b")
    assert (await client.claim("c1", "vm-1", "p1", SMALL, "a")).claimed
    assert (await client.claim("c1", "vm-1", "p1", SMALL, "a")).claimed
    assert not (await client.claim("c2", "vm-1", "p1", SMALL, "b")).claimed
    assert await sched.claims() == {"vm-1": "a"}
    assert await usage(sched, "a") == (512, 1)


async def test_a_release_frees_the_claim_once_and_a_repeat_changes_nothing(
    sched: SchedulerUnderTest, client: SchedulerClient
) -> None:
    await sched.add_host("a")
    await client.claim("c1", "vm-1", "p1", SMALL, "a")
    assert not await client.release("r0", "vm-1", host="b")  # another host: kept
    assert await sched.claims() == {"vm-1": "a"}
    assert await client.release("r1", "vm-1", host="a")
    assert not await client.release("r1", "vm-1", host="a")
    assert not await client.release("r2", "vm-1")
    assert await sched.claims() == {}
    assert await usage(sched, "a") == (0, 0)
    assert sched.releases[("vm-1", "a")] == 1


async def test_hosts_are_listed_with_their_usage_zone_and_endpoint(
    sched: SchedulerUnderTest, client: SchedulerClient
) -> None:
    await sched.add_host("hv-1", memory_mb=4096, zone="az-1", compute_endpoint="127.0.0.1:7001")
    await sched.add_host("hv-2", memory_mb=4096)
    await client.claim("c1", "vm-1", "p1", SMALL, "hv-1")
    hosts = {h.name: h for h in await client.list_hosts()}
    assert set(hosts) == {"hv-1", "hv-2"}
    one = await client.get_host("hv-1")
    assert (one.memory_mb.total, one.memory_mb.used, one.allocation_count) == (4096, 512, 1)
    assert (one.availability_zone, one.compute_endpoint, one.up) == ("az-1", "127.0.0.1:7001", True)
    zones = {z.name: list(z.hosts) for z in await client.zones()}
    assert zones["az-1"] == ["hv-1"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.get_host("nowhere")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_batched_decisions_are_answered_in_order_or_unimplemented_by_an_older_scheduler(
    sched: SchedulerUnderTest, client: SchedulerClient
) -> None:
    await sched.add_host("a")
    batch = [select("vm-1"), select(""), select("vm-2", HUGE)]
    if sched.older:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.select_destinations_batch(batch)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert await sched.claims() == {}
        return
    results = await client.select_destinations_batch(batch)
    assert [r.WhichOneof("result") for r in results] == ["response", "invalid_argument", "response"]
    assert results[0].response.placement.selected.host == "a"
    assert results[2].response.WhichOneof("outcome") == "no_valid_host"
    assert await sched.claims() == {"vm-1": "a"}


async def test_a_stopped_scheduler_is_unavailable_and_serves_again_once_started(
    sched: SchedulerUnderTest, client: SchedulerClient
) -> None:
    await sched.add_host("a")
    await sched.stop()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.list_hosts()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    await sched.start()

    async def serving() -> list[str] | None:
        try:
            return [h.name for h in await client.list_hosts()]
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            return None  # the channel has not reconnected yet

    # The same channel reconnects, within gRPC's longest reconnect backoff.
    within = polling.GRPC_MAX_RECONNECT_BACKOFF_S + polling.SCHEDULER_CALL_DEADLINE_S
    assert await polling.eventually(serving, within, "the scheduler serving again") == ["a"]
