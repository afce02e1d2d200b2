"""Conversions between the agent's values and loom.compute.v1 messages, in one place."""

from __future__ import annotations

import uuid
from typing import TypeAlias

from google.protobuf.timestamp_pb2 import Timestamp
from loom.common.v1 import common_pb2
from loom.compute.v1 import agent_bus_pb2

from controlplane.config import AgentConfig
from nodeagent import __version__
from nodeagent.driver.base import HostFacts, PowerState

Kind: TypeAlias = agent_bus_pb2.InstanceEventKind.ValueType

BUILD_SUCCEEDED = agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED
BUILD_FAILED = agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_FAILED
DELETED = agent_bus_pb2.INSTANCE_EVENT_KIND_DELETED
ACTION_SUCCEEDED = agent_bus_pb2.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED
ACTION_FAILED = agent_bus_pb2.INSTANCE_EVENT_KIND_ACTION_FAILED
POWER_STATE_CHANGED = agent_bus_pb2.INSTANCE_EVENT_KIND_POWER_STATE_CHANGED
MISSING = agent_bus_pb2.INSTANCE_EVENT_KIND_MISSING
REBUILD_SPAWNING = agent_bus_pb2.INSTANCE_EVENT_KIND_REBUILD_SPAWNING

HEARTBEAT_BINARY = "loom-compute"


def power_to_pb(state: PowerState) -> agent_bus_pb2.PowerState.ValueType:
    # The enum numbers are Nova's on both sides, so the value carries over unchanged.
    return agent_bus_pb2.PowerState.ValueType(int(state))


def power_from_pb(state: agent_bus_pb2.PowerState.ValueType) -> PowerState:
    try:
        return PowerState(int(state))
    except ValueError:
        return PowerState.NOSTATE


def now_pb() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def event_msg_id(request_id: str, kind: Kind) -> str:
    """The Nats-Msg-Id of an event: a resend of the same answer to the same command dedupes."""
    return f"{request_id}:{agent_bus_pb2.InstanceEventKind.Name(kind)}"


def instance_event(
    *,
    host: str,
    instance_id: str,
    kind: Kind,
    power_state: PowerState,
    request_id: str = "",
    action: str = "",
    attempt: int = 0,
    fault: common_pb2.Fault | None = None,
) -> agent_bus_pb2.InstanceEvent:
    """An event; spontaneous ones (no command) get a fresh request id."""
    return agent_bus_pb2.InstanceEvent(
        request_id=request_id or f"agent-{uuid.uuid4()}",
        instance_id=instance_id,
        host=host,
        kind=kind,
        power_state=power_to_pb(power_state),
        fault=fault,
        attempt=attempt,
        occurred_at=now_pb(),
        action=action,
    )


def fault(code: int, message: str) -> common_pb2.Fault:
    return common_pb2.Fault(code=code, message=message, created_at=now_pb())


def inventory_report(
    *, host: str, facts: HostFacts, cfg: AgentConfig, compute_endpoint: str, host_ip: str
) -> agent_bus_pb2.HostInventoryReport:
    """allocation_ratio 0 means "use the scheduler's configured default"."""
    return agent_bus_pb2.HostInventoryReport(
        host=host,
        vcpu=agent_bus_pb2.Inventory(total=facts.vcpus, reserved=0, allocation_ratio=0.0),
        memory_mb=agent_bus_pb2.Inventory(
            total=facts.memory_mb, reserved=cfg.reserved_host_memory_mb, allocation_ratio=0.0
        ),
        disk_gb=agent_bus_pb2.Inventory(
            total=facts.disk_gb, reserved=cfg.reserved_host_disk_gb, allocation_ratio=0.0
        ),
        hypervisor_type=facts.hypervisor_type,
        hypervisor_version=facts.hypervisor_version,
        compute_endpoint=compute_endpoint,
        availability_zone=cfg.availability_zone,
        host_ip=host_ip,
        cpu_info=facts.cpu_info,
    )


def heartbeat(*, host: str, instance_count: int, compute_endpoint: str) -> agent_bus_pb2.Heartbeat:
    return agent_bus_pb2.Heartbeat(
        host=host,
        sent_at=now_pb(),
        instance_count=instance_count,
        compute_endpoint=compute_endpoint,
        version=__version__,
        binary=HEARTBEAT_BINARY,
    )
