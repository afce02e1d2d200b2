"""The scheduling worker: turns schedule messages into placements and build commands.

A durable pull consumer shared by every conductor replica reads `loom.conductor.schedule`.
For each message it asks the scheduler for a host (which claims the resources there), then
ONE transaction records the placement and queues the build command; only then is the
message acked. A message redelivered after that finds the placement already recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import grpc
from loom.conductor.v1 import conductor_pb2
from loom.scheduler.v1 import scheduler_pb2
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.conductor import commands, outbox
from controlplane.conductor.context import Conductor, SchedulerClient, resources_of
from controlplane.conductor.convert import instance_spec, make_fault
from controlplane.conductor.states import TaskState, VmState
from controlplane.db.models import Image, Instance, InstanceAction, InstanceActionEvent
from controlplane.runtime import bus

log = logging.getLogger(__name__)

DURABLE = "conductor-schedule"


async def load_with_image(session: AsyncSession, uuid: str) -> tuple[Instance, Image | None] | None:
    """The instance and its image row in one statement; None when the instance is unknown."""
    row = (
        await session.execute(
            select(Instance, Image)
            .outerjoin(Image, Image.id == Instance.image_id)
            .where(Instance.uuid == uuid)
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1])


async def record_event(
    session: AsyncSession,
    instance_uuid: str,
    action: str,
    event: str,
    result: str,
    *,
    host: str | None = None,
    details: str = "",
    message: str | None = None,
) -> None:
    """Adds a finished event to the instance's latest `action` (no-op when there is none)."""
    action_id = (
        await session.execute(
            select(InstanceAction.id)
            .where(InstanceAction.instance_uuid == instance_uuid, InstanceAction.action == action)
            .order_by(InstanceAction.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if action_id is None:
        return
    now = datetime.now(UTC)
    session.add(
        InstanceActionEvent(
            action_id=action_id,
            event=event,
            start_time=now,
            finish_time=now,
            result=result,
            host=host,
            details=details or None,
        )
    )
    values: dict[str, Any] = {"updated_at": now}
    if message is not None:
        values["message"] = message
    await session.execute(
        update(InstanceAction).where(InstanceAction.id == action_id).values(**values)
    )


def no_valid_host_message(nvh: scheduler_pb2.NoValidHost) -> tuple[str, str]:
    """The fault message ("No valid host was found. …" with each filter's removals) and the
    per-reason details."""
    parts = [
        f"{r.filter} removed {r.hosts_removed} of the hosts"
        for r in nvh.rejections
        if r.hosts_removed
    ]
    summary = "; ".join(parts) if parts else "no hosts are known"
    message = f"No valid host was found. {nvh.hosts_considered} hosts considered: {summary}."
    details = "; ".join(
        f"{r.filter}: " + ", ".join(f"{reason} ({n})" for reason, n in sorted(r.reasons.items()))
        for r in nvh.rejections
        if r.reasons
    )
    return message, details or nvh.message


class HostZones:
    """Which availability zone each host is in, refreshed from the scheduler now and then
    (the placement answer names the host, not its zone)."""

    def __init__(self, scheduler: SchedulerClient, ttl: float = 30.0) -> None:
        self._scheduler = scheduler
        self._ttl = ttl
        self._zones: dict[str, str] = {}
        self._fetched = 0.0

    async def zone_of(self, host: str) -> str:
        if host not in self._zones or time.monotonic() - self._fetched > self._ttl:
            try:
                hosts = await self._scheduler.list_hosts()
            except grpc.aio.AioRpcError as exc:
                log.warning("could not list hosts for zones: %s", exc.code())
                return self._zones.get(host, "")
            self._zones = {h.name: h.availability_zone for h in hosts}
            self._fetched = time.monotonic()
        return self._zones.get(host, "")


class SchedulingWorker:
    def __init__(self, conductor: Conductor, js: JetStreamContext, *, batch: int = 64) -> None:
        self._c = conductor
        self._js = js
        self._batch = batch
        self._zones = HostZones(conductor.scheduler)

    async def schedule(self, message: conductor_pb2.ScheduleInstanceMessage) -> None:
        """Places the instance for message.attempt. Postcondition on return: the placement
        and its build command are committed, or the instance is in ERROR with a fault, or
        there was nothing to do (deleted, already placed). Raises when the scheduler is
        unreachable, so the message is redelivered."""
        c = self._c
        uuid, attempt = message.instance_id, message.attempt
        async with c.sessions() as session:
            loaded = await load_with_image(session, uuid)
            if loaded is None:
                return
            inst, image = loaded
            if inst.deleted:
                await session.rollback()
                await c.scheduler.release(f"{message.request_id}-release", uuid)
                return
            if inst.attempts >= attempt:
                # Placed already: make sure the build command is queued (a crash may have
                # come between commit and ack); the outbox ignores a duplicate msg id.
                if inst.task_state == TaskState.SPAWNING and inst.attempts == attempt and inst.host:
                    await outbox.add(
                        session, commands.build(inst.host, instance_spec(inst, image), attempt)
                    )
                    await session.commit()
                    c.wakeup.set()
                return
            if inst.task_state != TaskState.SCHEDULING:
                return
            # Hand the connection back while the scheduler decides (commit keeps the rows
            # loaded: the session does not expire on commit); the guarded UPDATE below
            # notices anything that changed meanwhile.
            await session.commit()
            # The scheduler's claim is keyed by consumer, so a retry returns the same host.
            response = await c.scheduler.select_destinations(
                scheduler_pb2.SelectDestinationsRequest(
                    request_id=message.request_id,
                    consumer_id=uuid,
                    project_id=inst.project_id,
                    resources=resources_of(
                        inst.vcpus, inst.memory_mb, inst.root_gb, inst.ephemeral_gb, inst.swap_mb
                    ),
                    availability_zone=inst.requested_availability_zone or "",
                    ignore_hosts=[str(h) for h in inst.failed_hosts or []],
                    num_alternates=c.cfg.scheduler.num_alternates,
                    force_host=inst.force_host or "",
                )
            )
            guard = (
                Instance.id == inst.id,
                Instance.deleted.is_(False),
                Instance.task_state == TaskState.SCHEDULING.value,
                Instance.attempts == inst.attempts,
            )
            now = datetime.now(UTC)
            if response.WhichOneof("outcome") != "placement":
                text, details = no_valid_host_message(response.no_valid_host)
                result = await session.execute(
                    update(Instance)
                    .where(*guard)
                    .values(
                        vm_state=VmState.ERROR.value,
                        task_state=None,
                        fault=make_fault(500, text, details),
                        updated_at=now,
                    )
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    await record_event(
                        session,
                        uuid,
                        "create",
                        "conductor_schedule_and_build_instances",
                        "Error",
                        details=text,
                        message="Error",
                    )
                await session.commit()
                return
            placement = response.placement
            host = placement.selected.host
            zone = inst.requested_availability_zone or await self._zones.zone_of(host)
            result = await session.execute(
                update(Instance)
                .where(*guard)
                .values(
                    host=host,
                    node=placement.selected.node or host,
                    availability_zone=zone or None,
                    task_state=TaskState.SPAWNING.value,
                    attempts=attempt,
                    alternates=[d.host for d in placement.alternates],
                    updated_at=now,
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                # Deleted (or otherwise moved on) while the scheduler was choosing.
                await session.rollback()
                await c.scheduler.release(f"{message.request_id}-release", uuid)
                return
            inst.host = host
            await outbox.add(session, commands.build(host, instance_spec(inst, image), attempt))
            await session.commit()
        c.wakeup.set()

    async def _handle(self, msg: Msg) -> None:
        try:
            message = conductor_pb2.ScheduleInstanceMessage.FromString(msg.data)
        except Exception:
            log.error("dropping an undecodable schedule message")
            await msg.term()
            return
        try:
            await self.schedule(message)
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "scheduler call failed; will retry: %s",
                exc.code(),
                extra={"instance": message.instance_id},
            )
            await msg.nak(delay=1.0)
            return
        except Exception:
            log.exception("scheduling failed; will retry", extra={"instance": message.instance_id})
            await msg.nak(delay=1.0)
            return
        await msg.ack()

    async def run(self, stop: asyncio.Event) -> None:
        """Consumes until stop is set; survives NATS outages (fetch retries)."""
        sub = await self._js.pull_subscribe(
            commands.SCHEDULE_SUBJECT,
            durable=DURABLE,
            stream=bus.CONDUCTOR_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=60.0, max_ack_pending=-1),
        )
        await consume(sub, stop, self._batch, self._handle_batch)

    async def _handle_batch(self, msgs: list[Msg]) -> None:
        await asyncio.gather(*(self._handle(m) for m in msgs))


async def consume(
    sub: JetStreamContext.PullSubscription,
    stop: asyncio.Event,
    batch: int,
    handle: Any,
) -> None:
    """Fetches batches until stop is set; an outage only pauses it."""
    while not stop.is_set():
        try:
            msgs = await sub.fetch(batch, timeout=0.5)
        except TimeoutError:
            continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("fetch failed: %s", exc)
            await asyncio.sleep(0.5)
            continue
        await handle(msgs)
