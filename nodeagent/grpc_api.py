"""The ComputeService for every host of an agent process, dispatching by instance."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import NoReturn

import grpc
from loom.compute.v1 import compute_pb2, compute_pb2_grpc

from nodeagent.agent import HostAgent
from nodeagent.driver.base import (
    ConsoleDriver,
    DiskCounters,
    InstanceNotFound,
    NicCounters,
    NotSupported,
)
from nodeagent.hostuptime import read_host_uptime
from nodeagent.messages import power_to_pb

SERVICE_NAME = "loom.compute.v1.ComputeService"


class ComputeApi(compute_pb2_grpc.ComputeServiceServicer):
    """`agents` maps host → agent; `placements` maps instance → host (kept by the agents)."""

    def __init__(self, agents: Mapping[str, HostAgent], placements: Mapping[str, str]) -> None:
        self._agents = agents
        self._placements = placements

    async def _agent_for(
        self, instance_id: str, context: grpc.aio.ServicerContext[object, object]
    ) -> HostAgent:
        agent = self._agents.get(self._placements.get(instance_id, ""))
        if agent is None:
            await _not_found(context, instance_id)
        return agent

    async def GetConsoleConnectInfo(
        self,
        request: compute_pb2.GetConsoleConnectInfoRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> compute_pb2.GetConsoleConnectInfoResponse:
        if request.protocol not in ("", "vnc"):
            await _fail(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Console protocol {request.protocol!r} is not offered.",
            )
        agent = await self._agent_for(request.instance_id, context)
        driver = agent.driver
        if not isinstance(driver, ConsoleDriver):
            await _fail(
                context, grpc.StatusCode.FAILED_PRECONDITION, "This hypervisor offers no consoles."
            )
        try:
            endpoint = await agent.call_driver(driver.console_endpoint, request.instance_id)
        except InstanceNotFound:
            await _not_found(context, request.instance_id)
        except NotSupported as exc:
            await _fail(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return compute_pb2.GetConsoleConnectInfoResponse(
            host=endpoint.host, port=endpoint.port, instance_id=request.instance_id
        )

    async def GetConsoleOutput(
        self,
        request: compute_pb2.GetConsoleOutputRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> compute_pb2.GetConsoleOutputResponse:
        agent = await self._agent_for(request.instance_id, context)
        driver = agent.driver
        if not isinstance(driver, ConsoleDriver):
            await _fail(
                context, grpc.StatusCode.FAILED_PRECONDITION, "This hypervisor offers no consoles."
            )
        try:
            text = await agent.call_driver(
                driver.console_output, request.instance_id, max(0, request.length)
            )
        except InstanceNotFound:
            await _not_found(context, request.instance_id)
        except NotSupported as exc:
            await _fail(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return compute_pb2.GetConsoleOutputResponse(output=text)

    async def GetInstanceDiagnostics(
        self,
        request: compute_pb2.GetInstanceDiagnosticsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> compute_pb2.GetInstanceDiagnosticsResponse:
        agent = await self._agent_for(request.instance_id, context)
        try:
            diag = await agent.call_driver(agent.driver.diagnostics, request.instance_id)
        except InstanceNotFound:
            await _not_found(context, request.instance_id)
        facts = await agent.call_driver(agent.driver.host_facts)
        return compute_pb2.GetInstanceDiagnosticsResponse(
            power_state=power_to_pb(diag.power_state),
            vcpus=diag.vcpus,
            memory_mb=diag.memory_mb,
            cpu_time_ns=diag.cpu_time_ns,
            driver="libvirt",
            hypervisor=facts.hypervisor_type,
            max_memory_mb=diag.max_memory_mb,
            vcpu_times_ns=list(diag.vcpu_times_ns),
            disks=[_disk_pb(d) for d in diag.disks],
            nics=[_nic_pb(n) for n in diag.nics],
        )

    async def GetHostUptime(
        self,
        request: compute_pb2.GetHostUptimeRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> compute_pb2.GetHostUptimeResponse:
        if request.host and request.host not in self._agents:
            await _fail(
                context, grpc.StatusCode.NOT_FOUND, f"Host {request.host} is not served here."
            )
        # Simulated hosts of one process share its machine, and so its uptime.
        up = await asyncio.to_thread(read_host_uptime)
        return compute_pb2.GetHostUptimeResponse(
            uptime_seconds=up.uptime_s,
            load_1=up.load_1,
            load_5=up.load_5,
            load_15=up.load_15,
            users=up.users,
        )

    async def ListHostInstances(
        self,
        request: compute_pb2.ListHostInstancesRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> compute_pb2.ListHostInstancesResponse:
        if request.host:
            agent = self._agents.get(request.host)
            if agent is None:
                await _fail(
                    context, grpc.StatusCode.NOT_FOUND, f"Host {request.host} is not served here."
                )
        elif len(self._agents) == 1:
            agent = next(iter(self._agents.values()))
        else:
            await _fail(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"This agent process serves {len(self._agents)} hosts; name one in `host`.",
            )
        states = await agent.call_driver(agent.driver.list_instances)
        return compute_pb2.ListHostInstancesResponse(
            host=agent.host,
            instances=[
                compute_pb2.HostInstance(instance_id=iid, power_state=power_to_pb(state))
                for iid, state in sorted(states.items())
            ],
        )


async def _fail(
    context: grpc.aio.ServicerContext[object, object], code: grpc.StatusCode, message: str
) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")


async def _not_found(
    context: grpc.aio.ServicerContext[object, object], instance_id: str
) -> NoReturn:
    await _fail(
        context, grpc.StatusCode.NOT_FOUND, f"Instance {instance_id} is not on this agent's hosts."
    )


def _disk_pb(d: DiskCounters) -> compute_pb2.DiskCounters:
    return compute_pb2.DiskCounters(
        device=d.device,
        read_bytes=d.read_bytes,
        read_requests=d.read_requests,
        write_bytes=d.write_bytes,
        write_requests=d.write_requests,
        errors=d.errors,
    )


def _nic_pb(n: NicCounters) -> compute_pb2.NicCounters:
    return compute_pb2.NicCounters(
        device=n.device,
        mac_address=n.mac_address,
        rx_bytes=n.rx_bytes,
        rx_packets=n.rx_packets,
        rx_errors=n.rx_errors,
        rx_drop=n.rx_drop,
        tx_bytes=n.tx_bytes,
        tx_packets=n.tx_packets,
        tx_errors=n.tx_errors,
        tx_drop=n.tx_drop,
    )
