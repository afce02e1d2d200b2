"""What the control plane thinks a host runs, read from the conductor's FleetService."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import grpc
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import fleet_pb2, fleet_pb2_grpc, servers_pb2

from nodeagent.driver.base import PowerState
from nodeagent.messages import power_from_pb


@dataclass(frozen=True)
class ExpectedInstance:
    """One instance the control plane places on a host, and the state it recorded."""

    spec: agent_bus_pb2.InstanceSpec
    vm_state: servers_pb2.VmState.ValueType
    task_state: servers_pb2.TaskState.ValueType
    power_state: PowerState
    # Listed for this host only because an open move keeps a copy here (a resize's source,
    # or a destination still being defined): the states above are of its own host.
    move_copy: bool = False

    @property
    def instance_id(self) -> str:
        return self.spec.instance_id


class FleetView(Protocol):
    async def expected_instances(self, host: str) -> list[ExpectedInstance]:
        """The host's instances as recorded. Raises grpc.aio.AioRpcError when unreachable."""
        ...


class GrpcFleetView:
    """FleetService over one shared channel; every call has a deadline."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float = 10.0) -> None:
        self._stub = fleet_pb2_grpc.FleetServiceStub(channel)
        self._timeout = timeout

    async def expected_instances(self, host: str) -> list[ExpectedInstance]:
        resp = await self._stub.ListHostInstances(
            fleet_pb2.ListHostInstancesRequest(host=host), timeout=self._timeout
        )
        return [
            ExpectedInstance(
                spec=item.spec,
                vm_state=item.vm_state,
                task_state=item.task_state,
                power_state=power_from_pb(item.power_state),
                move_copy=item.move_copy,
            )
            for item in resp.instances
        ]
