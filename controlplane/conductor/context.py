"""What every part of the conductor shares: sessions, configuration, the outbox wakeup and
the scheduler client (gRPC only: the conductor never imports the scheduler's code) and the
network service's port client (gRPC, through its typed client)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from loom.common.v1 import common_pb2
from loom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.conductor.outbox import Wakeup
from controlplane.config import LoomConfig
from controlplane.db.models import Instance, ServerGroup
from controlplane.network.client import PortsClient

log = logging.getLogger(__name__)


class SchedulerClient:
    """The scheduler's gRPC API with a deadline on every call (gRPC has none by default)."""

    # How long one answer to "which hosts are down" serves every delete that asks. A host's
    # liveness changes over service_down_time (tens of seconds); a second's lag costs
    # nothing there, and a delete storm asks once a second instead of once a delete.
    DOWN_HOSTS_TTL_S = 1.0

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 10.0) -> None:
        self._stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        self._timeout = timeout
        self._down: set[str] | None = None
        self._down_read_at = float("-inf")
        self._down_lock = asyncio.Lock()

    async def select_destinations(
        self, request: scheduler_pb2.SelectDestinationsRequest
    ) -> scheduler_pb2.SelectDestinationsResponse:
        resp: scheduler_pb2.SelectDestinationsResponse = await self._stub.SelectDestinations(
            request, timeout=self._timeout
        )
        return resp

    async def select_destinations_batch(
        self, requests: list[scheduler_pb2.SelectDestinationsRequest]
    ) -> list[scheduler_pb2.SelectDestinationsResult]:
        """One call for several decisions; one result per request, in order."""
        resp: scheduler_pb2.SelectDestinationsBatchResponse = (
            await self._stub.SelectDestinationsBatch(
                scheduler_pb2.SelectDestinationsBatchRequest(requests=requests),
                timeout=self._timeout,
            )
        )
        if len(resp.results) != len(requests):
            raise RuntimeError(
                f"the scheduler answered {len(resp.results)} of {len(requests)} requests"
            )
        return list(resp.results)

    async def claim(
        self,
        request_id: str,
        consumer: str,
        project: str,
        resources: common_pb2.Resources,
        host: str,
        server_group: scheduler_pb2.ServerGroupPolicy | None = None,
    ) -> scheduler_pb2.ClaimResourcesResponse:
        resp: scheduler_pb2.ClaimResourcesResponse = await self._stub.ClaimResources(
            scheduler_pb2.ClaimResourcesRequest(
                request_id=request_id,
                consumer_id=consumer,
                project_id=project,
                resources=resources,
                host=host,
                server_group=server_group,
            ),
            timeout=self._timeout,
        )
        return resp

    async def release(self, request_id: str, consumer: str, host: str = "") -> bool:
        """Releases the consumer's claims (only on host when given); True when one was held."""
        resp = await self._stub.ReleaseResources(
            scheduler_pb2.ReleaseResourcesRequest(
                request_id=request_id, consumer_id=consumer, host=host
            ),
            timeout=self._timeout,
        )
        return bool(resp.released)

    async def move_allocations(self, request_id: str, source: str, target: str) -> str:
        """Hands the source consumer's allocation to the target; returns the host the
        target's allocation is on ("" when it holds none). Idempotent."""
        resp = await self._stub.MoveAllocations(
            scheduler_pb2.MoveAllocationsRequest(
                request_id=request_id, source_consumer_id=source, target_consumer_id=target
            ),
            timeout=self._timeout,
        )
        return str(resp.host)

    async def allocations(self, consumer: str) -> list[scheduler_pb2.Allocation]:
        resp = await self._stub.GetAllocations(
            scheduler_pb2.GetAllocationsRequest(consumer_id=consumer), timeout=self._timeout
        )
        return list(resp.allocations)

    async def list_hosts(self, name_contains: str = "") -> list[scheduler_pb2.Host]:
        resp = await self._stub.ListHosts(
            scheduler_pb2.ListHostsRequest(name_contains=name_contains), timeout=self._timeout
        )
        return list(resp.hosts)

    async def get_host(self, name: str) -> scheduler_pb2.Host:
        resp = await self._stub.GetHost(
            scheduler_pb2.GetHostRequest(name=name), timeout=self._timeout
        )
        host: scheduler_pb2.Host = resp.host
        return host

    async def set_host_enabled(
        self, request_id: str, host: str, enabled: bool, reason: str
    ) -> None:
        await self._stub.SetHostEnabled(
            scheduler_pb2.SetHostEnabledRequest(
                request_id=request_id, host=host, enabled=enabled, reason=reason
            ),
            timeout=self._timeout,
        )
        self._forget_down_hosts()

    async def set_host_forced_down(self, request_id: str, host: str, forced_down: bool) -> None:
        await self._stub.SetHostForcedDown(
            scheduler_pb2.SetHostForcedDownRequest(
                request_id=request_id, host=host, forced_down=forced_down
            ),
            timeout=self._timeout,
        )
        self._forget_down_hosts()

    async def is_down(self, host: str) -> bool:
        """True when the scheduler held the host down at most DOWN_HOSTS_TTL_S ago; False
        when it is up, unknown, or the scheduler cannot be asked."""
        async with self._down_lock:
            if time.monotonic() - self._down_read_at >= self.DOWN_HOSTS_TTL_S:
                self._down = await self.down_hosts()
                self._down_read_at = time.monotonic()
            down = self._down
        return down is not None and host in down

    def _forget_down_hosts(self) -> None:
        """A change this conductor made to a host's state is seen by its next question."""
        self._down_read_at = float("-inf")

    async def down_hosts(self) -> set[str] | None:
        """The hosts the scheduler holds down (silent, or forced down); None when the
        scheduler cannot be asked. The scheduler owns host liveness: this is the read."""
        try:
            hosts = await self.list_hosts()
        except grpc.aio.AioRpcError as exc:
            log.warning("could not ask the scheduler which hosts are down: %s", exc.code())
            return None
        return {h.name for h in hosts if not h.up}

    async def zones(self) -> list[scheduler_pb2.AvailabilityZone]:
        resp = await self._stub.ListAvailabilityZones(
            scheduler_pb2.ListAvailabilityZonesRequest(), timeout=self._timeout
        )
        return list(resp.zones)


@dataclass(frozen=True)
class Conductor:
    """The conductor's shared parts, handed to each servicer and worker."""

    sessions: async_sessionmaker[AsyncSession]
    cfg: LoomConfig
    wakeup: Wakeup
    scheduler: SchedulerClient
    # The network service's port API (servers' NICs); None where no network service is
    # reachable: a server with networks then fails its build with a fault.
    network: PortsClient | None = None


def resources_of(
    vcpus: int, memory_mb: int, root_gb: int, ephemeral_gb: int, swap_mb: int
) -> common_pb2.Resources:
    """Placement's view of a flavor: swap counts as disk, rounded up to whole GiB."""
    disk = root_gb + ephemeral_gb + (swap_mb + 1023) // 1024
    return common_pb2.Resources(vcpus=vcpus, memory_mb=memory_mb, disk_gb=disk)


def scheduler_hint(inst: Instance, name: str) -> list[str]:
    """The server UUIDs of one of the instance's stored scheduler hints ("same_host",
    "different_host"); empty when it was not given. The scheduler takes them as consumers."""
    return [str(v) for v in (inst.scheduler_hints or {}).get(name) or []]


async def group_policies(
    session: AsyncSession, group_ids: Iterable[str | None]
) -> dict[str, scheduler_pb2.ServerGroupPolicy]:
    """Each named server group's policy as the scheduler takes it (one SELECT, none when
    no id is given). A group deleted since its members were created is absent: its policy
    binds no one any more."""
    ids = sorted({g for g in group_ids if g})
    if not ids:
        return {}
    groups = await session.scalars(select(ServerGroup).where(ServerGroup.id.in_(ids)))
    return {
        g.id: scheduler_pb2.ServerGroupPolicy(
            id=g.id,
            name=g.name,
            policy=g.policy,
            max_server_per_host=int((g.rules or {}).get("max_server_per_host", 0)),
        )
        for g in groups
    }
