"""The instance-event consumer: what agents report becomes the instance's state.

A durable pull consumer (`conductor-events`, shared by conductor replicas) reads
`loom.events.instance.*`. Every handler is guarded by the state it expects (host, attempt,
task), so a redelivered or stale event changes nothing more; an event is acked only after
its effect is committed. Events of one instance are handled in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import grpc
from loom.compute.v1 import agent_bus_pb2
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy import DateTime, Integer, String, column, false, select, update, values
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.conductor import commands, moves, nics, outbox, states
from controlplane.conductor.context import Conductor, group_policies, resources_of
from controlplane.conductor.convert import instance_spec, make_fault
from controlplane.conductor.metrics import BOOTS_ACTIVE, BOOTS_ERROR, BOOTS_RESCHEDULED
from controlplane.conductor.scheduling import (
    INSTANCES,
    SHARED_ACK_WAIT_S,
    consume,
    load_with_image,
    record_event,
    subscribe_shared,
)
from controlplane.conductor.states import PowerState, TaskState, VmState
from controlplane.db.dialect import as_utc as aware
from controlplane.db.models import Instance, InstanceAction
from controlplane.runtime import bus, tracing
from controlplane.runtime.busfaults import BusFaults

log = logging.getLogger(__name__)

DURABLE = "conductor-events"
K = agent_bus_pb2.InstanceEventKind

_ACTION_TASKS = {
    # A restore powers on, a soft delete powers off.
    "start": {TaskState.POWERING_ON.value, TaskState.RESTORING.value},
    "stop": {TaskState.POWERING_OFF.value, TaskState.SOFT_DELETING.value},
    "reboot": {TaskState.REBOOTING.value, TaskState.REBOOTING_HARD.value},
    **{verb: {a.task.value} for verb, a in states.SIMPLE_ACTIONS.items()},
    "rebuild": set(states.REBUILD_TASKS),
    "snapshot": {TaskState.IMAGE_SNAPSHOT.value, TaskState.IMAGE_BACKUP.value},
}


# The request id of an offload the conductor started on its own (shelved_offload_time),
# whose events belong to the shelve action.
AUTO_OFFLOAD = "auto-"


# The instance action (and event name) a power command answers for, by the task it ran in.
_ACTION_BY_TASK = {
    TaskState.SOFT_DELETING.value: ("delete", "compute_soft_delete_instance"),
    TaskState.RESTORING.value: ("restore", "compute_restore_instance"),
    TaskState.IMAGE_BACKUP.value: ("createBackup", "compute_backup_instance"),
}


def _action_of(verb: str, command_id: str) -> str:
    """The instance action an answer belongs to: an offload nobody asked for is the
    shelve's last step."""
    if verb == "shelve_offload" and f"-{AUTO_OFFLOAD}" in command_id:
        return "shelve"
    if verb == "snapshot":
        return "createImage"
    return verb


def _when(event: agent_bus_pb2.InstanceEvent) -> datetime:
    if event.HasField("occurred_at"):
        return aware(event.occurred_at.ToDatetime())
    return datetime.now(UTC)


class EventConsumer:
    def __init__(self, conductor: Conductor, js: JetStreamContext, *, batch: int = 128) -> None:
        self._c = conductor
        self._js = js
        self._batch = batch

    async def handle(self, event: agent_bus_pb2.InstanceEvent) -> None:
        """Applies one event; idempotent. Raises when the effect could not be made durable
        (database or scheduler unreachable), so the event is redelivered."""
        if event.migration_id:
            # A step of a move (resize, migration): moves.py owns that protocol.
            await moves.handle_event(self._c, event)
            return
        handlers = {
            K.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED: self._build_succeeded,
            K.INSTANCE_EVENT_KIND_BUILD_FAILED: self._build_failed,
            K.INSTANCE_EVENT_KIND_DELETED: self._deleted,
            K.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED: self._action_finished,
            K.INSTANCE_EVENT_KIND_ACTION_FAILED: self._action_finished,
            K.INSTANCE_EVENT_KIND_POWER_STATE_CHANGED: self._power_changed,
            K.INSTANCE_EVENT_KIND_MISSING: self._missing,
            K.INSTANCE_EVENT_KIND_REBUILD_SPAWNING: self._rebuild_spawning,
        }
        handler = handlers.get(event.kind)
        if handler is None:
            log.warning("ignoring an instance event of unknown kind %s", event.kind)
            return
        await handler(event)

    # ------------------------------------------------------------------ builds

    async def _build_succeeded(self, event: agent_bus_pb2.InstanceEvent) -> None:
        """building/spawning on this host for this attempt → active, running, launched_at.
        A build that finished for a server deleted meanwhile gets a delete to that host."""
        async with self._c.sessions() as session:
            # The common case in one statement: the guard is the WHERE clause.
            result = await session.execute(
                update(Instance)
                .where(
                    Instance.uuid == event.instance_id,
                    Instance.host == event.host,
                    Instance.attempts == event.attempt,
                    Instance.vm_state == VmState.BUILDING.value,
                    Instance.task_state == TaskState.SPAWNING.value,
                    Instance.deleted.is_(False),
                )
                .values(
                    vm_state=VmState.ACTIVE.value,
                    task_state=None,
                    power_state=int(PowerState.RUNNING),
                    launched_at=_when(event),
                    updated_at=datetime.now(UTC),
                )
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                await session.commit()
                BOOTS_ACTIVE.inc()
                return
            if await self._unshelved(session, event):
                await session.commit()
                return
            loaded = await load_with_image(session, event.instance_id)
            if loaded is None:
                return
            inst = loaded[0]
            gone = inst.deleted or inst.task_state == TaskState.DELETING
            elsewhere = inst.host != event.host
            # Given up on this host (it went down) while the build was in hand there.
            abandoned = inst.task_state == TaskState.SCHEDULING and inst.vm_state in (
                VmState.BUILDING,
                VmState.SHELVED_OFFLOADED,
            )
            if gone or elsewhere or abandoned:
                # The domain runs where nobody wants it: remove it (the agent's delete
                # succeeds if it is already gone). Keyed by this event, so a redelivered
                # event queues nothing new and another late build gets its own delete.
                await outbox.add(
                    session,
                    commands.delete(event.host, event.instance_id, after=event.request_id),
                )
                await session.commit()
                self._c.wakeup.set()

    async def _unshelved(self, session: AsyncSession, event: agent_bus_pb2.InstanceEvent) -> bool:
        """An offloaded server built again by this attempt on this host becomes active; True
        when this event did that (the caller commits)."""
        result = await session.execute(
            update(Instance)
            .where(
                Instance.uuid == event.instance_id,
                Instance.host == event.host,
                Instance.attempts == event.attempt,
                Instance.vm_state == VmState.SHELVED_OFFLOADED.value,
                Instance.task_state == TaskState.SPAWNING.value,
                Instance.deleted.is_(False),
            )
            .values(
                vm_state=VmState.ACTIVE.value,
                task_state=None,
                power_state=int(PowerState.RUNNING),
                launched_at=_when(event),
                shelved_at=None,
                # The agent dropped the shelve's snapshot once the server ran.
                shelved_image_id=None,
                updated_at=datetime.now(UTC),
            )
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        await record_event(
            session,
            event.instance_id,
            "unshelve",
            "compute_unshelve_instance",
            "Success",
            host=event.host,
        )
        return True

    async def _build_failed(self, event: agent_bus_pb2.InstanceEvent) -> None:
        """Releases this attempt's claim (the scheduler releases exactly once), then tries the
        next alternate, or reschedules, or (attempts used up) puts the server in ERROR."""
        c = self._c
        async with c.sessions() as session:
            loaded = await load_with_image(session, event.instance_id)
            if loaded is None:
                return
            inst, image = loaded
            if (
                inst.deleted
                or inst.host != event.host
                or inst.attempts != event.attempt
                or inst.task_state != TaskState.SPAWNING
            ):
                return  # stale or redelivered: this attempt was settled already
            await session.commit()  # no connection held across the scheduler calls
            await c.scheduler.release(f"{event.request_id}-release", inst.uuid, event.host)
            failed = [*(str(h) for h in inst.failed_hosts or []), event.host]
            guard = (
                Instance.id == inst.id,
                Instance.deleted.is_(False),
                Instance.host == event.host,
                Instance.attempts == inst.attempts,
                Instance.task_state == TaskState.SPAWNING.value,
            )
            now = datetime.now(UTC)
            fault = event.fault if event.HasField("fault") else None
            reason = fault.message if fault is not None and fault.message else "Build failed"
            unshelving = inst.vm_state == VmState.SHELVED_OFFLOADED
            await record_event(
                session,
                inst.uuid,
                "unshelve" if unshelving else "create",
                "compute_unshelve_instance" if unshelving else "compute_build_and_run_instance",
                "Error",
                host=event.host,
                details=reason,
            )
            next_attempt = inst.attempts + 1
            if inst.attempts < c.cfg.conductor.max_build_attempts:
                resources = resources_of(
                    inst.vcpus, inst.memory_mb, inst.root_gb, inst.ephemeral_gb, inst.swap_mb
                )
                alternates = [str(h) for h in inst.alternates or [] if str(h) not in failed]
                group = (await group_policies(session, [inst.server_group_id])).get(
                    inst.server_group_id or ""
                )
                while alternates:
                    alt = alternates.pop(0)
                    claim = await c.scheduler.claim(
                        f"claim-{inst.uuid}-{next_attempt}",
                        inst.uuid,
                        inst.project_id,
                        resources,
                        alt,
                        group,
                    )
                    if not claim.claimed:
                        continue
                    # Its ports move to the alternate before its build is queued there.
                    try:
                        alt_nics = await nics.bind_on_host(c, inst, alt)
                    except (nics.PortsUnavailable, grpc.aio.AioRpcError) as exc:
                        log.warning(
                            "could not bind the ports on alternate %s: %s",
                            alt,
                            exc,
                            extra={"instance": inst.uuid},
                        )
                        await c.scheduler.release(
                            f"claim-{inst.uuid}-{next_attempt}-undo", inst.uuid, alt
                        )
                        break
                    networked: dict[str, Any] = (
                        {}
                        if alt_nics is None
                        else {
                            "network_info": alt_nics.network_info,
                            "addresses": alt_nics.addresses,
                        }
                    )
                    moved = await session.execute(
                        update(Instance)
                        .where(*guard)
                        .values(
                            host=alt,
                            node=alt,
                            attempts=next_attempt,
                            failed_hosts=failed,
                            alternates=alternates,
                            updated_at=now,
                            **networked,
                        )
                    )
                    if moved.rowcount != 1:  # type: ignore[attr-defined]
                        await session.rollback()
                        await c.scheduler.release(
                            f"claim-{inst.uuid}-{next_attempt}-undo", inst.uuid, alt
                        )
                        return
                    inst.host = alt
                    await outbox.add(
                        session,
                        commands.build(
                            alt,
                            nics.with_ports(instance_spec(inst, image), alt_nics),
                            next_attempt,
                            () if alt_nics is None else alt_nics.dhcp,
                            inst.shelved_image_id or "",
                        ),
                    )
                    await session.commit()
                    BOOTS_RESCHEDULED.inc()
                    c.wakeup.set()
                    return
                # No alternate could take it: ask the scheduler afresh, failed hosts ignored.
                await session.execute(
                    update(Instance)
                    .where(*guard)
                    .values(
                        host=None,
                        node=None,
                        task_state=TaskState.SCHEDULING.value,
                        failed_hosts=failed,
                        alternates=[],
                        updated_at=now,
                    )
                )
                await outbox.add(session, commands.schedule(inst.uuid, next_attempt))
                await session.commit()
                BOOTS_RESCHEDULED.inc()
                c.wakeup.set()
                return
            text = (
                f"Build of instance {inst.uuid} aborted: exceeded maximum number of build "
                f"attempts ({c.cfg.conductor.max_build_attempts}). Last failure: {reason}"
            )
            failed_for_good = await session.execute(
                update(Instance)
                .where(*guard)
                .values(
                    vm_state=VmState.ERROR.value,
                    task_state=None,
                    host=None,
                    node=None,
                    failed_hosts=failed,
                    alternates=[],
                    fault=make_fault(
                        fault.code if fault is not None and fault.code else 500,
                        text,
                        fault.details if fault is not None else "",
                    ),
                    updated_at=now,
                )
            )
            await session.commit()
            if failed_for_good.rowcount == 1:  # type: ignore[attr-defined]
                BOOTS_ERROR.inc()

    # ------------------------------------------------------------------ deletes

    async def _deleted(self, event: agent_bus_pb2.InstanceEvent) -> None:
        """The domain is gone from the host: release the claim, mark the server deleted and
        finish the delete action. A server that lives on another host is left alone."""
        c = self._c
        async with c.sessions() as session:
            loaded = await load_with_image(session, event.instance_id)
            if loaded is None:
                return
            inst = loaded[0]
            # Only a delete of the server where it lives finishes it: a host it left (a build
            # given up there, a local delete) also answers delete commands, and a server
            # being rescheduled has no host at all.
            if inst.deleted or inst.host != event.host:
                return
            await session.commit()
            await c.scheduler.release(f"{event.request_id}-release", inst.uuid)
            # Its ports go before the row says deleted: a failure retries the event.
            await nics.release(c, inst)
            await _mark_deleted(session, inst, _when(event))
            await session.commit()

    # ------------------------------------------------------------------ power

    async def _action_finished(self, event: agent_bus_pb2.InstanceEvent) -> None:
        """Settles an action on the host (start, stop, reboot, pause, unpause, suspend,
        resume, shelve, shelve_offload, unshelve, rebuild): task cleared, vm and power state
        from the outcome."""
        async with self._c.sessions() as session:
            loaded = await load_with_image(session, event.instance_id)
            if loaded is None:
                return
            inst = loaded[0]
            verb = event.action
            if (
                inst.deleted
                or inst.host != event.host
                or inst.task_state not in _ACTION_TASKS.get(verb, set())
            ):
                return
            ok = event.kind == K.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED
            if ok and verb == "shelve_offload":
                await self._offloaded(session, inst, event)
                return
            vm_state, power = states.after_action(verb, ok, int(event.power_state))
            if verb == "snapshot":
                # A snapshot leaves the server as it was, whether or not it succeeded (a
                # failure's image is left queued without data, and says so in the event).
                vm_state, power = VmState(inst.vm_state), int(event.power_state)
            if inst.task_state == TaskState.SOFT_DELETING:
                # Deleted for its owner whatever the power-off did; the reclaim deletes it.
                vm_state = VmState.SOFT_DELETED
            values: dict[str, Any] = {
                "vm_state": vm_state.value,
                "task_state": None,
                "power_state": int(power),
                "updated_at": datetime.now(UTC),
            }
            if not ok and vm_state is VmState.ERROR:
                fault = event.fault
                values["fault"] = make_fault(
                    fault.code or 500, fault.message or f"{verb} failed", fault.details
                )
            if verb == "unshelve" and ok:
                values["shelved_image_id"] = None  # dropped by the agent once it ran
            if verb == "shelve" and not ok:
                values["shelved_image_id"] = None  # the failed snapshot's image is deleted
            offload_now = False
            if ok and verb == "shelve":
                values["shelved_at"] = datetime.now(UTC)
                # shelved_offload_time 0: the offload follows as part of the shelve.
                offload_now = self._c.cfg.conductor.shelved_offload_time == 0
                if offload_now:
                    values["task_state"] = TaskState.SHELVING_OFFLOADING.value
            changed = await session.execute(
                update(Instance)
                .where(Instance.id == inst.id, Instance.task_state == inst.task_state)
                .values(**values)
            )
            if offload_now and changed.rowcount == 1:  # type: ignore[attr-defined]
                await outbox.add(
                    session,
                    commands.simple(
                        "shelve_offload", event.host, inst.uuid, f"{AUTO_OFFLOAD}{event.request_id}"
                    ),
                )
            action, event_name = _ACTION_BY_TASK.get(
                str(inst.task_state),
                (_action_of(verb, event.request_id), f"compute_{verb}_instance"),
            )
            await record_event(
                session,
                inst.uuid,
                action,
                event_name,
                "Success" if ok else "Error",
                host=event.host,
                details="" if ok else event.fault.message,
            )
            await session.commit()
            if offload_now:
                self._c.wakeup.set()

    async def _offloaded(
        self, session: AsyncSession, inst: Instance, event: agent_bus_pb2.InstanceEvent
    ) -> None:
        """The host removed a shelved server: its claim there is released (exactly once, by
        the scheduler), then the server rests on no host. A redelivered event finds the
        server no longer offloading from this host and changes nothing."""
        await session.commit()  # no connection held across the scheduler call
        await self._c.scheduler.release(f"{event.request_id}-release", inst.uuid, event.host)
        result = await session.execute(
            update(Instance)
            .where(
                Instance.id == inst.id,
                Instance.host == event.host,
                Instance.task_state == TaskState.SHELVING_OFFLOADING.value,
            )
            .values(
                vm_state=VmState.SHELVED_OFFLOADED.value,
                task_state=None,
                power_state=int(PowerState.NOSTATE),
                host=None,
                node=None,
                updated_at=datetime.now(UTC),
            )
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            await record_event(
                session,
                inst.uuid,
                _action_of("shelve_offload", event.request_id),
                "compute_shelve_offload_instance",
                "Success",
                host=event.host,
            )
        await session.commit()

    async def _rebuild_spawning(self, event: agent_bus_pb2.InstanceEvent) -> None:
        """The host started on the rebuild: rebuilding → rebuild_spawning (once)."""
        async with self._c.sessions() as session:
            await session.execute(
                update(Instance)
                .where(
                    Instance.uuid == event.instance_id,
                    Instance.host == event.host,
                    Instance.task_state == TaskState.REBUILDING.value,
                    Instance.deleted.is_(False),
                )
                .values(task_state=TaskState.REBUILD_SPAWNING.value, updated_at=datetime.now(UTC))
            )
            await session.commit()

    async def _power_changed(self, event: agent_bus_pb2.InstanceEvent) -> None:
        """Records the power state; an active server with no task found shut down becomes
        stopped (Nova's power sync)."""
        async with self._c.sessions() as session:
            loaded = await load_with_image(session, event.instance_id)
            if loaded is None:
                return
            inst = loaded[0]
            if inst.deleted or inst.host != event.host:
                return
            power = int(event.power_state)
            new_vm = states.power_sync(inst.vm_state, inst.task_state, power)
            if new_vm is None and inst.power_state == power:
                return
            values: dict[str, Any] = {"power_state": power, "updated_at": datetime.now(UTC)}
            if new_vm is not None:
                values["vm_state"] = new_vm.value
            await session.execute(
                update(Instance)
                .where(
                    Instance.id == inst.id,
                    Instance.vm_state == inst.vm_state,
                    Instance.task_state.is_(None)
                    if inst.task_state is None
                    else Instance.task_state == inst.task_state,
                )
                .values(**values)
            )
            await session.commit()

    async def _missing(self, event: agent_bus_pb2.InstanceEvent) -> None:
        """The host has no domain for the server. While deleting, that is the delete done;
        otherwise the server goes to ERROR with a fault (once)."""
        c = self._c
        async with c.sessions() as session:
            loaded = await load_with_image(session, event.instance_id)
            if loaded is None:
                return
            inst = loaded[0]
            if inst.deleted or inst.host != event.host:
                return
            if inst.task_state == TaskState.DELETING:
                await session.commit()
                await c.scheduler.release(f"{event.request_id}-release", inst.uuid)
                await nics.release(c, inst)
                await _mark_deleted(session, inst, _when(event))
                await session.commit()
                return
            if inst.vm_state == VmState.ERROR and inst.task_state is None:
                return
            fault = event.fault
            await session.execute(
                update(Instance)
                .where(Instance.id == inst.id, Instance.vm_state == inst.vm_state)
                .values(
                    vm_state=VmState.ERROR.value,
                    task_state=None,
                    power_state=int(PowerState.NOSTATE),
                    fault=make_fault(
                        fault.code or 500,
                        fault.message or f"Instance {inst.uuid} is missing from host {event.host}",
                        fault.details,
                    ),
                    updated_at=datetime.now(UTC),
                )
            )
            await session.commit()

    # ------------------------------------------------------------------ consuming

    async def _handle_msg(self, msg: Msg) -> bool:
        try:
            event = agent_bus_pb2.InstanceEvent.FromString(msg.data)
        except Exception:
            log.error("dropping an undecodable instance event")
            await msg.term()
            return True
        try:
            await self.handle(event)
        except Exception:
            log.exception(
                "instance event failed; will retry", extra={"instance": event.instance_id}
            )
            await msg.nak(delay=1.0)
            return False
        await msg.ack()
        return True

    async def builds_succeeded(self, events: list[agent_bus_pb2.InstanceEvent]) -> set[str]:
        """The common case of many BUILD_SUCCEEDED events in ONE guarded UPDATE … FROM
        (VALUES …): each row is changed only under the guard `_build_succeeded` checks (this
        host, this attempt, building/spawning, not deleted). Returns the instance ids it
        changed, committed; the caller sends every other event down the one-at-a-time path,
        which handles what the guard let through (a build for a server deleted meanwhile…).

        At most one event per instance (the caller takes the first of each). PostgreSQL only:
        on other databases nothing is applied here."""
        if not events:
            return set()
        async with self._c.sessions() as session:
            if session.get_bind().dialect.name != "postgresql":
                return set()
            v = values(
                column("uuid", String),
                column("host", String),
                column("attempt", Integer),
                column("launched_at", DateTime(timezone=True)),
                name="ev",
            ).data([(e.instance_id, e.host, e.attempt, _when(e)) for e in events])
            t = INSTANCES
            result = await session.execute(
                update(t)
                .where(
                    t.c.uuid == v.c.uuid,
                    t.c.host == v.c.host,
                    t.c.attempts == v.c.attempt,
                    t.c.vm_state == VmState.BUILDING.value,
                    t.c.task_state == TaskState.SPAWNING.value,
                    t.c.deleted == false(),
                )
                .values(
                    vm_state=VmState.ACTIVE.value,
                    task_state=None,
                    power_state=int(PowerState.RUNNING),
                    launched_at=v.c.launched_at,
                    updated_at=datetime.now(UTC),
                )
                .returning(t.c.uuid)
            )
            applied = {str(u) for u in result.scalars()}
            await session.commit()
        BOOTS_ACTIVE.inc(len(applied))
        return applied

    async def deletes_done(self, events: list[agent_bus_pb2.InstanceEvent]) -> set[str]:
        """`_deleted` for several DELETED events (at most one per instance): ONE SELECT
        reads the instances, their claims are released concurrently, then ONE transaction
        marks them deleted (one guarded UPDATE … FROM (VALUES …)) and finishes their delete
        actions. Returns the instance ids whose event is settled, committed: applied, or
        nothing to do (unknown, deleted already, on another host). An event whose release
        failed is left to the one-at-a-time path. PostgreSQL only, as `builds_succeeded`."""
        c = self._c
        t = INSTANCES
        async with c.sessions() as session:
            if not events or session.get_bind().dialect.name != "postgresql":
                return set()
            rows = (
                await session.execute(
                    select(
                        t.c.uuid, t.c.host, t.c.deleted, t.c.project_id, t.c.requested_networks
                    ).where(t.c.uuid.in_([e.instance_id for e in events]))
                )
            ).all()
        current = {str(r.uuid): (r.host, bool(r.deleted)) for r in rows}
        networked = {
            str(r.uuid): Instance(
                uuid=r.uuid, project_id=r.project_id, requested_networks=r.requested_networks
            )
            for r in rows
            if r.requested_networks
        }
        settled: set[str] = set()
        due: list[agent_bus_pb2.InstanceEvent] = []
        for e in events:
            host, deleted = current.get(e.instance_id, (None, True))
            # Only a delete of the server where it lives finishes it (see `_deleted`).
            if e.instance_id not in current or deleted or host != e.host:
                settled.add(e.instance_id)
            else:
                due.append(e)
        released = await asyncio.gather(
            *(c.scheduler.release(f"{e.request_id}-release", e.instance_id) for e in due),
            return_exceptions=True,
        )
        due = [e for e, r in zip(due, released, strict=True) if not isinstance(r, BaseException)]
        # Their ports go before the rows say deleted (a server with no network asks
        # nothing); one whose ports could not be released is left for the retry.
        unbound = await asyncio.gather(
            *(nics.release(c, networked[e.instance_id]) for e in due if e.instance_id in networked),
            return_exceptions=True,
        )
        failed = {
            e.instance_id
            for e, r in zip([e for e in due if e.instance_id in networked], unbound, strict=True)
            if isinstance(r, BaseException)
        }
        due = [e for e in due if e.instance_id not in failed]
        if not due:
            return settled
        now = datetime.now(UTC)
        v = values(
            column("uuid", String), column("terminated_at", DateTime(timezone=True)), name="gone"
        ).data([(e.instance_id, _when(e)) for e in due])
        async with c.sessions() as session:
            await session.execute(
                update(t)
                .where(t.c.uuid == v.c.uuid, t.c.deleted == false())
                .values(
                    deleted=True,
                    vm_state=VmState.DELETED.value,
                    task_state=None,
                    power_state=int(PowerState.NOSTATE),
                    terminated_at=v.c.terminated_at,
                    deleted_at=now,
                    updated_at=now,
                )
            )
            await session.execute(
                update(InstanceAction)
                .where(
                    InstanceAction.instance_uuid.in_([e.instance_id for e in due]),
                    InstanceAction.action == "delete",
                    InstanceAction.finish_time.is_(None),
                )
                .values(finish_time=now, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            await session.commit()
        return settled | {e.instance_id for e in due}

    async def _apply_leading(
        self,
        groups: dict[bytes, list[tuple[Msg, agent_bus_pb2.InstanceEvent | None]]],
        kind: agent_bus_pb2.InstanceEventKind.ValueType,
        apply: Any,
    ) -> None:
        """Hands each group's first event, when of `kind`, to the batched `apply`; acks and
        removes those it settled. Everything else stays for the one-at-a-time path, in
        order behind them."""
        leading = [
            group[0][1]
            for group in groups.values()
            if group[0][1] is not None and group[0][1].kind == kind
        ]
        if len(leading) < 2:
            return
        try:
            settled: set[str] = await apply(leading)
        except Exception as exc:  # left to the one-at-a-time path, which retries or naks
            log.warning("batched instance events failed, handling them one by one: %s", exc)
            return
        for key in list(groups):
            group = groups[key]
            first = group[0][1]
            if first is not None and first.kind == kind and first.instance_id in settled:
                await group[0][0].ack()
                del group[0]
                if not group:
                    del groups[key]

    async def _handle_batch(self, msgs: list[Msg]) -> None:
        # One instance's events in order; different instances in parallel.
        decoded: dict[bytes, list[tuple[Msg, agent_bus_pb2.InstanceEvent | None]]] = defaultdict(
            list
        )
        for m in msgs:
            event: agent_bus_pb2.InstanceEvent | None
            try:
                event = agent_bus_pb2.InstanceEvent.FromString(m.data)
                key = event.instance_id.encode()
            except Exception:
                event, key = None, b""
            decoded[key].append((m, event))
        # Traced: a span per event, a child of the agent's span that published it, ended
        # when the whole batch is settled.
        spans = tracing.consumer_spans("conductor instance event", [m.headers for m in msgs])
        span_of = {id(m): sp for m, sp in zip(msgs, spans, strict=True) if sp is not None}
        for group in decoded.values() if span_of else ():
            for m, event in group:
                sp = span_of.get(id(m))
                if sp is not None and event is not None:
                    sp.set_attribute("loom.instance_id", event.instance_id)
                    sp.set_attribute("loom.event", K.Name(event.kind))
        try:
            await self._settle_batch(decoded, span_of)
        finally:
            tracing.end(spans)

    async def _settle_batch(
        self,
        decoded: dict[bytes, list[tuple[Msg, agent_bus_pb2.InstanceEvent | None]]],
        span_of: dict[int, tracing.Span],
    ) -> None:
        # The bulk of a storm: builds that succeeded, then domains deleted; each kind in
        # one batched transaction when it leads its instance's events.
        await self._apply_leading(
            decoded, K.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED, self.builds_succeeded
        )
        await self._apply_leading(decoded, K.INSTANCE_EVENT_KIND_DELETED, self.deletes_done)
        by_instance = {k: [m for m, _ in g] for k, g in decoded.items()}

        async def in_order(group: list[Msg]) -> None:
            for i, m in enumerate(group):
                with tracing.current(span_of.get(id(m))):
                    handled = await self._handle_msg(m)
                if not handled:
                    # Later events of this instance wait for the failed one's redelivery.
                    for later in group[i + 1 :]:
                        await later.nak(delay=1.0)
                    return

        await asyncio.gather(*(in_order(g) for g in by_instance.values()))

    async def run(self, stop: asyncio.Event) -> None:
        sub = await subscribe_shared(
            self._js,
            bus.INSTANCE_EVENT_WILDCARD,
            DURABLE,
            bus.EVENTS_STREAM,
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


async def _mark_deleted(session: AsyncSession, inst: Instance, when: datetime) -> None:
    now = datetime.now(UTC)
    await session.execute(
        update(Instance)
        .where(Instance.id == inst.id, Instance.deleted.is_(False))
        .values(
            deleted=True,
            vm_state=VmState.DELETED.value,
            task_state=None,
            power_state=int(PowerState.NOSTATE),
            terminated_at=when,
            deleted_at=now,
            updated_at=now,
        )
    )
    await session.execute(
        update(InstanceAction)
        .where(
            InstanceAction.instance_uuid == inst.uuid,
            InstanceAction.action == "delete",
            InstanceAction.finish_time.is_(None),
        )
        .values(finish_time=now, updated_at=now)
    )
