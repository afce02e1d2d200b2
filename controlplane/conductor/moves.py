"""Moving a server between hosts: resize and cold migration, confirm and revert.

The allocations, at each step (the scheduler's consumers; `M` is the migration's uuid):

    start        instance ─source─► M         (MoveAllocations: usage unchanged)
                 instance claims the destination with the new flavor (SelectDestinations)
    VERIFY_RESIZE  source: M (old flavor)     destination: instance (new flavor)
    confirm      M released                   → only the destination remains
    revert       instance released on dest, then M ─source─► instance
    failure      (no host, source or destination failed, destination host down)
                 as a revert: the destination claim released, M handed back to the instance

So both hosts hold the instance's resources while it is in flight, and neither is ever
over-committed: every claim is the scheduler's atomic write. Every step is idempotent
(MoveAllocations and ReleaseResources are), and each state change is one guarded UPDATE
that commits with the command it implies (outbox), so a redelivered event changes nothing
more.

The agents' part, on subjects `loom.compute.<host>.move_*` (MoveInstanceCommand):

    source  move_stop_source     power off, keep the domain and disks
    dest    move_finish_dest     define with the new flavor (and the disks), start if it ran
    source  move_drop            after a confirm: destroy what is left
    dest    move_drop            after a revert: destroy the destination's copy
    source  move_restore_source  after a revert or a failure: start again if it ran
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from loom.compute.v1 import agent_bus_pb2
from loom.scheduler.v1 import scheduler_pb2
from sqlalchemy import Select, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.catalog.quotas import load_project_quota
from controlplane.conductor import nics, outbox, states
from controlplane.conductor.context import (
    Conductor,
    group_policies,
    resources_of,
    scheduler_hint,
)
from controlplane.conductor.convert import instance_spec, make_fault
from controlplane.conductor.outbox import Outgoing
from controlplane.conductor.scheduling import load_with_image, record_event
from controlplane.conductor.servers.actions import check_lock
from controlplane.conductor.servers.query import load_instance
from controlplane.conductor.states import PowerState, TaskState, VmState
from controlplane.db.dialect import as_utc
from controlplane.db.models import Flavor, Instance, InstanceAction, Migration
from controlplane.runtime import bus
from controlplane.runtime.errors import Conflict, InvalidArgument, NotFound

log = logging.getLogger(__name__)

K = agent_bus_pb2.InstanceEventKind

RESIZE = "resize"
MIGRATION = "migration"
LIVE = "live-migration"
# Rebuilding a server of a down host elsewhere (evacuate.py owns that protocol).
EVACUATION = "evacuation"

# Migration statuses (the API's own words).
PRE_MIGRATING = "pre-migrating"
MIGRATING = "migrating"
POST_MIGRATING = "post-migrating"
FINISHED = "finished"
CONFIRMING = "confirming"
CONFIRMED = "confirmed"
REVERTING = "reverting"
REVERTED = "reverted"
ERROR = "error"
FAILED = "failed"
# A live migration: the destination starts the server, then the source drops it.
PREPARING = "preparing"
COMPLETED = "completed"
# Statuses after which nothing more happens to a move.
DONE = frozenset({CONFIRMED, REVERTED, ERROR, COMPLETED})

STOP_SOURCE = "move_stop_source"
FINISH_DEST = "move_finish_dest"
DROP = "move_drop"
RESTORE_SOURCE = "move_restore_source"
VERBS = (STOP_SOURCE, FINISH_DEST, DROP, RESTORE_SOURCE)
# A move still choosing its destination after this long was cut short (the scheduler call
# that chooses it has a 10 s deadline).
STALE_START_S = 60.0

_FLAVOR_COLUMNS = (
    "flavor_id",
    "flavor_name",
    "vcpus",
    "memory_mb",
    "root_gb",
    "ephemeral_gb",
    "swap_mb",
    "flavor_extra_specs",
)


def open_on_host(host: str) -> Select[str]:
    """The instances with a move still open that has this host as source or destination.
    The source of an evacuation is not one: its copy is to be destroyed when it returns."""
    return select(Migration.instance_uuid).where(
        Migration.status.not_in(sorted(DONE)),
        or_(
            and_(Migration.source_compute == host, Migration.migration_type != EVACUATION),
            Migration.dest_compute == host,
        ),
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _flavor_of_instance(row: Instance) -> dict[str, Any]:
    return {c: getattr(row, c) for c in _FLAVOR_COLUMNS}


def _flavor_of_row(f: Flavor) -> dict[str, Any]:
    return {
        "flavor_id": f.flavorid,
        "flavor_name": f.name,
        "vcpus": f.vcpus,
        "memory_mb": f.memory_mb,
        "root_gb": f.root_gb,
        "ephemeral_gb": f.ephemeral_gb,
        "swap_mb": f.swap_mb,
        "flavor_extra_specs": dict(f.extra_specs or {}),
    }


def _resources(flavor: dict[str, Any]) -> Any:
    return resources_of(
        int(flavor["vcpus"]),
        int(flavor["memory_mb"]),
        int(flavor["root_gb"]),
        int(flavor["ephemeral_gb"]),
        int(flavor["swap_mb"]),
    )


def command(
    verb: str,
    host: str,
    mig: Migration,
    *,
    power_on: bool = False,
    paused: bool = False,
    spec: agent_bus_pb2.InstanceSpec | None = None,
    nics_found: nics.Nics | None = None,
) -> Outgoing:
    """One move step for one host. The id names the migration, the step and the host, so
    taking the same decision twice queues one message."""
    msg_id = f"{verb}-{mig.uuid}-{host}"
    payload = agent_bus_pb2.MoveInstanceCommand(
        request_id=msg_id,
        migration_id=mig.uuid,
        instance_id=mig.instance_uuid,
        spec=spec,
        power_on=power_on,
        paused=paused,
        source_host=mig.source_compute,
        # The DHCP of the server's networks on the host its ports were just bound to.
        dhcp=() if nics_found is None else nics_found.dhcp,
    )
    return Outgoing(bus.compute_subject(host, verb), msg_id, payload)


# ------------------------------------------------------------------ starting a move


async def start_move(
    conductor: Conductor,
    *,
    instance_uuid: str,
    project_id: str,
    user_id: str,
    request_id: str,
    migration_type: str,
    flavor_id: str = "",
    host: str = "",
    override_lock: bool = False,
) -> Migration:
    """Starts a resize (flavor_id given) or a cold migration (same flavor, maybe a host).

    Postconditions: on return the destination is claimed for the instance, the source's
    allocation is the migration's, the source has its stop command queued and the server
    shows RESIZE. On InvalidArgument (same or unknown flavor, unknown host, no valid host)
    or Conflict (state), nothing is held that was not held before. A retry with the same
    request_id returns the same migration.
    """
    action = _ACTIONS[migration_type]
    live = migration_type == LIVE
    prep_task = TaskState.MIGRATING if live else TaskState.RESIZE_PREP
    rid = request_id or f"req-{uuid.uuid4()}"
    async with conductor.sessions() as session:
        row = await load_instance(session, instance_uuid, project_id)
        existing = (
            await session.execute(
                select(Migration).where(
                    Migration.instance_uuid == row.uuid, Migration.request_id == rid
                )
            )
        ).scalar_one_or_none()
        if existing is not None and request_id:
            return existing
        check_lock(row, override_lock)
        if live:
            states.check_live_migration(action, row.vm_state, row.task_state)
        else:
            states.check_move(action, row.vm_state, row.task_state)
        if not row.host:
            raise Conflict(f"Instance {row.uuid} has no host; cannot {action} it.")
        old = _flavor_of_instance(row)
        if migration_type == RESIZE:
            flavor = (
                await session.execute(select(Flavor).where(Flavor.flavorid == flavor_id))
            ).scalar_one_or_none()
            if flavor is None or flavor.disabled:
                raise InvalidArgument(f"Unable to find flavor {flavor_id[:64]}.")
            if flavor.flavorid == row.flavor_id:
                raise InvalidArgument("When resizing, instances must change flavor!")
            if flavor.root_gb < row.root_gb and flavor.root_gb != 0:
                raise InvalidArgument("Resize error: Unable to resize disk down.")
            new = _flavor_of_row(flavor)
            # A resize up counts the difference against the project's quota (the server's
            # usage is counted at its new size from the finish on).
            quota = await load_project_quota(session, row.project_id, conductor.cfg.conductor)
            quota.check(
                0,
                max(0, flavor.vcpus - row.vcpus),
                max(0, flavor.memory_mb - row.memory_mb),
            )
        else:
            new = dict(old)
        source = str(row.host)
        if host:
            if host == source:
                raise InvalidArgument(
                    f"The requested host {host[:64]} is the host the server is on."
                )
            if not await _host_exists(conductor, host):
                raise InvalidArgument(f"Compute host {host[:64]} could not be found.")
        now = _now()
        await _guarded(session, row, action, task_state=prep_task.value, updated_at=now)
        mig = Migration(
            uuid=str(uuid.uuid4()),
            instance_uuid=row.uuid,
            request_id=rid,
            migration_type=migration_type,
            status=PRE_MIGRATING,
            source_compute=source,
            source_node=row.node or source,
            old_flavor=old,
            new_flavor=new,
            was_running=row.vm_state == VmState.ACTIVE,
            user_id=user_id or row.user_id,
            project_id=row.project_id,
            created_at=now,
            updated_at=now,
        )
        select_req = await record_and_ask_placement(
            session,
            row,
            mig,
            action=action,
            user_id=user_id,
            now=now,
            flavor=new,
            ignore_hosts=[]
            if migration_type == RESIZE and conductor.cfg.conductor.allow_resize_to_same_host
            else [source],
            force_host=host,
            request_suffix="move",
        )
        await session.commit()
    try:
        dest = await _claim_destination(conductor, mig, select_req)
    except BaseException as exc:
        await _abandon(conductor, mig, action, str(exc) or type(exc).__name__)
        raise
    async with conductor.sessions() as session:
        now = _now()
        moved = await session.execute(
            update(Instance)
            .where(
                Instance.uuid == mig.instance_uuid,
                Instance.task_state == prep_task.value,
                Instance.deleted.is_(False),
            )
            .values(
                task_state=(TaskState.MIGRATING if live else TaskState.RESIZE_MIGRATING).value,
                updated_at=now,
            )
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            # Deleted meanwhile (nothing else may change a server in resize_prep): the
            # sweep releases both allocations, the migration's and the destination claim.
            await session.rollback()
            raise Conflict(f"Instance {mig.instance_uuid} changed while it was being moved.")
        status = PREPARING if live else MIGRATING
        await session.execute(
            update(Migration)
            .where(Migration.id == mig.id)
            .values(
                status=status,
                dest_compute=dest.host,
                dest_node=dest.node or dest.host,
                updated_at=now,
            )
        )
        mig.dest_compute, mig.dest_node, mig.status = dest.host, dest.node or dest.host, status
        if live:
            # The destination starts the server while the source still runs it.
            loaded = await load_with_image(session, mig.instance_uuid)
            assert loaded is not None
            # Its ports bound on the destination (the source's guest keeps its NICs).
            found = await nics.rebind(conductor, session, loaded[0], dest.host)
            await outbox.add(
                session,
                command(
                    FINISH_DEST,
                    dest.host,
                    mig,
                    power_on=True,
                    paused=loaded[0].vm_state == VmState.PAUSED,
                    spec=instance_spec(*loaded),
                    nics_found=found,
                ),
            )
        else:
            await outbox.add(session, command(STOP_SOURCE, mig.source_compute, mig))
        await record_event(
            session,
            mig.instance_uuid,
            action,
            "conductor_migrate_server",
            "Success",
            host=dest.host,
        )
        await session.commit()
    conductor.wakeup.set()
    return mig


async def _host_exists(conductor: Conductor, host: str) -> bool:
    try:
        await conductor.scheduler.get_host(host)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


async def record_and_ask_placement(
    session: AsyncSession,
    row: Instance,
    mig: Migration,
    *,
    action: str,
    user_id: str,
    now: datetime,
    flavor: dict[str, Any],
    ignore_hosts: list[str],
    force_host: str,
    request_suffix: str,
) -> scheduler_pb2.SelectDestinationsRequest:
    """Records a move's migration and its instance action (committed), and returns the
    placement request for its destination: the flavor's resources, the server's zone,
    group, same_host and different_host hints and image properties, `ignore_hosts` and
    `force_host` as given."""
    session.add(mig)
    session.add(
        InstanceAction(
            instance_uuid=row.uuid,
            action=action,
            request_id=mig.request_id,
            user_id=user_id or row.user_id,
            project_id=row.project_id,
            start_time=now,
            updated_at=now,
        )
    )
    await session.commit()
    loaded = await load_with_image(session, row.uuid)
    assert loaded is not None
    inst, image = loaded
    groups = await group_policies(session, [inst.server_group_id])
    return scheduler_pb2.SelectDestinationsRequest(
        request_id=f"{mig.request_id}-{request_suffix}",
        consumer_id=inst.uuid,
        project_id=inst.project_id,
        resources=_resources(flavor),
        availability_zone=inst.requested_availability_zone or "",
        ignore_hosts=ignore_hosts,
        num_alternates=0,
        force_host=force_host,
        server_group=groups.get(inst.server_group_id or ""),
        same_host=scheduler_hint(inst, "same_host"),
        different_host=scheduler_hint(inst, "different_host"),
        flavor_extra_specs={str(k): str(v) for k, v in flavor["flavor_extra_specs"].items()},
        image_properties={
            str(k): str(v) for k, v in ((image.properties if image else None) or {}).items()
        },
    )


async def _claim_destination(
    conductor: Conductor, mig: Migration, req: scheduler_pb2.SelectDestinationsRequest
) -> scheduler_pb2.Destination:
    """Hands the source allocation to the migration, then claims the destination for the
    instance. Raises InvalidArgument (no valid host) with nothing claimed for the instance."""
    sched = conductor.scheduler
    await sched.move_allocations(f"{mig.uuid}-to-migration", mig.instance_uuid, mig.uuid)
    answer = await sched.select_destinations(req)
    if answer.WhichOneof("outcome") != "placement":
        raise InvalidArgument(f"No valid host was found. {answer.no_valid_host.message}".strip())
    return answer.placement.selected


async def _abandon(conductor: Conductor, mig: Migration, action: str, reason: str) -> None:
    """Undoes a move that never reached a host: the instance's allocation is the source's
    again, the task is cleared and the migration is in error. Safe to repeat; when the
    scheduler cannot be reached, nothing is recorded and the sweep tries again later."""
    try:
        await _give_back_source(conductor, mig)
    except Exception as exc:
        log.warning(
            "could not give a cut-short move's allocation back yet: %s",
            exc,
            extra={"instance": mig.instance_uuid, "migration": mig.uuid},
        )
        return
    async with conductor.sessions() as session:
        now = _now()
        won = await session.execute(
            update(Migration)
            .where(Migration.id == mig.id, Migration.status == PRE_MIGRATING)
            .values(status=ERROR, updated_at=now)
        )
        if won.rowcount != 1:  # type: ignore[attr-defined]
            return
        await session.execute(
            update(Instance)
            .where(
                Instance.uuid == mig.instance_uuid,
                Instance.task_state.in_([TaskState.RESIZE_PREP.value, TaskState.MIGRATING.value]),
            )
            .values(task_state=None, updated_at=now)
        )
        await record_event(
            session,
            mig.instance_uuid,
            action,
            "conductor_migrate_server",
            "Error",
            details=reason[:255],
            message="Error",
        )
        await _finish_action(session, mig.instance_uuid, action)
        await session.commit()


async def _give_back_source(conductor: Conductor, mig: Migration) -> None:
    """The instance holds the source allocation again and nothing else. Idempotent: while
    the migration holds the source allocation, whatever the instance holds (the
    destination claim) is released, then the migration's allocation is handed back; once
    handed back, nothing more happens."""
    sched = conductor.scheduler
    if not await sched.allocations(mig.uuid):
        return
    await sched.release(f"{mig.uuid}-release-dest", mig.instance_uuid)
    await sched.move_allocations(f"{mig.uuid}-to-instance", mig.uuid, mig.instance_uuid)


async def _guarded(session: AsyncSession, row: Instance, action: str, **values: object) -> None:
    task_cond = (
        Instance.task_state.is_(None)
        if row.task_state is None
        else Instance.task_state == row.task_state
    )
    result = await session.execute(
        update(Instance)
        .where(Instance.id == row.id, Instance.vm_state == row.vm_state, task_cond)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        seen = (row.vm_state, row.task_state)
        await session.rollback()
        raise states.InvalidState(action, *seen)


# ------------------------------------------------------------------ confirm and revert


async def _open_migration(session: AsyncSession, instance_uuid: str) -> Migration:
    mig = (
        await session.execute(
            select(Migration)
            .where(Migration.instance_uuid == instance_uuid, Migration.status == FINISHED)
            .order_by(Migration.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if mig is None:
        raise NotFound(f"Migration for instance {instance_uuid} could not be found.")
    return mig


async def confirm_resize(
    conductor: Conductor,
    instance_uuid: str,
    project_id: str,
    user_id: str,
    request_id: str,
    *,
    override_lock: bool = False,
) -> None:
    """Keeps the moved server. Postcondition: task resize_confirming, the migration
    confirming and a move_drop queued for the source; the drop's answer frees the source
    allocation and settles the server. Conflict unless VERIFY_RESIZE."""
    await _finish_verify(
        conductor,
        instance_uuid,
        project_id,
        user_id,
        request_id,
        confirm=True,
        override_lock=override_lock,
    )


async def revert_resize(
    conductor: Conductor,
    instance_uuid: str,
    project_id: str,
    user_id: str,
    request_id: str,
    *,
    override_lock: bool = False,
) -> None:
    """Goes back to the source. Postcondition: task resize_reverting, the migration
    reverting and a move_drop queued for the destination; its answer frees the destination
    claim, gives the source allocation back to the instance and restarts the source."""
    await _finish_verify(
        conductor,
        instance_uuid,
        project_id,
        user_id,
        request_id,
        confirm=False,
        override_lock=override_lock,
    )


async def _finish_verify(
    conductor: Conductor,
    instance_uuid: str,
    project_id: str,
    user_id: str,
    request_id: str,
    *,
    confirm: bool,
    override_lock: bool = False,
) -> None:
    action = "confirmResize" if confirm else "revertResize"
    rid = request_id or f"req-{uuid.uuid4()}"
    async with conductor.sessions() as session:
        row = await load_instance(session, instance_uuid, project_id)
        done = (
            await session.execute(
                select(InstanceAction.id).where(
                    InstanceAction.instance_uuid == row.uuid, InstanceAction.request_id == rid
                )
            )
        ).first()
        if done is not None and request_id:
            return
        check_lock(row, override_lock)
        states.check_resized(action, row.vm_state, row.task_state)
        mig = await _open_migration(session, row.uuid)
        now = _now()
        task = TaskState.RESIZE_CONFIRMING if confirm else TaskState.RESIZE_REVERTING
        await _guarded(session, row, action, task_state=task.value, updated_at=now)
        await session.execute(
            update(Migration)
            .where(Migration.id == mig.id)
            .values(status=CONFIRMING if confirm else REVERTING, updated_at=now)
        )
        session.add(
            InstanceAction(
                instance_uuid=row.uuid,
                action=action,
                request_id=rid,
                user_id=user_id or row.user_id,
                project_id=row.project_id,
                start_time=now,
                updated_at=now,
            )
        )
        same_host = mig.dest_compute == mig.source_compute
        target = mig.source_compute if confirm else str(mig.dest_compute)
        if not same_host:
            # Queued even for a host that is down: it drops the domain when it returns.
            await outbox.add(session, command(DROP, target, mig))
        await session.commit()
    mig.status = CONFIRMING if confirm else REVERTING
    if same_host or await conductor.scheduler.is_down(target):
        # Nobody to wait for: one domain serves both sides, or the host that would drop
        # its copy is down (as a delete on a down host is local). The allocations settle
        # now; the sweep finishes this if the scheduler cannot be reached now.
        await _settle_locally(conductor, mig)
    conductor.wakeup.set()


async def _settle_locally(conductor: Conductor, mig: Migration) -> None:
    if mig.status == CONFIRMING:
        await _confirmed(conductor, mig, None)
    elif mig.status == REVERTING:
        await _dest_dropped(conductor, mig)


# ------------------------------------------------------------------ agents' answers


async def handle_event(conductor: Conductor, event: agent_bus_pb2.InstanceEvent) -> None:
    """Applies an agent's answer to a move step; idempotent (guarded by the migration's
    status and the instance's task). Raises when the effect could not be made durable."""
    async with conductor.sessions() as session:
        mig = (
            await session.execute(select(Migration).where(Migration.uuid == event.migration_id))
        ).scalar_one_or_none()
        await session.commit()
    if mig is None or mig.instance_uuid != event.instance_id:
        return
    if mig.migration_type == EVACUATION:
        # Imported here: evacuate.py builds on this module's steps.
        from controlplane.conductor import evacuate

        await evacuate.handle_event(conductor, mig, event)
        return
    ok = event.kind == K.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED
    verb = event.action
    if mig.migration_type == LIVE:
        await _live_event(conductor, mig, event, ok)
    elif verb == STOP_SOURCE and mig.status == MIGRATING and event.host == mig.source_compute:
        if ok:
            await _source_stopped(conductor, mig, event)
        else:
            await _move_failed(conductor, mig, event, "compute_resize_instance")
    elif verb == FINISH_DEST and mig.status == POST_MIGRATING and event.host == mig.dest_compute:
        if ok:
            await _dest_finished(conductor, mig, event)
        else:
            await _move_failed(conductor, mig, event, "compute_finish_resize")
    elif verb == DROP and mig.status == CONFIRMING and event.host == mig.source_compute:
        await _confirmed(conductor, mig, event)
    elif verb == DROP and mig.status == REVERTING and event.host == mig.dest_compute:
        await _dest_dropped(conductor, mig)
    elif verb == RESTORE_SOURCE and mig.status in (REVERTING, FAILED):
        await _restored(conductor, mig, event)


_ACTIONS = {RESIZE: RESIZE, MIGRATION: "migrate", LIVE: "live-migration", EVACUATION: "evacuate"}


def _action_of(mig: Migration) -> str:
    return _ACTIONS[mig.migration_type]


async def _set_migration(
    session: AsyncSession, mig: Migration, from_status: str, to_status: str
) -> bool:
    result = await session.execute(
        update(Migration)
        .where(Migration.id == mig.id, Migration.status == from_status)
        .values(status=to_status, updated_at=_now())
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def _source_stopped(
    conductor: Conductor, mig: Migration, event: agent_bus_pb2.InstanceEvent
) -> None:
    """The source is off: the destination defines the instance with the new flavor."""
    async with conductor.sessions() as session:
        loaded = await load_with_image(session, mig.instance_uuid)
        if loaded is None:
            return
        inst, image = loaded
        if inst.deleted:
            return  # deleted meanwhile: the sweep cleans the move up
        if not await _set_migration(session, mig, MIGRATING, POST_MIGRATING):
            return
        await session.execute(
            update(Instance)
            .where(Instance.id == inst.id, Instance.task_state == TaskState.RESIZE_MIGRATING.value)
            .values(
                task_state=TaskState.RESIZE_FINISH.value,
                power_state=int(event.power_state),
                updated_at=_now(),
            )
        )
        # Its ports move to the destination with it.
        found = await nics.rebind(conductor, session, inst, str(mig.dest_compute))
        spec = instance_spec(inst, image)
        _size(spec, mig.new_flavor)
        await record_event(
            session,
            inst.uuid,
            _action_of(mig),
            "compute_resize_instance",
            "Success",
            host=event.host,
        )
        await outbox.add(
            session,
            command(
                FINISH_DEST,
                str(mig.dest_compute),
                mig,
                power_on=mig.was_running,
                spec=spec,
                nics_found=found,
            ),
        )
        await session.commit()
    conductor.wakeup.set()


async def _dest_finished(
    conductor: Conductor, mig: Migration, event: agent_bus_pb2.InstanceEvent
) -> None:
    """The destination runs the instance: it is there now, waiting in VERIFY_RESIZE."""
    async with conductor.sessions() as session:
        if not await _set_migration(session, mig, POST_MIGRATING, FINISHED):
            return
        await _place_on_dest(
            conductor,
            session,
            mig,
            event,
            TaskState.RESIZE_FINISH,
            **mig.new_flavor,
            vm_state=VmState.RESIZED.value,
            task_state=None,
        )
        await record_event(
            session,
            mig.instance_uuid,
            _action_of(mig),
            "compute_finish_resize",
            "Success",
            host=event.host,
        )
        await _finish_action(session, mig.instance_uuid, _action_of(mig))
        await session.commit()


async def _place_on_dest(
    conductor: Conductor,
    session: AsyncSession,
    mig: Migration,
    event: agent_bus_pb2.InstanceEvent,
    expect: TaskState,
    **values: Any,
) -> None:
    """The instance is on the destination now: its host, node, zone and power state there
    (and `values`), written only while it is still in the move's `expect` task state."""
    row: dict[str, Any] = {
        "host": mig.dest_compute,
        "node": mig.dest_node,
        "power_state": int(event.power_state),
        "updated_at": _now(),
        **values,
    }
    zone = await _zone_of(conductor, str(mig.dest_compute))
    if zone:
        row["availability_zone"] = zone
    await session.execute(
        update(Instance)
        .where(Instance.uuid == mig.instance_uuid, Instance.task_state == expect.value)
        .values(**row)
    )


async def _zone_of(conductor: Conductor, host: str) -> str:
    try:
        return str((await conductor.scheduler.get_host(host)).availability_zone)
    except grpc.aio.AioRpcError:
        return ""


async def _confirmed(
    conductor: Conductor, mig: Migration, event: agent_bus_pb2.InstanceEvent | None
) -> None:
    """The source is clean: its allocation (the migration's) is freed, the server rests."""
    await conductor.scheduler.release(f"{mig.uuid}-confirm", mig.uuid)
    async with conductor.sessions() as session:
        if not await _set_migration(session, mig, CONFIRMING, CONFIRMED):
            return
        inst = await load_instance(session, mig.instance_uuid, include_deleted=True)
        rest = (VmState.ACTIVE if inst.power_state == PowerState.RUNNING else VmState.STOPPED).value
        await session.execute(
            update(Instance)
            .where(
                Instance.id == inst.id,
                Instance.task_state == TaskState.RESIZE_CONFIRMING.value,
            )
            .values(vm_state=rest, task_state=None, updated_at=_now())
        )
        await record_event(
            session,
            inst.uuid,
            "confirmResize",
            "compute_confirm_resize",
            "Success",
            host=event.host if event is not None else mig.source_compute,
        )
        await _finish_action(session, inst.uuid, "confirmResize")
        await session.commit()


async def _dest_dropped(conductor: Conductor, mig: Migration) -> None:
    """The destination's copy is gone: its claim is freed, the source allocation is the
    instance's again, the old flavor is back and the source starts again if it ran."""
    await _give_back_source(conductor, mig)
    async with conductor.sessions() as session:
        inst = await load_instance(session, mig.instance_uuid, include_deleted=True)
        if inst.task_state != TaskState.RESIZE_REVERTING.value or inst.host != mig.dest_compute:
            return  # not reverting, or this step is done already
        zone = await _zone_of(conductor, mig.source_compute)
        values: dict[str, Any] = {
            **mig.old_flavor,
            "host": mig.source_compute,
            "node": mig.source_node,
            "updated_at": _now(),
        }
        if zone:
            values["availability_zone"] = zone
        await session.execute(
            update(Instance)
            .where(
                Instance.id == inst.id,
                Instance.task_state == TaskState.RESIZE_REVERTING.value,
                Instance.host == mig.dest_compute,
            )
            .values(**values)
        )
        await record_event(
            session,
            inst.uuid,
            "revertResize",
            "compute_revert_resize",
            "Success",
            host=mig.dest_compute,
        )
        spec = None
        found = None
        if mig.dest_compute != mig.source_compute:
            # Its ports go back to the source with it.
            back = await load_with_image(session, inst.uuid)
            if back is not None:
                found = await nics.rebind(conductor, session, back[0], mig.source_compute)
        if mig.dest_compute == mig.source_compute:
            # The one domain takes the old flavor back.
            loaded = await load_with_image(session, inst.uuid)
            assert loaded is not None
            spec = instance_spec(*loaded)
            _size(spec, mig.old_flavor)
        await outbox.add(
            session,
            command(
                RESTORE_SOURCE,
                mig.source_compute,
                mig,
                power_on=mig.was_running,
                spec=spec,
                nics_found=found,
            ),
        )
        await session.commit()
    conductor.wakeup.set()


def _size(spec: agent_bus_pb2.InstanceSpec, flavor: dict[str, Any]) -> None:
    spec.vcpus = int(flavor["vcpus"])
    spec.memory_mb = int(flavor["memory_mb"])
    spec.root_gb = int(flavor["root_gb"])
    spec.ephemeral_gb = int(flavor["ephemeral_gb"])
    spec.swap_mb = int(flavor["swap_mb"])


async def _restored(
    conductor: Conductor, mig: Migration, event: agent_bus_pb2.InstanceEvent
) -> None:
    """The source runs (or rests) again: the revert, or the failed move, is over."""
    ok = event.kind == K.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED
    async with conductor.sessions() as session:
        final = REVERTED if mig.status == REVERTING else ERROR
        if not await _set_migration(session, mig, mig.status, final):
            return
        inst = await load_instance(session, mig.instance_uuid, include_deleted=True)
        power = int(event.power_state)
        values: dict[str, Any] = {
            "task_state": None,
            "power_state": power,
            "updated_at": _now(),
        }
        if ok:
            values["vm_state"] = (
                VmState.ACTIVE if power == PowerState.RUNNING else VmState.STOPPED
            ).value
        else:
            values["vm_state"] = VmState.ERROR.value
            values["fault"] = make_fault(
                event.fault.code or 500,
                event.fault.message or "The source host could not start the server again.",
            )
        await session.execute(
            update(Instance)
            .where(
                Instance.id == inst.id,
                Instance.task_state == TaskState.RESIZE_REVERTING.value,
            )
            .values(**values)
        )
        action = "revertResize" if final == REVERTED else _action_of(mig)
        await record_event(
            session,
            inst.uuid,
            action,
            "compute_finish_revert_resize",
            "Success" if ok else "Error",
            host=event.host,
        )
        await _finish_action(session, inst.uuid, action)
        await session.commit()


async def _move_failed(
    conductor: Conductor,
    mig: Migration,
    event: agent_bus_pb2.InstanceEvent | None,
    step: str,
    reason: str = "",
) -> None:
    """A step failed (or its host went down): back to the source. The destination claim
    is freed, the source allocation handed back, and the source restarted if it ran; the
    migration ends in error once the source answers."""
    detail = reason or (event.fault.message if event is not None else "") or "move step failed"
    # Allocations first: a lost commit is redelivered and finds them already given back.
    await _give_back_source(conductor, mig)
    async with conductor.sessions() as session:
        if not await _set_migration(session, mig, mig.status, FAILED):
            return
        inst = await load_instance(session, mig.instance_uuid, include_deleted=True)
        await session.execute(
            update(Instance)
            .where(Instance.id == inst.id, Instance.task_state.in_(_IN_FLIGHT))
            .values(
                task_state=TaskState.RESIZE_REVERTING.value,
                host=mig.source_compute,
                node=mig.source_node,
                updated_at=_now(),
                **mig.old_flavor,
            )
        )
        await record_event(
            session,
            inst.uuid,
            _action_of(mig),
            step,
            "Error",
            host=event.host if event is not None else mig.dest_compute,
            details=detail[:255],
            message="Error",
        )
        if mig.dest_compute:
            # The destination may hold a half-made copy: it goes (for when the host returns).
            await outbox.add(session, command(DROP, str(mig.dest_compute), mig))
        await outbox.add(
            session,
            command(RESTORE_SOURCE, mig.source_compute, mig, power_on=mig.was_running),
        )
        await session.commit()
    conductor.wakeup.set()


_IN_FLIGHT = [
    TaskState.RESIZE_MIGRATING.value,
    TaskState.RESIZE_MIGRATED.value,
    TaskState.RESIZE_FINISH.value,
]


async def _finish_action(session: AsyncSession, instance_uuid: str, action: str) -> None:
    now = _now()
    await session.execute(
        update(InstanceAction)
        .where(
            InstanceAction.instance_uuid == instance_uuid,
            InstanceAction.action == action,
            InstanceAction.finish_time.is_(None),
        )
        .values(finish_time=now, updated_at=now)
    )


# ------------------------------------------------------------------ live migration


async def _live_event(
    conductor: Conductor, mig: Migration, event: agent_bus_pb2.InstanceEvent, ok: bool
) -> None:
    verb = event.action
    if verb == FINISH_DEST and mig.status == PREPARING and event.host == mig.dest_compute:
        if ok:
            await _live_dest_running(conductor, mig, event)
        else:
            await _live_failed(conductor, mig, event.fault.message or "live migration failed")
    elif verb == DROP and mig.status == POST_MIGRATING and event.host == mig.source_compute:
        await _live_completed(conductor, mig, event)


async def _live_dest_running(
    conductor: Conductor, mig: Migration, event: agent_bus_pb2.InstanceEvent
) -> None:
    """The destination runs the server: it is there now; the source drops its copy."""
    async with conductor.sessions() as session:
        if not await _set_migration(session, mig, PREPARING, POST_MIGRATING):
            return
        await _place_on_dest(conductor, session, mig, event, TaskState.MIGRATING)
        await record_event(
            session,
            mig.instance_uuid,
            LIVE,
            "compute_live_migration",
            "Success",
            host=event.host,
        )
        await outbox.add(session, command(DROP, mig.source_compute, mig))
        await session.commit()
    conductor.wakeup.set()


async def _live_completed(
    conductor: Conductor, mig: Migration, event: agent_bus_pb2.InstanceEvent
) -> None:
    """The source is clean: its allocation (the migration's) is freed, the server rests."""
    await conductor.scheduler.release(f"{mig.uuid}-live-done", mig.uuid)
    async with conductor.sessions() as session:
        if not await _set_migration(session, mig, POST_MIGRATING, COMPLETED):
            return
        await session.execute(
            update(Instance)
            .where(
                Instance.uuid == mig.instance_uuid,
                Instance.task_state == TaskState.MIGRATING.value,
            )
            .values(task_state=None, updated_at=_now())
        )
        await record_event(
            session,
            mig.instance_uuid,
            LIVE,
            "compute_post_live_migration_at_source",
            "Success",
            host=event.host,
        )
        await _finish_action(session, mig.instance_uuid, LIVE)
        await session.commit()


async def _live_failed(conductor: Conductor, mig: Migration, reason: str) -> None:
    """The destination could not start the server (or went down): the source never
    stopped it, so only the claims go back; the destination drops what it made."""
    await _give_back_source(conductor, mig)
    async with conductor.sessions() as session:
        if not await _set_migration(session, mig, PREPARING, ERROR):
            return
        await session.execute(
            update(Instance)
            .where(
                Instance.uuid == mig.instance_uuid,
                Instance.task_state == TaskState.MIGRATING.value,
            )
            .values(task_state=None, updated_at=_now())
        )
        await record_event(
            session,
            mig.instance_uuid,
            LIVE,
            "compute_live_migration",
            "Error",
            host=mig.dest_compute,
            details=reason[:255],
            message="Error",
        )
        await _finish_action(session, mig.instance_uuid, LIVE)
        await outbox.add(session, command(DROP, str(mig.dest_compute), mig))
        await session.commit()
    conductor.wakeup.set()


# ------------------------------------------------------------------ the periodic


class MoveSweeper:
    """Every conductor's periodic for moves: confirms what waited longer than
    resize_confirm_window (when not 0), sends a move whose destination host went down
    back to its source, and cleans up after servers deleted mid-move."""

    def __init__(self, conductor: Conductor, *, interval: float | None = None) -> None:
        self._c = conductor
        down_after = conductor.cfg.scheduler.service_down_time
        self._interval = interval if interval is not None else min(10.0, down_after / 3)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception:
                log.exception("move sweep failed; trying again next pass")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)

    async def sweep(self) -> int:
        """One pass; returns how many moves it acted on."""
        acted = await self._auto_confirm()
        acted += await self._interrupted_starts()
        acted += await self._unsettled()
        acted += await self._stranded()
        acted += await self._deleted()
        return acted

    async def _auto_confirm(self) -> int:
        window = self._c.cfg.conductor.resize_confirm_window
        if window <= 0:
            return 0
        cutoff = _now() - timedelta(seconds=window)
        async with self._c.sessions() as session:
            rows = (
                await session.execute(
                    select(Migration.uuid, Migration.instance_uuid, Migration.updated_at).where(
                        Migration.status == FINISHED
                    )
                )
            ).all()
        acted = 0
        for mig_uuid, instance_uuid, updated_at in rows:
            if updated_at is None or as_utc(updated_at) > cutoff:
                continue
            try:
                # One request id per move: a retry of this confirm is a no-op, a later
                # move of the same server is confirmed in its turn.
                await confirm_resize(
                    self._c,
                    instance_uuid,
                    "",
                    "",
                    f"req-auto-confirm-{mig_uuid}",
                    override_lock=True,
                )
                acted += 1
            except (Conflict, NotFound) as exc:
                log.info("auto-confirm skipped: %s", exc, extra={"instance": instance_uuid})
        return acted

    async def _interrupted_starts(self) -> int:
        """A start that never got past choosing the destination (its conductor died between
        recording the move and claiming): undone, the allocation the instance's again."""
        cutoff = _now() - timedelta(seconds=STALE_START_S)
        async with self._c.sessions() as session:
            migs = list(
                (
                    await session.execute(
                        select(Migration)
                        .join(Instance, Instance.uuid == Migration.instance_uuid)
                        .where(
                            Migration.status == PRE_MIGRATING,
                            Migration.migration_type != EVACUATION,
                            Migration.created_at < cutoff,
                            Instance.deleted.is_(False),
                        )
                    )
                ).scalars()
            )
            await session.commit()
        for mig in migs:
            await _abandon(self._c, mig, _action_of(mig), "The move was interrupted.")
        return len(migs)

    async def _unsettled(self) -> int:
        """A confirm or revert that settles without an agent (same host, or the dropping
        host down) whose settling was cut short (scheduler unreachable), or whose dropping
        host went down after it was asked."""
        cutoff = _now() - timedelta(seconds=self._interval)
        async with self._c.sessions() as session:
            migs = [
                m
                for m in (
                    await session.execute(
                        select(Migration).where(Migration.status.in_([CONFIRMING, REVERTING]))
                    )
                ).scalars()
                if m.updated_at is not None and as_utc(m.updated_at) < cutoff
            ]
            await session.commit()
        if not migs:
            return 0
        down = await self._c.scheduler.down_hosts() or set()
        acted = 0
        for mig in migs:
            dropping = mig.source_compute if mig.status == CONFIRMING else mig.dest_compute
            if mig.source_compute == mig.dest_compute or dropping in down:
                await _settle_locally(self._c, mig)
                acted += 1
        return acted

    async def _stranded(self) -> int:
        down = await self._c.scheduler.down_hosts()
        if not down:
            return 0
        async with self._c.sessions() as session:
            migs = list(
                (
                    await session.execute(
                        select(Migration).where(
                            or_(
                                and_(
                                    Migration.migration_type != LIVE,
                                    Migration.status.in_([MIGRATING, POST_MIGRATING]),
                                ),
                                and_(
                                    Migration.migration_type == LIVE, Migration.status == PREPARING
                                ),
                            ),
                            Migration.dest_compute.in_(sorted(down)),
                        )
                    )
                ).scalars()
            )
            await session.commit()
        for mig in migs:
            if mig.migration_type == LIVE:
                await _live_failed(self._c, mig, f"Destination host {mig.dest_compute} went down.")
                continue
            await _move_failed(
                self._c,
                mig,
                None,
                "compute_finish_resize",
                f"Destination host {mig.dest_compute} went down during the move.",
            )
        return len(migs)

    async def _deleted(self) -> int:
        """Servers deleted while a move was open: the migration's allocation is freed and
        both hosts get a move_drop (each succeeds if nothing is there)."""
        async with self._c.sessions() as session:
            migs = list(
                (
                    await session.execute(
                        select(Migration)
                        .join(Instance, Instance.uuid == Migration.instance_uuid)
                        .where(Migration.status.not_in(sorted(DONE)), Instance.deleted.is_(True))
                    )
                ).scalars()
            )
            await session.commit()
        for mig in migs:
            await self._c.scheduler.release(f"{mig.uuid}-deleted", mig.uuid)
            # A deleted server holds nothing; a claim a cut-short start made goes too.
            await self._c.scheduler.release(f"{mig.uuid}-deleted-instance", mig.instance_uuid)
            async with self._c.sessions() as session:
                final = CONFIRMED if mig.status == FINISHED else ERROR
                if not await _set_migration(session, mig, mig.status, final):
                    continue
                for host in {mig.source_compute, mig.dest_compute}:
                    if host:
                        await outbox.add(session, command(DROP, host, mig))
                await session.commit()
        if migs:
            self._c.wakeup.set()
        return len(migs)
