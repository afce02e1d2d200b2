"""Evacuation: a server of a down host is rebuilt, from its image, on another host.

Nothing comes from the source host (it is down): the destination builds fresh disks from
the server's image, so the guest's disk contents are lost (Loom has no shared instance
storage). The migration record has the type `evacuation` and these statuses:

    accepted       recorded; the source allocation handed to the migration (M), the
                   destination being chosen and claimed for the instance
    pre-migrating  claimed: the server's host is the destination, which is told to build
                   it (move_finish_dest, from_image); the source is told to drop its copy
                   (move_drop), which waits in JetStream until that host returns
    done           the destination runs (or holds, stopped) the server
    completed      done, and the source dropped its copy: M's allocation is released
    failed         the destination could not build it: the server is in ERROR there
    error          no valid host (the server in ERROR, still on the source, nothing held
                   beyond what it held before), or the call was cut short

The allocations: the source's stays counted (as M's) until the source host returns and
answers move_drop, because until then nobody knows that the old domain is gone; the
destination is the instance's ordinary atomic claim. So every host's usage is the sum
of its allocations at every step.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from loom.compute.v1 import agent_bus_pb2
from loom.scheduler.v1 import scheduler_pb2
from sqlalchemy import select, update

from controlplane.conductor import moves, nics, outbox
from controlplane.conductor.context import Conductor
from controlplane.conductor.convert import instance_spec, make_fault
from controlplane.conductor.scheduling import load_with_image, record_event
from controlplane.conductor.servers.query import load_instance
from controlplane.conductor.states import InvalidState, PowerState, TaskState, VmState
from controlplane.db.models import Instance, Migration
from controlplane.runtime.errors import Conflict, InvalidArgument, NotFound

log = logging.getLogger(__name__)

K = agent_bus_pb2.InstanceEventKind

ACTION = "evacuate"
EVACUATION = moves.EVACUATION
ACCEPTED = "accepted"
PRE_MIGRATING = moves.PRE_MIGRATING
REBUILT = "done"
COMPLETED = moves.COMPLETED
FAILED = moves.FAILED
ERROR = moves.ERROR

_EVACUABLE = (VmState.ACTIVE.value, VmState.STOPPED.value, VmState.ERROR.value)


class _NoValidHost(Exception):
    pass


def _now() -> datetime:
    return datetime.now(UTC)


async def evacuate_server(
    conductor: Conductor,
    *,
    instance_uuid: str,
    project_id: str,
    user_id: str,
    request_id: str,
    host: str = "",
    force: bool = False,
    stop_at_destination: bool = False,
) -> Migration:
    """Starts an evacuation. Postconditions on return: either the destination is claimed
    for the instance, the source allocation is the migration's and both hosts have their
    command queued (status pre-migrating); or no host fitted and the server is in ERROR
    with a fault, holding what it held before (status error). Raises InvalidArgument
    (source up, requested host is the source, force without host), NotFound (unknown
    host) or Conflict (state) with nothing changed. A retry with the same request_id
    returns the same migration."""
    if force and not host:
        raise InvalidArgument("Can't force to a non-provided destination")
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
        if host and not await moves._host_exists(conductor, host):
            raise NotFound(f"Compute host {host[:64]} not found.")
        if host and host == row.host:
            raise InvalidArgument("The target host can't be the same one.")
        if row.vm_state not in _EVACUABLE:
            raise InvalidState(ACTION, row.vm_state, None, row.uuid)
        if row.task_state is not None:
            raise InvalidState(ACTION, row.vm_state, row.task_state, row.uuid)
        if not row.host:
            raise Conflict(f"Instance {row.uuid} has no host; cannot evacuate it.")
        source = str(row.host)
        down = await conductor.scheduler.down_hosts()
        if down is None:
            raise Conflict("The scheduler cannot say whether the server's host is down.")
        if source not in down:
            raise InvalidArgument(f"Compute service of {source[:64]} is still in use.")
        # From 2.95 the server rests stopped on the destination; an errored server is
        # started (there is no state of its own to keep); before, it keeps its state.
        if row.vm_state == VmState.ERROR:
            power_on = True
        else:
            power_on = not stop_at_destination and row.vm_state == VmState.ACTIVE
        flavor = moves._flavor_of_instance(row)
        now = _now()
        await moves._guarded(
            session, row, ACTION, task_state=TaskState.REBUILDING.value, updated_at=now
        )
        mig = Migration(
            uuid=str(uuid.uuid4()),
            instance_uuid=row.uuid,
            request_id=rid,
            migration_type=EVACUATION,
            status=ACCEPTED,
            source_compute=source,
            source_node=row.node or source,
            dest_compute=host or None,
            old_flavor=flavor,
            new_flavor=dict(flavor),
            # For an evacuation: whether the destination starts the server.
            was_running=power_on,
            user_id=user_id or row.user_id,
            project_id=row.project_id,
            created_at=now,
            updated_at=now,
        )
        select_req = await moves.record_and_ask_placement(
            session,
            row,
            mig,
            action=ACTION,
            user_id=user_id,
            now=now,
            flavor=flavor,
            ignore_hosts=[source],
            force_host=host,
            request_suffix="evacuate",
        )
        await session.commit()
    try:
        dest_host, dest_node = await _claim_destination(
            conductor, mig, select_req, forced_host=host if force else ""
        )
    except _NoValidHost as exc:
        await _no_valid_host(conductor, mig, str(exc))
        mig.status = ERROR
        return mig
    except BaseException as exc:
        await _abandon(conductor, mig, str(exc) or type(exc).__name__)
        raise
    try:
        await _send_to_hosts(conductor, mig, dest_host, dest_node)
    except nics.PortsUnavailable as exc:
        # The network service refused the ports there: nothing moved.
        await _abandon(conductor, mig, exc.message)
        raise Conflict(f"The server's ports cannot be bound on {dest_host}: {exc.message}") from exc
    except BaseException as exc:
        await _abandon(conductor, mig, str(exc) or type(exc).__name__)
        raise
    return mig


async def _claim_destination(
    conductor: Conductor,
    mig: Migration,
    req: scheduler_pb2.SelectDestinationsRequest,
    *,
    forced_host: str,
) -> tuple[str, str]:
    """Hands the source allocation to the migration, then claims the destination for the
    instance: through every filter, or (forced) on the requested host with its capacity
    checked only. Raises _NoValidHost with nothing claimed for the instance."""
    sched = conductor.scheduler
    await sched.move_allocations(f"{mig.uuid}-to-migration", mig.instance_uuid, mig.uuid)
    if forced_host:
        claimed = await sched.claim(
            f"{req.request_id}-forced",
            mig.instance_uuid,
            req.project_id,
            req.resources,
            forced_host,
        )
        if not claimed.claimed:
            raise _NoValidHost(f"No valid host was found. {claimed.reason}".strip())
        return forced_host, forced_host
    answer = await sched.select_destinations(req)
    if answer.WhichOneof("outcome") != "placement":
        raise _NoValidHost(f"No valid host was found. {answer.no_valid_host.message}".strip())
    selected = answer.placement.selected
    return str(selected.host), str(selected.node or selected.host)


async def _no_valid_host(conductor: Conductor, mig: Migration, reason: str) -> None:
    """As Nova: the server goes to ERROR with the scheduler's fault, still on its (down)
    source, which holds its allocation again; the migration is in error."""
    await moves._give_back_source(conductor, mig)
    async with conductor.sessions() as session:
        if not await moves._set_migration(session, mig, ACCEPTED, ERROR):
            return
        await session.execute(
            update(Instance)
            .where(
                Instance.uuid == mig.instance_uuid,
                Instance.task_state == TaskState.REBUILDING.value,
            )
            .values(
                vm_state=VmState.ERROR.value,
                task_state=None,
                fault=make_fault(500, reason[:255]),
                updated_at=_now(),
            )
        )
        await record_event(
            session,
            mig.instance_uuid,
            ACTION,
            "conductor_rebuild_server",
            "Error",
            details=reason[:255],
            message="Error",
        )
        await moves._finish_action(session, mig.instance_uuid, ACTION)
        await session.commit()


async def _abandon(conductor: Conductor, mig: Migration, reason: str) -> None:
    """A start cut short (scheduler unreachable, or the server changed): the instance's
    allocation is the source's again, the task cleared, the migration in error."""
    try:
        await moves._give_back_source(conductor, mig)
    except Exception as exc:
        log.warning(
            "could not give a cut-short evacuation's allocation back: %s",
            exc,
            extra={"instance": mig.instance_uuid, "migration": mig.uuid},
        )
        return
    async with conductor.sessions() as session:
        if not await moves._set_migration(session, mig, ACCEPTED, ERROR):
            return
        await session.execute(
            update(Instance)
            .where(
                Instance.uuid == mig.instance_uuid,
                Instance.task_state == TaskState.REBUILDING.value,
            )
            .values(task_state=None, updated_at=_now())
        )
        await record_event(
            session,
            mig.instance_uuid,
            ACTION,
            "conductor_rebuild_server",
            "Error",
            details=reason[:255],
            message="Error",
        )
        await moves._finish_action(session, mig.instance_uuid, ACTION)
        await session.commit()


async def _send_to_hosts(conductor: Conductor, mig: Migration, dest: str, node: str) -> None:
    """The server is the destination's now: it builds it from the image; the source is
    told to drop its copy (delivered when it returns)."""
    zone = await moves._zone_of(conductor, dest)
    async with conductor.sessions() as session:
        values: dict[str, Any] = {"host": dest, "node": node, "updated_at": _now()}
        if zone:
            values["availability_zone"] = zone
        moved = await session.execute(
            update(Instance)
            .where(
                Instance.uuid == mig.instance_uuid,
                Instance.task_state == TaskState.REBUILDING.value,
                Instance.deleted.is_(False),
            )
            .values(**values)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            # Deleted meanwhile: the move sweep releases both allocations.
            await session.rollback()
            raise Conflict(f"Instance {mig.instance_uuid} changed while it was being evacuated.")
        await session.execute(
            update(Migration)
            .where(Migration.id == mig.id)
            .values(status=PRE_MIGRATING, dest_compute=dest, dest_node=node, updated_at=_now())
        )
        mig.dest_compute, mig.dest_node, mig.status = dest, node, PRE_MIGRATING
        loaded = await load_with_image(session, mig.instance_uuid)
        assert loaded is not None
        # Its ports are bound to the destination before its build there is queued.
        found = await nics.rebind(conductor, session, loaded[0], dest)
        build = moves.command(
            moves.FINISH_DEST,
            dest,
            mig,
            power_on=mig.was_running,
            spec=instance_spec(*loaded),
            nics_found=found,
        )
        assert isinstance(build.payload, agent_bus_pb2.MoveInstanceCommand)
        build.payload.from_image = True
        await outbox.add(session, build)
        await outbox.add(session, moves.command(moves.DROP, mig.source_compute, mig))
        await record_event(
            session, mig.instance_uuid, ACTION, "conductor_rebuild_server", "Success", host=dest
        )
        await session.commit()
    conductor.wakeup.set()


# ------------------------------------------------------------------ agents' answers


async def handle_event(
    conductor: Conductor, mig: Migration, event: agent_bus_pb2.InstanceEvent
) -> None:
    """Applies a host's answer to an evacuation step; idempotent (guarded by the
    migration's status and the server's task)."""
    ok = event.kind == K.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED
    if event.action == moves.FINISH_DEST and event.host == mig.dest_compute:
        if mig.status != PRE_MIGRATING:
            return
        if ok:
            await _rebuilt(conductor, mig, event)
        else:
            await _failed(conductor, mig, event)
    elif event.action == moves.DROP and event.host == mig.source_compute:
        await _source_dropped(conductor, mig)


async def _rebuilt(
    conductor: Conductor, mig: Migration, event: agent_bus_pb2.InstanceEvent
) -> None:
    power = int(event.power_state)
    async with conductor.sessions() as session:
        if not await moves._set_migration(session, mig, PRE_MIGRATING, REBUILT):
            return
        await session.execute(
            update(Instance)
            .where(
                Instance.uuid == mig.instance_uuid,
                Instance.task_state == TaskState.REBUILDING.value,
                Instance.host == mig.dest_compute,
            )
            .values(
                vm_state=(VmState.ACTIVE if power == PowerState.RUNNING else VmState.STOPPED).value,
                power_state=power,
                task_state=None,
                launched_at=_now(),
                updated_at=_now(),
            )
        )
        await record_event(
            session,
            mig.instance_uuid,
            ACTION,
            "compute_rebuild_instance",
            "Success",
            host=event.host,
        )
        await moves._finish_action(session, mig.instance_uuid, ACTION)
        await session.commit()
    mig.status = REBUILT
    if not await conductor.scheduler.allocations(mig.uuid):
        # The source returned and dropped its copy before this answer came.
        await _complete(conductor, mig)


async def _failed(conductor: Conductor, mig: Migration, event: agent_bus_pb2.InstanceEvent) -> None:
    """The destination could not build it: the server is in ERROR there (its claim kept,
    so a rebuild can be tried there), the destination told to drop what it made."""
    detail = event.fault.message or "The destination host could not build the server."
    async with conductor.sessions() as session:
        if not await moves._set_migration(session, mig, PRE_MIGRATING, FAILED):
            return
        await session.execute(
            update(Instance)
            .where(
                Instance.uuid == mig.instance_uuid,
                Instance.task_state == TaskState.REBUILDING.value,
            )
            .values(
                vm_state=VmState.ERROR.value,
                task_state=None,
                power_state=int(PowerState.NOSTATE),
                fault=make_fault(event.fault.code or 500, detail[:255]),
                updated_at=_now(),
            )
        )
        await record_event(
            session,
            mig.instance_uuid,
            ACTION,
            "compute_rebuild_instance",
            "Error",
            host=event.host,
            details=detail[:255],
            message="Error",
        )
        await moves._finish_action(session, mig.instance_uuid, ACTION)
        await outbox.add(session, moves.command(moves.DROP, str(mig.dest_compute), mig))
        await session.commit()
    conductor.wakeup.set()


async def _source_dropped(conductor: Conductor, mig: Migration) -> None:
    """The source host returned and its copy is gone: the allocation it held for the
    server (the migration's) is freed."""
    await conductor.scheduler.release(f"{mig.uuid}-evacuated", mig.uuid)
    await _complete(conductor, mig)


async def _complete(conductor: Conductor, mig: Migration) -> None:
    async with conductor.sessions() as session:
        if await moves._set_migration(session, mig, REBUILT, COMPLETED):
            mig.status = COMPLETED
        await session.commit()
