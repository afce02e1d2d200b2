"""SchedulerService over real gRPC: every RPC, its answers and its errors."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from loom.common.v1 import common_pb2
from loom.scheduler.v1 import scheduler_pb2 as pb
from loom.scheduler.v1 import scheduler_pb2_grpc

from controlplane.config import SchedulerConfig
from controlplane.db.engine import make_engine
from controlplane.runtime.grpcserver import Registration, start_grpc_server
from controlplane.scheduler.hostcache import HostCache
from controlplane.scheduler.pipeline import build_pipeline
from controlplane.scheduler.placement import PlacementService
from controlplane.scheduler.service import SERVICE_NAME
from controlplane.scheduler.servicer import SchedulerServicer
from controlplane.scheduler.store import ProviderStore
from tests.scheduler.dbcheck import assert_consistent


@dataclass
class Env:
    stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub
    placement: PlacementService

    async def add_host(self, name: str, memory_mb: int = 4096, *, up: bool = True) -> pb.Host:
        resp: pb.ReportInventoryResponse = await self.stub.ReportInventory(
            pb.ReportInventoryRequest(
                host=name,
                vcpu=pb.ResourceUsage(total=8, allocation_ratio=1.0),
                memory_mb=pb.ResourceUsage(total=memory_mb, allocation_ratio=1.0),
                disk_gb=pb.ResourceUsage(total=100),
                compute_endpoint=f"{name}:7000",
                hypervisor_type="test",
            )
        )
        if up:
            self.placement.cache.record_heartbeat(name)
        return resp.host


@pytest.fixture
async def env(pg_url: str) -> AsyncIterator[Env]:
    engine = make_engine(pg_url)
    cfg = SchedulerConfig(num_alternates=1)
    store = ProviderStore(engine)
    placement = PlacementService(store, HostCache(store), build_pipeline(cfg), cfg)
    server = await start_grpc_server(
        "127.0.0.1:0",
        [
            Registration(
                SchedulerServicer(placement, cfg),
                scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server,
                SERVICE_NAME,
            )
        ],
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield Env(scheduler_pb2_grpc.SchedulerServiceStub(channel), placement)  # type: ignore[arg-type]
    finally:
        await channel.close()
        await server.stop(0)
        await engine.dispose()


def res(vcpus: int = 1, memory_mb: int = 512, disk_gb: int = 1) -> common_pb2.Resources:
    return common_pb2.Resources(vcpus=vcpus, memory_mb=memory_mb, disk_gb=disk_gb)


async def test_report_inventory_creates_a_host_with_the_default_ratio_for_zero(env: Env) -> None:
    host = await env.add_host("h1")
    assert host.name == "h1"
    assert host.vcpu.allocation_ratio == 1.0
    assert host.disk_gb.allocation_ratio == SchedulerConfig().disk_allocation_ratio
    assert host.memory_mb.free == 4096
    assert host.availability_zone == "nova"
    assert host.compute_endpoint == "h1:7000"


async def test_select_destinations_claims_one_host_and_returns_unclaimed_alternates(
    env: Env,
) -> None:
    for name, mem in (("a", 1024), ("b", 8192), ("c", 4096)):
        await env.add_host(name, mem)
    resp = await env.stub.SelectDestinations(
        pb.SelectDestinationsRequest(consumer_id="vm-1", resources=res(), num_alternates=2)
    )
    assert resp.WhichOneof("outcome") == "placement"
    assert (resp.placement.selected.host, resp.placement.selected.claimed) == ("b", True)
    assert resp.placement.selected.compute_endpoint == "b:7000"
    assert [(d.host, d.claimed) for d in resp.placement.alternates] == [
        ("c", False),
        ("a", False),
    ]
    allocs = await env.stub.GetAllocations(pb.GetAllocationsRequest(consumer_id="vm-1"))
    assert [(a.host, a.resources.memory_mb) for a in allocs.allocations] == [("b", 512)]


async def test_select_destinations_explains_no_valid_host_per_filter(env: Env) -> None:
    await env.add_host("down-host", up=False)
    await env.add_host("small", memory_mb=256)
    resp = await env.stub.SelectDestinations(
        pb.SelectDestinationsRequest(consumer_id="vm-1", resources=res())
    )
    assert resp.WhichOneof("outcome") == "no_valid_host"
    nvh = resp.no_valid_host
    assert nvh.hosts_considered == 2
    removed = {r.filter: (r.hosts_removed, dict(r.reasons)) for r in nvh.rejections}
    assert removed["enabled_and_up"] == (1, {"host down": 1})
    assert removed["capacity"] == (1, {"insufficient MEMORY_MB": 1})
    assert "enabled_and_up removed 1" in nvh.message


async def test_a_batch_answers_each_request_in_order_and_one_bad_request_spoils_nothing(
    env: Env,
) -> None:
    await env.add_host("h1", memory_mb=2048)
    await env.add_host("h2", memory_mb=1024)
    requests = [
        pb.SelectDestinationsRequest(consumer_id="vm-1", resources=res(memory_mb=1024)),
        pb.SelectDestinationsRequest(consumer_id="", resources=res()),
        pb.SelectDestinationsRequest(consumer_id="vm-2", resources=res(memory_mb=1024)),
        pb.SelectDestinationsRequest(consumer_id="vm-3", resources=res(memory_mb=1024)),
        pb.SelectDestinationsRequest(consumer_id="vm-4", resources=res(memory_mb=1024)),
        # A retry of vm-1 in the same batch gets vm-1's claim, not a second one.
        pb.SelectDestinationsRequest(consumer_id="vm-1", resources=res(memory_mb=1024)),
    ]
    resp = await env.stub.SelectDestinationsBatch(
        pb.SelectDestinationsBatchRequest(requests=requests)
    )
    assert len(resp.results) == len(requests)
    kinds = [r.WhichOneof("result") for r in resp.results]
    assert kinds == ["response", "invalid_argument", "response", "response", "response", "response"]
    assert "consumer_id" in resp.results[1].invalid_argument
    outcomes = [r.response.WhichOneof("outcome") for r in resp.results if r.HasField("response")]
    # 4,096 MiB in all: three of the four consumers fit, the fourth is told why not.
    assert sorted(outcomes) == ["no_valid_host"] + ["placement"] * 4
    placed = {
        requests[i].consumer_id: r.response.placement.selected.host
        for i, r in enumerate(resp.results)
        if r.HasField("response") and r.response.WhichOneof("outcome") == "placement"
    }
    assert len(placed) == 3
    assert resp.results[5].response.placement.selected.host == placed["vm-1"]
    for consumer, host in placed.items():
        allocs = await env.stub.GetAllocations(pb.GetAllocationsRequest(consumer_id=consumer))
        assert [a.host for a in allocs.allocations] == [host]
    usage = await assert_consistent(env.placement.store.engine)
    assert sum(u.allocation_count for u in usage.values()) == 3


async def test_a_batch_of_more_than_a_thousand_requests_is_an_invalid_argument(env: Env) -> None:
    requests = [
        pb.SelectDestinationsRequest(consumer_id=f"vm-{i}", resources=res()) for i in range(1001)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.stub.SelectDestinationsBatch(pb.SelectDestinationsBatchRequest(requests=requests))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1000" in (err.value.details() or "")
    empty = await env.stub.SelectDestinationsBatch(pb.SelectDestinationsBatchRequest())
    assert list(empty.results) == []


async def test_claim_and_release_over_grpc_are_idempotent_and_exactly_once(env: Env) -> None:
    await env.add_host("h")
    claim = pb.ClaimResourcesRequest(consumer_id="vm-1", host="h", resources=res())
    assert (await env.stub.ClaimResources(claim)).claimed
    assert (await env.stub.ClaimResources(claim)).claimed
    release = pb.ReleaseResourcesRequest(consumer_id="vm-1")
    assert (await env.stub.ReleaseResources(release)).released
    assert not (await env.stub.ReleaseResources(release)).released
    usage = await assert_consistent(env.placement.store.engine)
    assert usage["h"].used == (0, 0, 0)


async def test_a_claim_on_a_full_host_says_why(env: Env) -> None:
    await env.add_host("h", memory_mb=512)
    await env.stub.ClaimResources(
        pb.ClaimResourcesRequest(consumer_id="vm-1", host="h", resources=res())
    )
    resp = await env.stub.ClaimResources(
        pb.ClaimResourcesRequest(consumer_id="vm-2", host="h", resources=res())
    )
    assert not resp.claimed
    assert resp.reason == "insufficient resources on the host"


async def test_hosts_can_be_listed_fetched_disabled_and_moved_between_zones(env: Env) -> None:
    await env.add_host("alpha")
    await env.add_host("beta")
    disabled = await env.stub.SetHostEnabled(
        pb.SetHostEnabledRequest(host="alpha", enabled=False, reason="maintenance")
    )
    assert not disabled.host.enabled
    assert disabled.host.disabled_reason == "maintenance"
    moved = await env.stub.SetHostAvailabilityZone(
        pb.SetHostAvailabilityZoneRequest(host="beta", availability_zone="east")
    )
    assert moved.host.availability_zone == "east"

    listed = await env.stub.ListHosts(pb.ListHostsRequest())
    assert [(h.name, h.up) for h in listed.hosts] == [("alpha", True), ("beta", True)]
    east = await env.stub.ListHosts(pb.ListHostsRequest(availability_zone="east"))
    assert [h.name for h in east.hosts] == ["beta"]
    named = await env.stub.ListHosts(pb.ListHostsRequest(name_contains="lph"))
    assert [h.name for h in named.hosts] == ["alpha"]

    zones = await env.stub.ListAvailabilityZones(pb.ListAvailabilityZonesRequest())
    assert [(z.name, z.available, list(z.hosts)) for z in zones.zones] == [
        ("east", True, ["beta"]),
        ("nova", False, ["alpha"]),
    ]
    back = await env.stub.SetHostAvailabilityZone(
        pb.SetHostAvailabilityZoneRequest(host="beta", availability_zone="")
    )
    assert back.host.availability_zone == "nova"
    got = await env.stub.GetHost(pb.GetHostRequest(name="beta"))
    assert got.host.name == "beta"
    assert got.host.hypervisor_type == "test"


async def test_a_host_forced_down_is_down_and_gets_no_placement_until_it_is_lifted(
    env: Env,
) -> None:
    await env.add_host("alpha")
    down = await env.stub.SetHostForcedDown(
        pb.SetHostForcedDownRequest(request_id="f1", host="alpha", forced_down=True)
    )
    assert (down.host.forced_down, down.host.up) == (True, False)
    refused = await env.stub.SelectDestinations(
        pb.SelectDestinationsRequest(
            consumer_id="c-1", resources=common_pb2.Resources(vcpus=1, memory_mb=64)
        )
    )
    assert refused.WhichOneof("outcome") == "no_valid_host"
    assert "host forced down: 1" in refused.no_valid_host.message

    up = await env.stub.SetHostForcedDown(
        pb.SetHostForcedDownRequest(request_id="f2", host="alpha", forced_down=False)
    )
    assert (up.host.forced_down, up.host.up) == (False, True)
    placed = await env.stub.SelectDestinations(
        pb.SelectDestinationsRequest(
            consumer_id="c-1", resources=common_pb2.Resources(vcpus=1, memory_mb=64)
        )
    )
    assert placed.placement.selected.host == "alpha"
    assert placed.placement.selected.availability_zone == "nova"


@pytest.mark.parametrize(
    ("call", "request_"),
    [
        ("GetHost", pb.GetHostRequest(name="ghost")),
        ("SetHostEnabled", pb.SetHostEnabledRequest(host="ghost", enabled=False)),
        ("SetHostAvailabilityZone", pb.SetHostAvailabilityZoneRequest(host="ghost")),
        ("SetHostForcedDown", pb.SetHostForcedDownRequest(host="ghost", forced_down=True)),
    ],
    ids=[
        "getting an unknown host is not found",
        "disabling an unknown host is not found",
        "zoning an unknown host is not found",
        "forcing down an unknown host is not found",
    ],
)
async def test_unknown_hosts_are_not_found(env: Env, call: str, request_: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(env.stub, call)(request_)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ghost" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("call", "request_", "message"),
    [
        ("SelectDestinations", pb.SelectDestinationsRequest(resources=res()), "consumer_id"),
        (
            "SelectDestinations",
            pb.SelectDestinationsRequest(consumer_id="c", resources=res(vcpus=-1)),
            "negative amount for VCPU",
        ),
        (
            "SelectDestinations",
            pb.SelectDestinationsRequest(consumer_id="c", num_alternates=-1),
            "num_alternates",
        ),
        ("ClaimResources", pb.ClaimResourcesRequest(consumer_id="c"), "host is required"),
        ("ReleaseResources", pb.ReleaseResourcesRequest(), "consumer_id is required"),
        ("ReportInventory", pb.ReportInventoryRequest(host="a.b"), "not a valid host name"),
        (
            "ReportInventory",
            pb.ReportInventoryRequest(host="h", vcpu=pb.ResourceUsage(total=-1)),
            "VCPU: total and reserved must not be negative",
        ),
        ("GetAllocations", pb.GetAllocationsRequest(), "consumer_id is required"),
    ],
    ids=[
        "a selection without a consumer is invalid",
        "negative resources are invalid",
        "a negative number of alternates is invalid",
        "a claim without a host is invalid",
        "a release without a consumer is invalid",
        "a host name that would break NATS subjects is invalid",
        "a negative inventory is invalid",
        "allocations without a consumer are invalid",
    ],
)
async def test_bad_input_is_an_invalid_argument_naming_the_field(
    env: Env, call: str, request_: object, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(env.stub, call)(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")


async def test_an_inventory_below_usage_is_a_failed_precondition(env: Env) -> None:
    await env.add_host("h", memory_mb=4096)
    await env.stub.ClaimResources(
        pb.ClaimResourcesRequest(consumer_id="vm", host="h", resources=res(memory_mb=3000))
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.add_host("h", memory_mb=1024)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_the_decisions_of_one_batch_spread_over_hosts_as_the_weighers_say(
    env: Env,
) -> None:
    # Equal hosts and the free-RAM weigher: each claim makes its host the least free, so
    # eight decisions in one call land two on each of four hosts, as eight calls in a row do.
    for name in ("h1", "h2", "h3", "h4"):
        await env.add_host(name, memory_mb=4096)
    requests = [
        pb.SelectDestinationsRequest(consumer_id=f"vm-{i}", resources=res(memory_mb=512))
        for i in range(8)
    ]
    resp = await env.stub.SelectDestinationsBatch(
        pb.SelectDestinationsBatchRequest(requests=requests)
    )
    hosts = [r.response.placement.selected.host for r in resp.results]
    assert sorted(Counter(hosts).values()) == [2, 2, 2, 2], hosts
    await assert_consistent(env.placement.store.engine)
