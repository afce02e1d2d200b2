"""Quotas: configured defaults, per-project overrides, usage counted from live servers."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from loom.catalog.v1 import quotas_pb2

from controlplane.conductor.servers import create as create_module
from tests.conductor.conftest import Harness
from tests.conductor.factories import PROJECT, add, make_instance, make_keypair
from tests.conductor.test_create import create_request


async def test_limits_default_to_the_configuration_and_usage_counts_live_servers(
    pg: Harness,
) -> None:
    await add(
        pg.sessions,
        make_instance(vcpus=2, memory_mb=1024),
        make_instance(),
        make_instance(deleted=True, vm_state="deleted"),
        make_keypair(),
    )
    resp = await pg.quotas.GetQuotas(
        quotas_pb2.GetQuotasRequest(project_id=PROJECT, user_id="user-a")
    )
    assert resp.limits.instances == 10
    assert resp.limits.cores == 20
    assert (resp.usage.instances, resp.usage.cores, resp.usage.ram) == (2, 3, 1536)
    assert resp.usage.key_pairs == 1


async def test_updated_limits_override_the_defaults_for_that_project_only(pg: Harness) -> None:
    resp = await pg.quotas.UpdateQuotas(
        quotas_pb2.UpdateQuotasRequest(project_id=PROJECT, limits={"instances": 3, "cores": -1})
    )
    assert (resp.limits.instances, resp.limits.cores, resp.limits.ram) == (3, -1, 51200)
    other = await pg.quotas.GetQuotas(quotas_pb2.GetQuotasRequest(project_id="p2"))
    assert other.limits.instances == 10
    again = await pg.quotas.UpdateQuotas(
        quotas_pb2.UpdateQuotasRequest(project_id=PROJECT, limits={"instances": 4})
    )
    assert (again.limits.instances, again.limits.cores) == (4, -1)


@pytest.mark.parametrize("limits", [{"bogus": 1}, {"instances": -2}])
async def test_unknown_keys_and_limits_below_minus_one_are_refused(
    pg: Harness, limits: dict[str, int]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await pg.quotas.UpdateQuotas(
            quotas_pb2.UpdateQuotasRequest(project_id=PROJECT, limits=limits)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = await pg.quotas.GetQuotas(quotas_pb2.GetQuotasRequest(project_id=PROJECT))
    assert after.limits.instances == 10


async def test_default_quotas_are_nova_defaults(pg: Harness) -> None:
    resp = await pg.quotas.GetDefaultQuotas(quotas_pb2.GetDefaultQuotasRequest())
    assert (resp.limits.instances, resp.limits.ram, resp.limits.metadata_items) == (10, 51200, 128)


async def _concurrent_creates(pg: Harness, prefix: str, n: int) -> list[grpc.StatusCode]:
    """n creates of one server each, all at once; each one's status code."""

    async def create(i: int) -> grpc.StatusCode:
        try:
            await pg.servers.CreateServers(create_request(request_id=f"{prefix}-{i}"))
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    return list(await asyncio.gather(*(create(i) for i in range(n))))


async def test_concurrent_creates_never_take_a_project_past_its_instance_quota(
    pg: Harness,
) -> None:
    await pg.quotas.UpdateQuotas(
        quotas_pb2.UpdateQuotasRequest(project_id=PROJECT, limits={"instances": 3})
    )

    codes = await _concurrent_creates(pg, "req-storm", 24)
    assert codes.count(grpc.StatusCode.OK) == 3, codes
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    usage = await pg.quotas.GetQuotas(quotas_pb2.GetQuotasRequest(project_id=PROJECT))
    assert usage.usage.instances == 3


async def test_a_limit_set_after_unlimited_creates_holds_under_concurrent_creates(
    pg: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creates in a project with no limit run without the project's lock; creates that
    still believe the project unlimited must find the new limit and take turns. (The
    conductor's memory of limited projects is held stale, so that every create of the
    storm takes that path rather than only the first few.)"""
    monkeypatch.setattr(create_module, "_remember_limited", lambda project_id, limited: None)
    create_module._LIMITED.discard(PROJECT)
    await pg.quotas.UpdateQuotas(
        quotas_pb2.UpdateQuotasRequest(
            project_id=PROJECT, limits={"instances": -1, "cores": -1, "ram": -1}
        )
    )
    await pg.servers.CreateServers(create_request(request_id="req-unlimited"))
    await pg.quotas.UpdateQuotas(
        quotas_pb2.UpdateQuotasRequest(project_id=PROJECT, limits={"instances": 4})
    )

    codes = await _concurrent_creates(pg, "req-limited", 64)
    assert codes.count(grpc.StatusCode.OK) == 3, codes
    usage = await pg.quotas.GetQuotas(quotas_pb2.GetQuotasRequest(project_id=PROJECT))
    assert usage.usage.instances == 4


async def test_creates_in_a_project_without_limits_all_succeed_side_by_side(
    pg: Harness,
) -> None:
    await pg.quotas.UpdateQuotas(
        quotas_pb2.UpdateQuotasRequest(
            project_id=PROJECT, limits={"instances": -1, "cores": -1, "ram": -1}
        )
    )
    results = await asyncio.gather(
        *(pg.servers.CreateServers(create_request(request_id=f"req-free-{i}")) for i in range(16))
    )
    assert all(len(r.servers) == 1 for r in results)
    usage = await pg.quotas.GetQuotas(quotas_pb2.GetQuotasRequest(project_id=PROJECT))
    assert usage.usage.instances == 16
