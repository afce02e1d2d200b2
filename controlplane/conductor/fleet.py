"""Services, hypervisors and zones: heartbeats become service records; FleetService shows
the fleet as operators see it (hypervisor capacity comes from the scheduler over gRPC)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, cast

import grpc
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import fleet_pb2, fleet_pb2_grpc, servers_pb2
from loom.scheduler.v1 import scheduler_pb2
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from sqlalchemy import Table, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.conductor import moves
from controlplane.conductor.context import Conductor
from controlplane.conductor.convert import (
    TASK_STATE_PB,
    VM_STATE_PB,
    instance_spec,
    service_pb,
)
from controlplane.conductor.states import TaskState, VmState
from controlplane.db.dialect import as_utc as aware
from controlplane.db.dialect import upsert_insert
from controlplane.db.models import Image, Instance, Service
from controlplane.runtime import bus
from controlplane.runtime.errors import Conflict, InvalidArgument, NotFound
from controlplane.runtime.rpc import grpc_errors

log = logging.getLogger(__name__)

Ctx: TypeAlias = grpc.aio.ServicerContext
COMPUTE = "loom-compute"
CONDUCTOR = "loom-conductor"
INTERNAL_ZONE = "internal"
DEFAULT_ZONE = "nova"


def is_up(row: Service, now: datetime, down_after_s: int) -> bool:
    """Up when not forced down and seen within service_down_time. For Loom's own services
    (conductor, scheduler) only: a compute host's liveness is the scheduler's (`up` on its
    Host), read over gRPC."""
    if row.forced_down or row.last_seen_up is None:
        return False
    return now - aware(row.last_seen_up) <= timedelta(seconds=down_after_s)


def service_view(
    row: Service,
    hosts: dict[str, scheduler_pb2.Host],
    now: datetime,
    down_after_s: int,
) -> fleet_pb2.Service:
    """The service as operators see it: a compute service's up, forced_down and zone come
    from the scheduler's host (down when the scheduler does not know it)."""
    if row.binary != COMPUTE:
        return service_pb(row, up=is_up(row, now, down_after_s))
    host = hosts.get(row.host)
    out = service_pb(row, up=host is not None and host.up)
    if host is not None:
        out.forced_down = host.forced_down
        out.zone = host.availability_zone
    return out


class HeartbeatRecorder:
    """Collects heartbeats and writes them in batches: one upsert per flush, not per beat."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        flush_interval: float = 1.0,
        own_host: str | None = None,
    ) -> None:
        self._sessions = sessions
        self._interval = flush_interval
        self._pending: dict[tuple[str, str], tuple[datetime, str, str]] = {}
        self.own_host = own_host or socket.gethostname()

    def record(self, beat: agent_bus_pb2.Heartbeat) -> None:
        if not bus.valid_host_name(beat.host):
            return
        binary = beat.binary or COMPUTE
        # Receipt time, not sent_at: a host with a skewed clock must not look alive forever.
        self._pending[(beat.host, binary)] = (
            datetime.now(UTC),
            beat.version,
            beat.compute_endpoint,
        )

    async def on_message(self, msg: Msg) -> None:
        try:
            self.record(agent_bus_pb2.Heartbeat.FromString(msg.data))
        except Exception:
            log.warning("dropping an undecodable heartbeat on %s", msg.subject)

    async def flush(self) -> int:
        """Upserts every pending heartbeat in one statement; returns how many."""
        if not self._pending:
            return 0
        pending, self._pending = self._pending, {}
        rows = [
            {
                "uuid": str(uuid.uuid4()),
                "host": host,
                "binary": binary,
                "zone": INTERNAL_ZONE if binary != COMPUTE else DEFAULT_ZONE,
                "disabled": False,
                "forced_down": False,
                "last_seen_up": seen,
                "report_count": 1,
                "version": version,
                "compute_endpoint": endpoint,
                "created_at": seen,
                "updated_at": seen,
            }
            for (host, binary), (seen, version, endpoint) in pending.items()
        ]
        try:
            async with self._sessions() as session, session.begin():
                # Rows passed as parameters (executemany), not rendered into the statement:
                # the statement is compiled once and cached, where a VALUES list of a
                # thousand hosts was compiled anew at every flush. RETURNING makes
                # SQLAlchemy send them as one multi-row INSERT, not one per row.
                t = cast(Table, Service.__table__)
                ins = upsert_insert(session, t)
                await session.execute(
                    ins.on_conflict_do_update(
                        index_elements=["host", "binary"],
                        set_={
                            "last_seen_up": ins.excluded.last_seen_up,
                            "updated_at": ins.excluded.updated_at,
                            "version": ins.excluded.version,
                            "compute_endpoint": ins.excluded.compute_endpoint,
                            "report_count": t.c.report_count + 1,
                        },
                    ).returning(t.c.id),
                    rows,
                )
        except Exception:
            # Keep them for the next flush unless a newer beat arrived meanwhile.
            for key, value in pending.items():
                self._pending.setdefault(key, value)
            raise
        return len(rows)

    async def run(self, nc: NATS, stop: asyncio.Event) -> None:
        """Subscribes, beats for this conductor and flushes every interval until stop."""
        sub = await nc.subscribe(bus.HEARTBEAT_WILDCARD, cb=self.on_message)
        try:
            while not stop.is_set():
                self.record(agent_bus_pb2.Heartbeat(host=self.own_host, binary=CONDUCTOR))
                try:
                    await self.flush()
                except Exception as exc:
                    log.warning("heartbeat flush failed: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._interval)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await self.flush()


def _hypervisor_pb(
    host: scheduler_pb2.Host,
    service: Service | None,
    servers: list[tuple[str, int]],
    now: datetime,
    down_after_s: int,
    with_servers: bool,
) -> fleet_pb2.Hypervisor:
    out = fleet_pb2.Hypervisor(
        id=host.id,
        uuid=host.uuid,
        hypervisor_hostname=host.name,
        up=host.up,
        enabled=(not service.disabled) if service is not None else host.enabled,
        hypervisor_type=host.hypervisor_type,
        hypervisor_version=host.hypervisor_version,
        host_ip=host.host_ip,
        vcpus=host.vcpu.total,
        vcpus_used=host.vcpu.used,
        memory_mb=host.memory_mb.total,
        memory_mb_used=host.memory_mb.used,
        local_gb=host.disk_gb.total,
        local_gb_used=host.disk_gb.used,
        running_vms=len(servers),
        cpu_info=host.cpu_info,
    )
    if service is not None:
        out.service.CopyFrom(service_view(service, {host.name: host}, now, down_after_s))
    if with_servers:
        out.servers.extend(
            fleet_pb2.HypervisorServer(id=u, name=f"instance-{i:08x}") for u, i in servers
        )
    return out


class FleetServicer(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self, conductor: Conductor) -> None:
        self._c = conductor

    @property
    def _down_after(self) -> int:
        return self._c.cfg.conductor.service_down_time

    async def _hosts(self) -> dict[str, scheduler_pb2.Host]:
        return {h.name: h for h in await self._c.scheduler.list_hosts()}

    async def _service(self, session: AsyncSession, ident: str) -> Service:
        # An id is ASCII digits that fit the column; anything else can only be a uuid.
        numeric = ident.isascii() and ident.isdigit() and len(ident) <= 18
        cond = Service.id == int(ident) if numeric else Service.uuid == ident
        row = (await session.execute(select(Service).where(cond))).scalar_one_or_none()
        if row is None:
            raise NotFound(f"Service {ident} could not be found.")
        return row

    @grpc_errors
    async def ListServices(
        self, request: fleet_pb2.ListServicesRequest, context: Ctx
    ) -> fleet_pb2.ListServicesResponse:
        stmt = select(Service).order_by(Service.id)
        if request.binary:
            stmt = stmt.where(Service.binary == request.binary)
        if request.host:
            stmt = stmt.where(Service.host == request.host)
        now = datetime.now(UTC)
        async with self._c.sessions() as session:
            rows = (await session.execute(stmt)).scalars().all()
        hosts = await self._hosts() if any(r.binary == COMPUTE for r in rows) else {}
        return fleet_pb2.ListServicesResponse(
            services=[service_view(r, hosts, now, self._down_after) for r in rows]
        )

    @grpc_errors
    async def UpdateService(
        self, request: fleet_pb2.UpdateServiceRequest, context: Ctx
    ) -> fleet_pb2.UpdateServiceResponse:
        """Postcondition: the given flags are stored; for a compute service the scheduler's
        host is enabled or disabled first, so placement never disagrees with the record."""
        if request.HasField("disabled_reason") and request.HasField("enabled") and request.enabled:
            raise InvalidArgument("A disabled reason only goes with disabling a service")
        async with self._c.sessions() as session:
            row = await self._service(session, request.id)
            await session.commit()
            if request.HasField("enabled") and row.binary == COMPUTE:
                reason = request.disabled_reason if not request.enabled else ""
                await self._c.scheduler.set_host_enabled(
                    request.request_id or str(uuid.uuid4()), row.host, request.enabled, reason
                )
            if request.HasField("forced_down") and row.binary == COMPUTE:
                # The scheduler owns host liveness: it stops placing there before the
                # record says so.
                await self._c.scheduler.set_host_forced_down(
                    request.request_id or str(uuid.uuid4()), row.host, request.forced_down
                )
            if request.HasField("enabled"):
                row.disabled = not request.enabled
                row.disabled_reason = (
                    (request.disabled_reason or None) if not request.enabled else None
                )
            elif request.HasField("disabled_reason"):
                row.disabled_reason = request.disabled_reason or None
            if request.HasField("forced_down"):
                row.forced_down = request.forced_down
            session.add(row)
            await session.commit()
        now = datetime.now(UTC)
        hosts = await self._hosts() if row.binary == COMPUTE else {}
        return fleet_pb2.UpdateServiceResponse(
            service=service_view(row, hosts, now, self._down_after)
        )

    @grpc_errors
    async def DeleteService(
        self, request: fleet_pb2.DeleteServiceRequest, context: Ctx
    ) -> fleet_pb2.DeleteServiceResponse:
        async with self._c.sessions() as session:
            row = await self._service(session, request.id)
            if row.binary == COMPUTE:
                running = (
                    await session.execute(
                        select(func.count(Instance.id)).where(
                            Instance.host == row.host, Instance.deleted.is_(False)
                        )
                    )
                ).scalar_one()
                if running:
                    raise Conflict(
                        f"Service {request.id} still has {running} servers on host {row.host}"
                    )
            await session.execute(delete(Service).where(Service.id == row.id))
            await session.commit()
        return fleet_pb2.DeleteServiceResponse()

    async def _hypervisors(
        self, hosts: list[scheduler_pb2.Host], with_servers: bool
    ) -> list[fleet_pb2.Hypervisor]:
        names = [h.name for h in hosts]
        async with self._c.sessions() as session:
            services = {
                s.host: s
                for s in (
                    await session.execute(
                        select(Service).where(Service.binary == COMPUTE, Service.host.in_(names))
                    )
                ).scalars()
            }
            servers: dict[str, list[tuple[str, int]]] = {n: [] for n in names}
            for host, inst_uuid, inst_id in await session.execute(
                select(Instance.host, Instance.uuid, Instance.id).where(
                    Instance.host.in_(names), Instance.deleted.is_(False)
                )
            ):
                servers[str(host)].append((inst_uuid, inst_id))
        now = datetime.now(UTC)
        return [
            _hypervisor_pb(
                h, services.get(h.name), servers[h.name], now, self._down_after, with_servers
            )
            for h in hosts
        ]

    @grpc_errors
    async def ListHypervisors(
        self, request: fleet_pb2.ListHypervisorsRequest, context: Ctx
    ) -> fleet_pb2.ListHypervisorsResponse:
        hosts = sorted(
            await self._c.scheduler.list_hosts(request.hostname_pattern), key=lambda h: h.id
        )
        if request.marker:
            if not any(str(h.id) == request.marker or h.uuid == request.marker for h in hosts):
                raise InvalidArgument(f"marker [{request.marker}] not found")
            idx = next(
                i
                for i, h in enumerate(hosts)
                if str(h.id) == request.marker or h.uuid == request.marker
            )
            hosts = hosts[idx + 1 :]
        next_marker = ""
        if request.limit and len(hosts) > request.limit:
            hosts = hosts[: request.limit]
            next_marker = hosts[-1].uuid
        return fleet_pb2.ListHypervisorsResponse(
            hypervisors=await self._hypervisors(hosts, request.with_servers),
            next_marker=next_marker,
        )

    @grpc_errors
    async def GetHypervisor(
        self, request: fleet_pb2.GetHypervisorRequest, context: Ctx
    ) -> fleet_pb2.GetHypervisorResponse:
        hosts = await self._c.scheduler.list_hosts()
        match = [h for h in hosts if request.id in (str(h.id), h.uuid, h.name)]
        if not match:
            raise NotFound(f"Hypervisor {request.id} could not be found.")
        found = await self._hypervisors(match[:1], request.with_servers)
        return fleet_pb2.GetHypervisorResponse(hypervisor=found[0])

    @grpc_errors
    async def ListAvailabilityZones(
        self, request: fleet_pb2.ListAvailabilityZonesRequest, context: Ctx
    ) -> fleet_pb2.ListAvailabilityZonesResponse:
        zones = await self._c.scheduler.zones()
        out = [fleet_pb2.AvailabilityZone(name=z.name, available=z.available) for z in zones]
        if not request.detailed:
            return fleet_pb2.ListAvailabilityZonesResponse(zones=out)
        now = datetime.now(UTC)
        async with self._c.sessions() as session:
            services = (await session.execute(select(Service).order_by(Service.id))).scalars().all()
        by_host = {s.host: s for s in services if s.binary == COMPUTE}
        hosts = await self._hosts() if by_host else {}
        for zone, pb in zip(zones, out, strict=True):
            for host in zone.hosts:
                svc = by_host.get(host)
                if svc is not None:
                    pb.services.append(service_view(svc, hosts, now, self._down_after))
        internal = [s for s in services if s.binary != COMPUTE]
        if internal:
            out.append(
                fleet_pb2.AvailabilityZone(
                    name=INTERNAL_ZONE,
                    available=any(is_up(s, now, self._down_after) for s in internal),
                    services=[service_pb(s, up=is_up(s, now, self._down_after)) for s in internal],
                )
            )
        return fleet_pb2.ListAvailabilityZonesResponse(zones=out)

    @grpc_errors
    async def ListHostInstances(
        self, request: fleet_pb2.ListHostInstancesRequest, context: Ctx
    ) -> fleet_pb2.ListHostInstancesResponse:
        """Every live instance placed on the host, with the spec to rebuild it."""
        if not request.host:
            raise InvalidArgument("host is required")
        # A server in the middle of a move also has a domain on the host it is not "on"
        # (the source's, kept for a revert): listed, so a reconcile keeps it.
        moving_here = moves.open_on_host(request.host)
        async with self._c.sessions() as session:
            result = await session.execute(
                select(Instance, Image)
                .outerjoin(Image, Image.id == Instance.image_id)
                .where(
                    or_(Instance.host == request.host, Instance.uuid.in_(moving_here)),
                    Instance.deleted.is_(False),
                )
                .order_by(Instance.id)
            )
            rows: list[Any] = list(result.all())
        out = fleet_pb2.ListHostInstancesResponse()
        for inst, image in rows:
            task = TaskState(inst.task_state) if inst.task_state else None
            out.instances.add(
                spec=instance_spec(inst, image),
                vm_state=VM_STATE_PB[VmState(inst.vm_state)],
                task_state=TASK_STATE_PB[task] if task else servers_pb2.TASK_STATE_UNSPECIFIED,
                power_state=agent_bus_pb2.PowerState.ValueType(inst.power_state or 0),
                move_copy=inst.host != request.host,
            )
        return out
