"""The agent's metrics, labelled by host: heartbeats sent, and what reconcile and the power
sync did; the lag of its hosts' command consumers, read at scrape time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import servers_pb2
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY

from controlplane.runtime import bus
from controlplane.runtime.metrics import serve_metrics
from controlplane.runtime.natsserver import free_port
from nodeagent.fleet import GrpcFleetView
from nodeagent.metrics import watch_consumers
from tests.nodeagent.conftest import AgentFactory
from tests.nodeagent.support import EventReader, build_command, make_spec, make_test_driver, send
from tests.nodeagent.test_reconcile import RecordedFleet, _channel, _record, _serve_fleet

C = servers_pb2
K = agent_bus_pb2
KINDS = ("destroy_orphan", "recreate", "report_missing", "report_power_state")


def heartbeats(host: str) -> float:
    return REGISTRY.get_sample_value("loom_agent_heartbeats_sent_total", {"host": host}) or 0


def actions(host: str, phase: str) -> dict[str, float]:
    return {
        kind: REGISTRY.get_sample_value(
            "loom_agent_reconcile_actions_total", {"host": host, "phase": phase, "kind": kind}
        )
        or 0
        for kind in KINDS
    }


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


async def test_every_heartbeat_sent_counts_for_its_host(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    before = heartbeats("h1")
    sub = await bus_nc.subscribe(bus.heartbeat_subject("h1"))
    agent = make_agent(heartbeat_interval=0.1)
    await agent.start()
    for _ in range(3):
        await sub.next_msg(timeout=5)
    await agent.stop()
    await sub.unsubscribe()
    # Each is counted as its publish returns, so before it could reach any subscriber.
    assert heartbeats("h1") - before >= 3


async def test_reconcile_counts_each_action_it_took_by_kind(
    make_agent: AgentFactory, bus_nc: NATS, tmp_path: Path
) -> None:
    fleet_port = free_port()
    running, drifted, orphan = make_spec(), make_spec(), make_spec()
    driver = make_test_driver(tmp_path, "h1")
    driver.open()
    driver.create(drifted)  # recorded as shut off, but running
    driver.create(orphan)  # not in the control plane's list
    fleet = RecordedFleet(
        {
            "h1": [
                _record(running, C.VM_STATE_ACTIVE, K.POWER_STATE_RUNNING),
                _record(drifted, C.VM_STATE_STOPPED, K.POWER_STATE_SHUTDOWN),
            ]
        }
    )
    before = actions("h1", "start")
    server = await _serve_fleet(fleet, fleet_port)
    channel = _channel(fleet_port)
    try:
        agent = make_agent(fleet=GrpcFleetView(channel), driver=driver)
        await agent.start()
        await asyncio.wait_for(agent.reconciled.wait(), 10)
    finally:
        await channel.close()
        await server.stop(0)
    assert delta(actions("h1", "start"), before) == {
        "destroy_orphan": 1,
        "recreate": 1,
        "report_power_state": 1,
    }


async def test_the_power_sync_counts_a_change_it_reported(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    spec = make_spec()
    await send(bus_nc.jetstream(), "h1", "build", build_command(spec))
    assert (await events.next()).kind == K.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED
    before = actions("h1", "power_sync")
    agent.driver._c.lookupByUUIDString(spec.instance_id).destroy()  # type: ignore[attr-defined]
    assert await agent.sync_power_states() == 1
    assert delta(actions("h1", "power_sync"), before) == {"report_power_state": 1}


async def test_a_scrape_reads_the_lag_of_each_hosts_command_consumer(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()
    await agent.start()
    await agent.stop_consuming()
    js = bus_nc.jetstream()
    for _ in range(2):
        await send(js, "h1", "build", build_command(make_spec()))
    endpoint = serve_metrics("agent-test", "127.0.0.1:0")
    assert endpoint is not None
    remove = watch_consumers(js, [agent.durable_name, "agent-never-started"])
    try:
        text = (await asyncio.to_thread(httpx.get, endpoint.url, timeout=10)).text
    finally:
        remove()
    assert (
        'loom_jetstream_consumer_pending_messages{consumer="agent-h1",stream="LOOM_COMPUTE"} 2.0'
        in text
    ), text
    assert "agent-never-started" not in text
