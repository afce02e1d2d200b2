"""Factories and helpers for the node agent's tests."""

from __future__ import annotations

import uuid
from pathlib import Path

from loom.compute.v1 import agent_bus_pb2
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from controlplane.runtime import bus
from nodeagent.driver.libvirt_driver import LibvirtDriver, write_simulated_node
from tests.support import polling


def make_spec(**overrides: object) -> agent_bus_pb2.InstanceSpec:
    iid = str(overrides.pop("instance_id", uuid.uuid4()))
    fields: dict[str, object] = {
        "instance_id": iid,
        "instance_name": f"instance-{iid[:8]}",
        "project_id": "p-1",
        "vcpus": 1,
        "memory_mb": 256,
        "root_gb": 1,
        "image": agent_bus_pb2.ImageRef(id="img-1", disk_format="qcow2"),
        "display_name": "vm",
    }
    fields.update(overrides)
    return agent_bus_pb2.InstanceSpec(**fields)  # type: ignore[arg-type]


def make_test_driver(data: Path, host: str) -> LibvirtDriver:
    uri = write_simulated_node(data / "hosts" / f"{host}.xml", vcpus=8, memory_mb=16384)
    return LibvirtDriver(uri, host=host, instances_dir=data / "instances" / host, disk_gb=100)


def build_command(
    spec: agent_bus_pb2.InstanceSpec, request_id: str = "", attempt: int = 1
) -> agent_bus_pb2.BuildInstanceCommand:
    return agent_bus_pb2.BuildInstanceCommand(
        request_id=request_id or f"req-{uuid.uuid4()}", spec=spec, attempt=attempt
    )


async def send(
    js: JetStreamContext,
    host: str,
    verb: str,
    command: object,
    msg_id: str = "",
    seq: int | None = None,
) -> None:
    """Publishes a command as the conductor's outbox relay does (`seq`: its outbox row id)."""
    data = command.SerializeToString()  # type: ignore[attr-defined]
    request_id = command.request_id  # type: ignore[attr-defined]
    headers = {"Nats-Msg-Id": msg_id or request_id}
    if seq is not None:
        headers[bus.COMMAND_SEQ_HEADER] = str(seq)
    await js.publish(
        bus.compute_subject(host, verb), data, stream=bus.COMPUTE_STREAM, headers=headers
    )


class EventReader:
    """Reads a host's instance events from LOOM_EVENTS, as the conductor would."""

    def __init__(self, sub: JetStreamContext.PullSubscription) -> None:
        self._sub = sub

    @classmethod
    async def open(cls, nc: NATS, host: str) -> EventReader:
        sub = await nc.jetstream().pull_subscribe(
            bus.instance_event_subject(host), durable=f"test-{host}", stream=bus.EVENTS_STREAM
        )
        return cls(sub)

    async def next(self, wait: float = polling.AGENT_COMMAND_S) -> agent_bus_pb2.InstanceEvent:
        msgs = await self._sub.fetch(1, timeout=wait)
        await msgs[0].ack()
        return agent_bus_pb2.InstanceEvent.FromString(msgs[0].data)

    async def none_within(self, seconds: float) -> bool:
        """True when no event arrives within `seconds`."""
        try:
            await self._sub.fetch(1, timeout=seconds)
        except TimeoutError:
            return True
        return False
