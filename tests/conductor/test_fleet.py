"""Services from heartbeats, their up/down state, and the operator's fleet views."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import fleet_pb2, servers_pb2
from nats.aio.client import Client as NATS

from controlplane.conductor.fleet import HeartbeatRecorder
from controlplane.db.engine import count_statements
from controlplane.runtime import bus
from tests.conductor.conftest import IMAGE_ID, Harness, eventually, harness
from tests.conductor.factories import add, make_instance, make_service


async def services(h: Harness, **kw: str) -> dict[tuple[str, str], fleet_pb2.Service]:
    resp = await h.fleet.ListServices(fleet_pb2.ListServicesRequest(**kw))
    return {(s.host, s.binary): s for s in resp.services}


async def test_heartbeats_on_nats_become_services_that_are_up(pg: Harness, nc: NATS) -> None:
    recorder = HeartbeatRecorder(pg.sessions, flush_interval=0.1, own_host="ctl-1")
    # A compute service is up when the scheduler (which hears the same beats) says so.
    await pg.scheduler.add_host("beat-1")
    stop = asyncio.Event()
    task = asyncio.create_task(recorder.run(nc, stop))
    try:

        async def both() -> dict[tuple[str, str], fleet_pb2.Service] | None:
            # Agents beat periodically; the first beats may precede the subscription.
            for host in ("beat-1", "beat-2"):
                beat = agent_bus_pb2.Heartbeat(host=host, compute_endpoint=f"{host}:1")
                await nc.publish(bus.heartbeat_subject(host), beat.SerializeToString())
            await nc.flush()
            found = await services(pg)
            return (
                found
                if ("beat-1", "loom-compute") in found and ("beat-2", "loom-compute") in found
                else None
            )

        found = await eventually(both)
        assert found is not None
        assert found[("beat-1", "loom-compute")].up
        assert found[("beat-1", "loom-compute")].enabled
        assert found[("ctl-1", "loom-conductor")].up
        assert found[("ctl-1", "loom-conductor")].zone == "internal"
    finally:
        stop.set()
        await asyncio.wait([task], timeout=5)


@pytest.mark.parametrize("database", ["pg_url", "sqlite_url"])
async def test_many_heartbeats_are_written_in_one_statement(
    request: pytest.FixtureRequest, database: str
) -> None:
    async with harness(request.getfixturevalue(database)) as h:
        recorder = HeartbeatRecorder(h.sessions, own_host="ctl-1")
        for i in range(10):
            await h.scheduler.add_host(f"h{i}")
        for i in range(50):
            recorder.record(agent_bus_pb2.Heartbeat(host=f"h{i % 10}"))
        counter = count_statements(h.engine)
        assert await recorder.flush() == 10
        assert counter.count == 1
        for i in range(10):
            recorder.record(agent_bus_pb2.Heartbeat(host=f"h{i}"))
        await recorder.flush()
        found = await services(h, binary="loom-compute")
        assert len(found) == 10
        assert all(s.up for s in found.values())


async def test_a_compute_service_is_up_exactly_when_the_scheduler_holds_its_host_up(
    pg: Harness,
) -> None:
    await pg.scheduler.add_host("stale", up=False)
    await pg.scheduler.add_host("fresh")
    await pg.scheduler.add_host("forced", forced_down=True)
    old = datetime.now(UTC) - timedelta(seconds=pg.conductor.cfg.conductor.service_down_time + 5)
    await add(
        pg.sessions,
        # The conductor's own rows say the opposite: they are not what decides.
        make_service("stale"),
        make_service("fresh", last_seen_up=old),
        make_service("forced"),
        make_service("unknown"),
    )
    found = await services(pg)
    assert not found[("stale", "loom-compute")].up
    assert found[("fresh", "loom-compute")].up
    assert not found[("forced", "loom-compute")].up
    assert found[("forced", "loom-compute")].forced_down
    assert not found[("unknown", "loom-compute")].up


async def test_a_conductor_service_whose_heartbeats_stopped_is_down(pg: Harness) -> None:
    old = datetime.now(UTC) - timedelta(seconds=pg.conductor.cfg.conductor.service_down_time + 5)
    await add(
        pg.sessions,
        make_service("ctl-old", binary="loom-conductor", last_seen_up=old),
        make_service("ctl-new", binary="loom-conductor"),
    )
    found = await services(pg)
    assert not found[("ctl-old", "loom-conductor")].up
    assert found[("ctl-new", "loom-conductor")].up


async def test_forcing_a_compute_service_down_forces_its_host_down_in_the_scheduler(
    pg: Harness,
) -> None:
    await pg.scheduler.add_host("host-1")
    svc = make_service("host-1")
    await add(pg.sessions, svc)
    resp = await pg.fleet.UpdateService(
        fleet_pb2.UpdateServiceRequest(id=str(svc.id), forced_down=True)
    )
    assert resp.service.forced_down
    assert not resp.service.up
    assert (await pg.scheduler.host("host-1")).forced_down  # type: ignore[union-attr]

    back = await pg.fleet.UpdateService(
        fleet_pb2.UpdateServiceRequest(id=str(svc.id), forced_down=False)
    )
    assert back.service.up
    assert not (await pg.scheduler.host("host-1")).forced_down  # type: ignore[union-attr]


async def test_disabling_a_compute_service_records_the_reason_and_disables_the_host(
    pg: Harness,
) -> None:
    await pg.scheduler.add_host("host-1")
    svc = make_service("host-1")
    await add(pg.sessions, svc)
    resp = await pg.fleet.UpdateService(
        fleet_pb2.UpdateServiceRequest(id=str(svc.id), enabled=False, disabled_reason="maintenance")
    )
    assert not resp.service.enabled
    assert resp.service.disabled_reason == "maintenance"
    disabled = await pg.scheduler.host("host-1")
    assert disabled is not None
    assert not disabled.enabled
    assert disabled.disabled_reason == "maintenance"
    stored = (await services(pg))[("host-1", "loom-compute")]
    assert stored.disabled_reason == "maintenance"
    assert not stored.enabled
    again = await pg.fleet.UpdateService(fleet_pb2.UpdateServiceRequest(id=svc.uuid, enabled=True))
    assert again.service.enabled
    assert again.service.disabled_reason == ""
    enabled = await pg.scheduler.host("host-1")
    assert enabled is not None
    assert enabled.enabled


async def test_a_service_with_servers_on_its_host_cannot_be_deleted(pg: Harness) -> None:
    busy, idle = make_service("busy"), make_service("idle")
    await add(pg.sessions, busy, idle, make_instance(host="busy"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await pg.fleet.DeleteService(fleet_pb2.DeleteServiceRequest(id=str(busy.id)))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await pg.fleet.DeleteService(fleet_pb2.DeleteServiceRequest(id=str(idle.id)))
    assert ("idle", "loom-compute") not in await services(pg)


async def test_hypervisors_join_the_schedulers_hosts_with_services_and_servers(
    pg: Harness,
) -> None:
    await pg.scheduler.add_host("hv-1")
    await pg.scheduler.add_host("hv-2")
    inst = make_instance(host="hv-1")
    await add(pg.sessions, make_service("hv-1"), inst, make_instance(host="hv-1", deleted=True))
    resp = await pg.fleet.ListHypervisors(fleet_pb2.ListHypervisorsRequest(with_servers=True))
    by_name = {h.hypervisor_hostname: h for h in resp.hypervisors}
    assert by_name["hv-1"].running_vms == 1
    assert [s.id for s in by_name["hv-1"].servers] == [inst.uuid]
    assert by_name["hv-1"].service.host == "hv-1"
    assert by_name["hv-2"].running_vms == 0
    one = await pg.fleet.GetHypervisor(fleet_pb2.GetHypervisorRequest(id=by_name["hv-2"].uuid))
    assert one.hypervisor.hypervisor_hostname == "hv-2"
    page = await pg.fleet.ListHypervisors(fleet_pb2.ListHypervisorsRequest(limit=1))
    assert len(page.hypervisors) == 1
    assert page.next_marker


async def test_detailed_zones_add_the_internal_zone_with_control_plane_services(
    pg: Harness,
) -> None:
    await pg.scheduler.add_host("hv-1", zone="az-1")
    await add(
        pg.sessions,
        make_service("hv-1"),
        make_service("ctl", binary="loom-conductor", zone="internal"),
    )
    plain = await pg.fleet.ListAvailabilityZones(fleet_pb2.ListAvailabilityZonesRequest())
    assert [z.name for z in plain.zones] == ["az-1"]
    detailed = await pg.fleet.ListAvailabilityZones(
        fleet_pb2.ListAvailabilityZonesRequest(detailed=True)
    )
    zones = {z.name: z for z in detailed.zones}
    assert [s.host for s in zones["az-1"].services] == ["hv-1"]
    assert [s.binary for s in zones["internal"].services] == ["loom-conductor"]


async def test_host_instances_give_agents_the_spec_of_each_live_instance(pg: Harness) -> None:
    live = make_instance(host="hv-9", image_id=IMAGE_ID, metadata_={"k": "v"})
    await add(pg.sessions, live, make_instance(host="hv-9", deleted=True, vm_state="deleted"))
    resp = await pg.fleet.ListHostInstances(fleet_pb2.ListHostInstancesRequest(host="hv-9"))
    assert [i.spec.instance_id for i in resp.instances] == [live.uuid]
    assert resp.instances[0].spec.image.hash_value == "ab" * 64
    assert resp.instances[0].spec.metadata["k"] == "v"
    assert resp.instances[0].vm_state == servers_pb2.VM_STATE_ACTIVE


async def test_a_fleet_view_needing_an_unreachable_scheduler_is_unavailable(pg: Harness) -> None:
    await pg.scheduler.stop()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await pg.fleet.ListHypervisors(fleet_pb2.ListHypervisorsRequest())
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("ident", ["²", "٣", "9" * 5000, "99999999999999999999"])
async def test_a_service_id_that_is_no_plain_integer_names_no_service(
    pg: Harness, ident: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await pg.fleet.DeleteService(fleet_pb2.DeleteServiceRequest(id=ident))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
