"""The scheduling worker: turns schedule messages into placements and build commands.

A durable pull consumer shared by every conductor replica reads `loom.conductor.schedule`.
For each message it asks the scheduler for a host (which claims the resources there), then
ONE transaction records the placement and queues the build command; only then is the
message acked. A message redelivered after that finds the placement already recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import grpc
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import conductor_bus_pb2
from loom.scheduler.v1 import scheduler_pb2
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy import JSON, Integer, String, Table, column, false, func, select, update, values
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.conductor import commands, outbox
from controlplane.conductor import nics as nics_
from controlplane.conductor.context import (
    Conductor,
    SchedulerClient,
    group_policies,
    resources_of,
    scheduler_hint,
)
from controlplane.conductor.convert import instance_spec, make_fault
from controlplane.conductor.metrics import BOOTS_NO_VALID_HOST
from controlplane.conductor.states import TaskState, VmState
from controlplane.db.models import Image, Instance, InstanceAction, InstanceActionEvent
from controlplane.runtime import bus, tracing
from controlplane.runtime.busfaults import BusFaults

log = logging.getLogger(__name__)

DURABLE = "conductor-schedule"


class InvalidSchedulingRequest(Exception):
    """The scheduler refused one request of a batch as invalid (retried, as before)."""


# The instances table for Core statements on the hot paths (no ORM bookkeeping).
INSTANCES = cast(Table, Instance.__table__)


# The image an instance is (re)built from: the shelve's snapshot while it has one.
_IMAGE_OF_INSTANCE = func.coalesce(Instance.shelved_image_id, Instance.image_id)


async def load_with_image(session: AsyncSession, uuid: str) -> tuple[Instance, Image | None] | None:
    """The instance and its image row in one statement; None when the instance is unknown.
    A shelved server's image is the shelve's snapshot (it is unshelved from it)."""
    row = (
        await session.execute(
            select(Instance, Image)
            .outerjoin(Image, Image.id == _IMAGE_OF_INSTANCE)
            .where(Instance.uuid == uuid)
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1])


async def load_many_with_image(
    session: AsyncSession, uuids: list[str]
) -> dict[str, tuple[Instance, Image | None]]:
    """`load_with_image` for several instances in one statement, by uuid."""
    if not uuids:
        return {}
    rows = await session.execute(
        select(Instance, Image)
        .outerjoin(Image, Image.id == _IMAGE_OF_INSTANCE)
        .where(Instance.uuid.in_(uuids))
    )
    return {inst.uuid: (inst, image) for inst, image in rows}


@dataclass
class _Placement:
    """A host the scheduler chose (and claimed) for one message of a batch."""

    index: int
    inst: Instance
    image: Image | None
    attempt: int
    host: str
    node: str
    zone: str | None
    alternates: list[str]
    # The server's ports bound to the host (None: no network).
    nics: nics_.Nics | None = None


async def _record_placements(session: AsyncSession, placed: list[_Placement]) -> list[_Placement]:
    """Records each placement under the guard the one-at-a-time path used (not deleted,
    still scheduling, the attempts seen when it was loaded); returns those recorded.

    PostgreSQL: ONE UPDATE … FROM (VALUES …) RETURNING id. Elsewhere one UPDATE each."""
    if not placed:
        return []
    t = INSTANCES
    now = datetime.now(UTC)
    kept: set[int] = set()
    if session.get_bind().dialect.name == "postgresql":
        v = values(
            column("id", Integer),
            column("seen_attempts", Integer),
            column("host", String),
            column("node", String),
            column("zone", String),
            column("attempt", Integer),
            column("alternates", JSON),
            column("network_info", JSON),
            column("addresses", JSON),
            name="placed",
        ).data(
            [
                (
                    p.inst.id,
                    p.inst.attempts,
                    p.host,
                    p.node,
                    p.zone,
                    p.attempt,
                    p.alternates,
                    None if p.nics is None else p.nics.network_info,
                    [] if p.nics is None else p.nics.addresses,
                )
                for p in placed
            ]
        )
        result = await session.execute(
            update(t)
            .where(
                t.c.id == v.c.id,
                t.c.deleted == false(),
                t.c.task_state == TaskState.SCHEDULING.value,
                t.c.attempts == v.c.seen_attempts,
            )
            .values(
                host=v.c.host,
                node=v.c.node,
                availability_zone=v.c.zone,
                task_state=TaskState.SPAWNING.value,
                attempts=v.c.attempt,
                alternates=v.c.alternates,
                network_info=v.c.network_info,
                addresses=v.c.addresses,
                updated_at=now,
            )
            .returning(t.c.id)
        )
        kept = {int(i) for i in result.scalars()}
    else:
        for p in placed:
            result = await session.execute(
                update(t)
                .where(
                    t.c.id == p.inst.id,
                    t.c.deleted == false(),
                    t.c.task_state == TaskState.SCHEDULING.value,
                    t.c.attempts == p.inst.attempts,
                )
                .values(
                    host=p.host,
                    node=p.node,
                    availability_zone=p.zone,
                    task_state=TaskState.SPAWNING.value,
                    attempts=p.attempt,
                    alternates=p.alternates,
                    network_info=None if p.nics is None else p.nics.network_info,
                    addresses=[] if p.nics is None else p.nics.addresses,
                    updated_at=now,
                )
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                kept.add(p.inst.id)
    recorded = [p for p in placed if p.inst.id in kept]
    for p in recorded:
        p.inst.host = p.host
        if p.nics is not None:
            p.inst.network_info = p.nics.network_info
            p.inst.addresses = p.nics.addresses
    return recorded


async def _record_port_failure(
    session: AsyncSession, inst: Instance, failure: nics_.PortsUnavailable
) -> bool:
    """ERROR with the network service's refusal as the fault, under the placement's guard;
    True when this changed the instance."""
    result = await session.execute(
        update(Instance)
        .where(
            Instance.id == inst.id,
            Instance.deleted.is_(False),
            Instance.task_state == TaskState.SCHEDULING.value,
            Instance.attempts == inst.attempts,
        )
        .values(
            vm_state=VmState.ERROR.value,
            task_state=None,
            fault=make_fault(failure.code, failure.message, ""),
            updated_at=datetime.now(UTC),
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    await record_event(
        session,
        inst.uuid,
        "create",
        "conductor_schedule_and_build_instances",
        "Error",
        details=failure.message,
        message="Error",
    )
    return True


async def _record_no_valid_host(
    session: AsyncSession, inst: Instance, nvh: scheduler_pb2.NoValidHost
) -> bool:
    """ERROR with the scheduler's reasons as the fault, under the same guard; True when
    this changed the instance."""
    text, details = no_valid_host_message(nvh)
    if inst.vm_state == VmState.SHELVED_OFFLOADED:
        # An unshelve that finds no host leaves the server offloaded, as it was.
        result = await session.execute(
            update(Instance)
            .where(
                Instance.id == inst.id,
                Instance.deleted.is_(False),
                Instance.task_state == TaskState.SCHEDULING.value,
                Instance.attempts == inst.attempts,
            )
            .values(task_state=None, force_host=None, updated_at=datetime.now(UTC))
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        await record_event(
            session,
            inst.uuid,
            "unshelve",
            "conductor_unshelve_instance",
            "Error",
            details=text,
            message="Error",
        )
        return False
    result = await session.execute(
        update(Instance)
        .where(
            Instance.id == inst.id,
            Instance.deleted.is_(False),
            Instance.task_state == TaskState.SCHEDULING.value,
            Instance.attempts == inst.attempts,
        )
        .values(
            vm_state=VmState.ERROR.value,
            task_state=None,
            fault=make_fault(500, text, details),
            updated_at=datetime.now(UTC),
        )
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        await record_event(
            session,
            inst.uuid,
            "create",
            "conductor_schedule_and_build_instances",
            "Error",
            details=text,
            message="Error",
        )
        return True
    return False


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
        f"{n} removed by {r.filter} ({reason})" if reason else f"{n} removed by {r.filter}"
        for r in nvh.rejections
        if r.hosts_removed
        for reason, n in (sorted(r.reasons.items()) or [("", r.hosts_removed)])
    ]
    summary = "; ".join(parts) if parts else "no hosts are known"
    message = f"No valid host was found. {nvh.hosts_considered} hosts considered: {summary}."
    details = "; ".join(
        f"{r.filter}: " + ", ".join(f"{reason} ({n})" for reason, n in sorted(r.reasons.items()))
        for r in nvh.rejections
        if r.reasons
    )
    return message, details or nvh.message


def _strings(items: dict[str, Any] | None) -> dict[str, str]:
    """A JSON object's items as strings (what a protobuf string map carries)."""
    if not items:
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in items.items()}


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

    async def schedule(self, message: conductor_bus_pb2.ScheduleInstanceMessage) -> None:
        """Places the instance for message.attempt. Postcondition on return: the placement
        and its build command are committed, or the instance is in ERROR with a fault, or
        there was nothing to do (deleted, already placed). Raises when the scheduler is
        unreachable, so the message is redelivered."""
        (outcome,) = await self.schedule_many([message])
        if outcome is not None:
            raise outcome

    async def schedule_many(
        self,
        messages: list[conductor_bus_pb2.ScheduleInstanceMessage],
        spans: list[tracing.Span | None] | None = None,
    ) -> list[BaseException | None]:
        """`schedule` for several instances at once (at most one message per instance):
        one SELECT loads them all, the scheduler is asked for each concurrently, and ONE
        transaction records every placement (one guarded UPDATE, one outbox INSERT on
        PostgreSQL). Each message's outcome: None when settled (ack), else the error that
        stopped it (nak: redelivered, and the redelivery finds whatever was committed).

        With tracing on, `spans` holds each message's span: the build command it queues
        continues that message's trace."""
        c = self._c
        traced = spans if spans is not None and tracing.enabled() else None

        def build(
            i: int,
            host: str,
            spec: agent_bus_pb2.InstanceSpec,
            attempt: int,
            nics: nics_.Nics | None = None,
            shelved_image_id: str | None = None,
        ) -> outbox.Outgoing:
            # An unshelve builds from the shelve's snapshot, dropped once the server runs.
            command = commands.build(
                host, spec, attempt, () if nics is None else nics.dhcp, shelved_image_id or ""
            )
            if traced is None or traced[i] is None:
                return command
            return dataclasses.replace(command, traceparent=tracing.traceparent_of(traced[i]))

        outcomes: list[BaseException | None] = [None] * len(messages)
        loaded: dict[str, tuple[Instance, Image | None]] = {}
        release: list[int] = []
        choose: list[int] = []
        async with c.sessions() as session:
            loaded = await load_many_with_image(session, [m.instance_id for m in messages])
            requeued: list[outbox.Outgoing] = []
            for i, message in enumerate(messages):
                found = loaded.get(message.instance_id)
                if found is None:
                    continue
                inst, image = found
                if inst.deleted:
                    release.append(i)
                elif inst.attempts >= message.attempt:
                    # Placed already: make sure the build command is queued (a crash may have
                    # come between commit and ack); the outbox ignores a duplicate msg id.
                    if (
                        inst.task_state == TaskState.SPAWNING
                        and inst.attempts == message.attempt
                        and inst.host
                    ):
                        # The ports are bound already: binding again returns them.
                        placed_nics = await self._nics_or_none(inst, inst.host)
                        requeued.append(
                            build(
                                i,
                                inst.host,
                                nics_.with_ports(instance_spec(inst, image), placed_nics),
                                message.attempt,
                                placed_nics,
                                inst.shelved_image_id,
                            )
                        )
                elif inst.task_state == TaskState.SCHEDULING:
                    choose.append(i)
            if requeued:
                await outbox.add(session, *requeued)
            groups = await group_policies(
                session, (loaded[messages[i].instance_id][0].server_group_id for i in choose)
            )
            # Hand the connection back while the scheduler decides (commit keeps the rows
            # loaded: the session does not expire on commit); the guarded UPDATE below
            # notices anything that changed meanwhile.
            await session.commit()
        if requeued:
            c.wakeup.set()
        for i in release:
            outcomes[i] = await self._release(messages[i])

        # The scheduler's claim is keyed by consumer, so a retry returns the same host.
        # Traced: the one call for the batch is a child of its first traced message's span
        # and links to the others (a span has one parent).
        chosen_spans = [traced[i] for i in choose if traced[i] is not None] if traced else []
        batch_span = (
            tracing.start_span(
                "conductor select destinations",
                tracing.traceparent_of(chosen_spans[0]),
                {"loom.batch_size": len(choose)},
                links=chosen_spans[1:],
            )
            if chosen_spans
            else None
        )
        with tracing.current(batch_span):
            answers = await self._select_all(
                [
                    self._select_request(messages[i], *loaded[messages[i].instance_id], groups)
                    for i in choose
                ]
            )
        tracing.end(batch_span)
        placed: list[_Placement] = []
        refused: list[tuple[int, scheduler_pb2.NoValidHost]] = []
        for i, answer in zip(choose, answers, strict=True):
            if isinstance(answer, BaseException):
                outcomes[i] = answer
            elif answer.WhichOneof("outcome") != "placement":
                refused.append((i, answer.no_valid_host))
            else:
                inst, image = loaded[messages[i].instance_id]
                host = answer.placement.selected.host
                zone = (
                    inst.requested_availability_zone
                    or answer.placement.selected.availability_zone
                    or await self._zones.zone_of(host)
                )
                placed.append(
                    _Placement(
                        i,
                        inst,
                        image,
                        messages[i].attempt,
                        host,
                        answer.placement.selected.node or host,
                        zone or None,
                        [d.host for d in answer.placement.alternates],
                    )
                )
        if not placed and not refused:
            return outcomes
        # The servers' ports, bound to their hosts, before the build is recorded: the
        # build carries them. Only servers with networks ask (none asks nothing).
        placed, port_failures = await self._bind_ports(placed, outcomes)
        recorded: list[_Placement] = []
        errored = 0
        failed_ports: list[_Placement] = []
        try:
            async with c.sessions() as session:
                for i, nvh in refused:
                    errored += await _record_no_valid_host(
                        session, loaded[messages[i].instance_id][0], nvh
                    )
                for p, failure in port_failures:
                    if await _record_port_failure(session, p.inst, failure):
                        errored += 1
                        failed_ports.append(p)
                recorded = await _record_placements(session, placed)
                if recorded:
                    await outbox.add(
                        session,
                        *(
                            build(
                                p.index,
                                p.host,
                                nics_.with_ports(
                                    instance_spec(p.inst, p.image, p.zone or ""), p.nics
                                ),
                                p.attempt,
                                p.nics,
                                p.inst.shelved_image_id,
                            )
                            for p in recorded
                        ),
                    )
                await session.commit()
        except Exception as exc:
            # Nothing of this transaction is committed: every one of them is retried.
            for i in (
                [p.index for p in placed]
                + [i for i, _ in refused]
                + [p.index for p, _ in port_failures]
            ):
                outcomes[i] = exc
            return outcomes
        for p, _ in port_failures:
            # Failed: its claim goes back and no port of it is left (ERROR with a fault).
            outcomes[p.index] = await self._release(messages[p.index]) or await self._unbind(p.inst)
        BOOTS_NO_VALID_HOST.inc(errored)
        if recorded:
            c.wakeup.set()
        kept = {p.index for p in recorded}
        for p in placed:
            if p.index not in kept:
                # Deleted (or otherwise moved on) while the scheduler was choosing.
                outcomes[p.index] = await self._release(messages[p.index])
                if p.nics is not None and await self._deleted(p.inst):
                    # Its delete may have released its ports before they were bound here.
                    outcomes[p.index] = outcomes[p.index] or await self._unbind(p.inst)
        return outcomes

    async def _nics_or_none(self, inst: Instance, host: str) -> nics_.Nics | None:
        try:
            return await nics_.bind_on_host(self._c, inst, host)
        except nics_.PortsUnavailable:
            return None

    async def _bind_ports(
        self, placed: list[_Placement], outcomes: list[BaseException | None]
    ) -> tuple[list[_Placement], list[tuple[_Placement, nics_.PortsUnavailable]]]:
        """Binds each networked placement's ports to its host, concurrently. Returns the
        placements ready to record and those the network service refused; a placement
        whose call failed otherwise (unreachable) gets its error as its outcome and is
        retried, its claim kept (the scheduler's claim is keyed by instance)."""
        networked = [p for p in placed if p.inst.requested_networks]
        if not networked:
            return placed, []
        answers = await asyncio.gather(
            *(nics_.bind_on_host(self._c, p.inst, p.host) for p in networked),
            return_exceptions=True,
        )
        failed: list[tuple[_Placement, nics_.PortsUnavailable]] = []
        dropped: set[int] = set()
        for p, answer in zip(networked, answers, strict=True):
            if isinstance(answer, nics_.PortsUnavailable):
                failed.append((p, answer))
                dropped.add(p.index)
            elif isinstance(answer, BaseException):
                outcomes[p.index] = answer
                dropped.add(p.index)
            else:
                p.nics = answer
        return [p for p in placed if p.index not in dropped], failed

    async def _deleted(self, inst: Instance) -> bool:
        async with self._c.sessions() as session:
            deleted = await session.scalar(select(Instance.deleted).where(Instance.id == inst.id))
        return deleted is not False

    async def _unbind(self, inst: Instance) -> Exception | None:
        try:
            await nics_.release(self._c, inst)
        except Exception as exc:
            return exc
        return None

    def _select_request(
        self,
        message: conductor_bus_pb2.ScheduleInstanceMessage,
        inst: Instance,
        image: Image | None,
        groups: dict[str, scheduler_pb2.ServerGroupPolicy],
    ) -> scheduler_pb2.SelectDestinationsRequest:
        return scheduler_pb2.SelectDestinationsRequest(
            request_id=message.request_id,
            consumer_id=inst.uuid,
            project_id=inst.project_id,
            resources=resources_of(
                inst.vcpus, inst.memory_mb, inst.root_gb, inst.ephemeral_gb, inst.swap_mb
            ),
            availability_zone=inst.requested_availability_zone or "",
            ignore_hosts=[str(h) for h in inst.failed_hosts or []],
            num_alternates=self._c.cfg.scheduler.num_alternates,
            force_host=inst.force_host or "",
            server_group=groups.get(inst.server_group_id or ""),
            same_host=scheduler_hint(inst, "same_host"),
            different_host=scheduler_hint(inst, "different_host"),
            # For the aggregate filters (instance extra specs, image properties isolation).
            flavor_extra_specs=_strings(inst.flavor_extra_specs),
            image_properties=_strings(image.properties if image is not None else None),
        )

    async def _select_all(
        self, requests: list[scheduler_pb2.SelectDestinationsRequest]
    ) -> list[scheduler_pb2.SelectDestinationsResponse | BaseException]:
        """The scheduler's answer to each request, or the error that stopped it: one call for
        the whole batch (a failed call fails each of its requests)."""
        if not requests:
            return []
        try:
            results = await self._c.scheduler.select_destinations_batch(requests)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                return [exc] * len(requests)
            # A scheduler older than this conductor (a rolling upgrade): one call each.
            return await asyncio.gather(
                *(self._c.scheduler.select_destinations(r) for r in requests),
                return_exceptions=True,
            )
        except Exception as exc:
            return [exc] * len(requests)
        return [
            r.response
            if r.WhichOneof("result") == "response"
            else InvalidSchedulingRequest(r.invalid_argument)
            for r in results
        ]

    async def _release(
        self, message: conductor_bus_pb2.ScheduleInstanceMessage
    ) -> Exception | None:
        try:
            await self._c.scheduler.release(f"{message.request_id}-release", message.instance_id)
        except Exception as exc:
            return exc
        return None

    def _log_failure(
        self, message: conductor_bus_pb2.ScheduleInstanceMessage, exc: BaseException
    ) -> None:
        if isinstance(exc, grpc.aio.AioRpcError):
            log.warning(
                "scheduler call failed; will retry: %s",
                exc.code(),
                extra={"instance": message.instance_id},
            )
        else:
            log.error(
                "scheduling failed; will retry: %r",
                exc,
                exc_info=exc,
                extra={"instance": message.instance_id},
            )

    async def _handle_batch(self, msgs: list[Msg]) -> None:
        decoded: list[tuple[Msg, conductor_bus_pb2.ScheduleInstanceMessage]] = []
        for msg in msgs:
            try:
                decoded.append(
                    (msg, conductor_bus_pb2.ScheduleInstanceMessage.FromString(msg.data))
                )
            except Exception:
                log.error("dropping an undecodable schedule message")
                await msg.term()
        # One message per instance per round: a second one (another attempt) is handled
        # after the first has settled, as one at a time would.
        rounds: list[list[tuple[Msg, conductor_bus_pb2.ScheduleInstanceMessage]]] = []
        for item in decoded:
            for r in rounds:
                if all(m.instance_id != item[1].instance_id for _, m in r):
                    r.append(item)
                    break
            else:
                rounds.append([item])
        for r in rounds:
            # Traced: a span per message, a child of the span that queued it.
            spans = tracing.consumer_spans("conductor schedule", [msg.headers for msg, _ in r])
            for s, (_, message) in zip(spans, r, strict=True):
                if s is not None:
                    s.set_attribute("loom.instance_id", message.instance_id)
                    s.set_attribute("loom.attempt", message.attempt)
            try:
                outcomes = await self.schedule_many([m for _, m in r], spans)
            except Exception as exc:  # the database, before anything was decided
                outcomes = [exc] * len(r)
            for (msg, message), outcome, s in zip(r, outcomes, spans, strict=True):
                if outcome is None:
                    await msg.ack()
                else:
                    self._log_failure(message, outcome)
                    await msg.nak(delay=1.0)
                tracing.end(s, outcome)

    async def run(self, stop: asyncio.Event, lanes: int = 1) -> None:
        """Consumes until stop is set; survives NATS outages (fetch retries).

        With lanes > 1, that many batches are in hand at once, each fetched on a pull
        subscription of its own from the shared durable consumer: while one batch waits
        on the database or the scheduler, the next is already being placed. Lanes are to
        one conductor what several conductors are to the fleet, and as safe: every
        placement is a guarded UPDATE and every claim is keyed by its instance."""

        async def lane() -> None:
            sub = await subscribe_shared(
                self._js,
                commands.SCHEDULE_SUBJECT,
                DURABLE,
                bus.CONDUCTOR_STREAM,
                ack_wait=self._c.cfg.nats.ack_wait_s or SHARED_ACK_WAIT_S,
            )
            faults = BusFaults.from_config(self._c.cfg.nats)
            await consume(
                sub,
                stop,
                self._batch,
                self._handle_batch,
                faults,
                DURABLE,
                ack_wait=self._c.cfg.nats.ack_wait_s or SHARED_ACK_WAIT_S,
            )

        await asyncio.gather(*(lane() for _ in range(max(1, lanes))))


# How long a message one conductor took stays its own without an answer. A conductor that
# dies holding messages (SIGKILL, a lost machine) gives them back to the other replicas
# after this long; a batch still being handled says so every third of it (in_progress).
SHARED_ACK_WAIT_S = 10.0


async def subscribe_shared(
    js: JetStreamContext,
    subject: str,
    durable: str,
    stream: str,
    *,
    ack_wait: float = SHARED_ACK_WAIT_S,
) -> JetStreamContext.PullSubscription:
    """A pull subscription on a durable consumer the conductor replicas share. The consumer
    is created, or updated to this configuration (one made with another ack_wait by an
    older conductor is brought to `ack_wait`: SHARED_ACK_WAIT_S unless `nats.ack_wait_s`
    sets one)."""
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=durable,
            filter_subject=subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_ack_pending=-1,
        ),
    )
    return await js.pull_subscribe(subject, durable=durable, stream=stream)


async def _report_progress(msgs: list[Msg], ack_wait: float) -> None:
    """Tells JetStream every third of the ack wait that a batch is still being handled."""
    while True:
        await asyncio.sleep(ack_wait / 3)
        for msg in msgs:
            if not msg._ackd:
                with contextlib.suppress(Exception):
                    await msg.in_progress()


async def consume(
    sub: JetStreamContext.PullSubscription,
    stop: asyncio.Event,
    batch: int,
    handle: Any,
    faults: BusFaults | None = None,
    consumer: str = "",
    ack_wait: float = SHARED_ACK_WAIT_S,
) -> None:
    """Fetches batches until stop is set; an outage only pauses it. Each batch passes
    through `faults` (redeliveries counted under `consumer`; chaos faults when on)."""
    faults = faults or BusFaults()
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
        progress = asyncio.create_task(_report_progress(msgs, ack_wait))
        try:
            await handle(faults.apply(consumer, msgs))
        finally:
            progress.cancel()
