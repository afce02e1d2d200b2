"""An agent on a three-node NATS cluster: when the node leading its command consumer dies
(not the node the agent is connected to), its open pull request dies with that leader; the
agent must pull again at once, not wait out the request's expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NoStreamResponseError

from controlplane.config import NatsConfig
from controlplane.runtime import bus
from controlplane.runtime.natsserver import NatsCluster, start_nats_cluster
from tests.nodeagent.conftest import AgentFactory
from tests.nodeagent.support import EventReader, build_command, make_spec
from tests.support import polling

CFG = NatsConfig(duplicate_window_s=120, stream_replicas=3)
DURABLE = "agent-h1"
# Far longer than the agent may take to notice: a stall this long means it waited it out.
PULL_EXPIRY_S = 60.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nats = start_nats_cluster(tmp_path / "cluster")
    try:
        yield nats
    finally:
        nats.stop()


@pytest.fixture
async def node0_nc(cluster: NatsCluster) -> AsyncIterator[NATS]:
    """The agent's connection: to node 0 first (the cluster tells it of the others)."""
    nc = await bus.connect(cluster.nodes[0].url, CFG, "agent-on-node-0")
    await bus.ensure_streams(nc.jetstream(), CFG)
    try:
        yield nc
    finally:
        await nc.close()


def _names(cluster: NatsCluster) -> list[str]:
    return [n.cluster.server_name if n.cluster else "" for n in cluster.nodes]


async def _consumer_leader(nc: NATS) -> str:
    info = await nc.jetstream().consumer_info(bus.COMPUTE_STREAM, DURABLE)
    assert info.cluster is not None
    return str(info.cluster.leader)


async def _lead_elsewhere_than_node0(nc: NATS, cluster: NatsCluster) -> int:
    """Moves the consumer's leadership off node 0 (where the agent is connected)."""
    names = _names(cluster)
    for _ in range(20):
        leader = await _consumer_leader(nc)
        if leader and leader != names[0]:
            return names.index(leader)
        stepdown = f"$JS.API.CONSUMER.LEADER.STEPDOWN.{bus.COMPUTE_STREAM}.{DURABLE}"
        await nc.request(stepdown, b"", timeout=5)
        await asyncio.sleep(0.5)
    raise AssertionError("the consumer's leader never left node 0")


async def test_an_agent_pulls_again_at_once_when_its_consumer_leader_dies(
    make_agent: AgentFactory, node0_nc: NATS, cluster: NatsCluster
) -> None:
    agent = make_agent(nc=node0_nc, command_pull_expiry=PULL_EXPIRY_S)
    await agent.start()
    leader = await _lead_elsewhere_than_node0(node0_nc, cluster)
    # The agent's pull request is open at the leader (a leadership move may have ended
    # the first one; the agent pulls again after that answer).
    js = node0_nc.jetstream()

    async def pulling() -> bool:
        info = await js.consumer_info(bus.COMPUTE_STREAM, DURABLE)
        return (info.num_waiting or 0) >= 1

    await polling.eventually(pulling, 10, "the agent's pull request open")
    events = await EventReader.open(node0_nc, "h1")
    cluster.nodes[leader].kill()
    killed = time.monotonic()
    spec = make_spec()
    command = build_command(spec)
    while True:  # as the outbox relay does: resent until the new leader acks it
        try:
            await js.publish(
                bus.compute_subject("h1", "build"),
                command.SerializeToString(),
                timeout=2,
                headers={"Nats-Msg-Id": command.request_id},
            )
            break
        except (NatsTimeoutError, NoRespondersError, NoStreamResponseError, APIError):
            assert time.monotonic() - killed < 30, "the stream found no new leader"
            await asyncio.sleep(0.2)
    while True:  # this reader's own consumer may be electing a leader too
        try:
            event = await events.next(wait=1.0)
            break
        except (NatsTimeoutError, APIError):
            assert time.monotonic() - killed < PULL_EXPIRY_S, "the build never happened"
    took = time.monotonic() - killed
    assert event.instance_id == spec.instance_id
    assert took < 10, f"the build waited {took:.1f} s: the agent waited out its pull request"
    assert agent.host == "h1"
