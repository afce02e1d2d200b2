"""Changing a server: delete, start, stop, reboot, pause, unpause, suspend, resume, shelve,
shelve_offload, unshelve, rebuild, lock, unlock, rename, metadata.

Each change is a guarded UPDATE (the WHERE repeats the state the guard saw), so two racing
requests cannot both win; the loser gets FAILED_PRECONDITION, never a silent overwrite.
A command to the host goes through the outbox in the same transaction.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import servers_pb2
from sqlalchemy import Table, delete, exists, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.catalog.quotas import check_metadata_items, limit_of
from controlplane.conductor import commands, nics, outbox, states
from controlplane.conductor.context import Conductor
from controlplane.conductor.convert import image_ref, instance_spec
from controlplane.conductor.scheduling import record_event
from controlplane.conductor.servers.query import load_instance
from controlplane.conductor.states import PowerState, TaskState, VmState
from controlplane.db.models import (
    ConsoleAuthToken,
    Image,
    Instance,
    InstanceAction,
    Keypair,
    OutboxMessage,
)
from controlplane.image.visibility import visible_to
from controlplane.runtime.errors import Conflict, InvalidArgument, NotFound

log = logging.getLogger(__name__)

_OUTBOX: Table = OutboxMessage.__table__  # type: ignore[assignment]
_ACTIONS: Table = InstanceAction.__table__  # type: ignore[assignment]


def _request_id(request_id: str) -> str:
    return request_id or f"req-{uuid.uuid4()}"


async def _action_exists(session: AsyncSession, instance_uuid: str, request_id: str) -> bool:
    found = await session.execute(
        select(InstanceAction.id).where(
            InstanceAction.instance_uuid == instance_uuid, InstanceAction.request_id == request_id
        )
    )
    return found.first() is not None


def _action_values(
    row: Instance, action: str, request_id: str, user_id: str, now: datetime
) -> dict[str, Any]:
    return {
        "instance_uuid": row.uuid,
        "action": action,
        "request_id": request_id,
        "user_id": user_id or row.user_id,
        "project_id": row.project_id,
        "start_time": now,
        "updated_at": now,
    }


def _record_action(
    session: AsyncSession, row: Instance, action: str, request_id: str, user_id: str, now: datetime
) -> None:
    session.add(InstanceAction(**_action_values(row, action, request_id, user_id, now)))


def check_lock(row: Instance, override_lock: bool) -> None:
    """A locked server refuses changes from callers that may not override the lock."""
    if row.locked and not override_lock:
        raise Conflict(f"Instance {row.uuid} is locked")


async def _new_action_on(
    session: AsyncSession,
    instance_uuid: str,
    project_id: str,
    request_id: str,
    override_lock: bool,
) -> tuple[Instance, bool]:
    """The server an action is asked of, and whether this request's action is recorded
    already (a retry, with nothing more to do). NotFound for a server the project cannot
    see; a new action on a locked server is refused unless `override_lock`."""
    row = await load_instance(session, instance_uuid, project_id)
    if request_id and await _action_exists(session, row.uuid, _request_id(request_id)):
        return row, True
    check_lock(row, override_lock)
    return row, False


async def _guarded_update(
    session: AsyncSession, row: Instance, action: str, **values: object
) -> None:
    """Applies values only if the instance is still in the state the guard checked."""
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
        uuid = row.uuid  # read before the rollback expires the row
        await session.rollback()
        fresh = await load_instance(session, uuid, include_deleted=True)
        raise states.InvalidState(action, fresh.vm_state, fresh.task_state)


async def power_action(
    conductor: Conductor,
    verb: str,
    instance_uuid: str,
    project_id: str,
    user_id: str,
    request_id: str,
    *,
    hard: bool = False,
    override_lock: bool = False,
) -> None:
    """Start, stop or reboot. Postcondition: the task_state is set, a `verb` action is
    recorded and the command is queued for the host, together; or FAILED_PRECONDITION and
    nothing changed. A retry with the same request_id is a no-op."""
    rid = _request_id(request_id)
    async with conductor.sessions() as session:
        row, retried = await _new_action_on(
            session, instance_uuid, project_id, request_id, override_lock
        )
        if retried:
            return
        if verb == "start":
            states.check_start(row.vm_state, row.task_state, instance_uuid=row.uuid)
            task = TaskState.POWERING_ON
        elif verb == "stop":
            states.check_stop(row.vm_state, row.task_state, instance_uuid=row.uuid)
            task = TaskState.POWERING_OFF
        else:
            states.check_reboot(row.vm_state, row.task_state, hard=hard, instance_uuid=row.uuid)
            task = states.reboot_task(hard)
        if not row.host:
            raise Conflict(f"Instance {row.uuid} has no host; cannot {verb} it.")
        now = datetime.now(UTC)
        await _guarded_update(session, row, verb, task_state=task.value, updated_at=now)
        _record_action(session, row, verb, rid, user_id, now)
        if verb == "start":
            cmd = commands.start(row.host, row.uuid, rid)
        elif verb == "stop":
            cmd = commands.stop(row.host, row.uuid, rid)
        else:
            cmd = commands.reboot(row.host, row.uuid, rid, hard=hard)
        await outbox.add(session, cmd)
        await session.commit()
    conductor.wakeup.set()


async def simple_action(
    conductor: Conductor,
    verb: str,
    instance_uuid: str,
    project_id: str,
    user_id: str,
    request_id: str,
    *,
    override_lock: bool = False,
    image_id: str = "",
) -> None:
    """Pause, unpause, suspend, resume, shelve or shelve_offload. Postcondition: the
    action's task_state is set, a `verb` action is recorded and the command is queued for
    the host, together; or FAILED_PRECONDITION and nothing changed. A retry with the same
    request_id is a no-op. A shelve with `image_id` has the host snapshot the shut-off
    disk into that queued image, recorded as the server's shelved image."""
    action = states.SIMPLE_ACTIONS[verb]
    rid = _request_id(request_id)
    async with conductor.sessions() as session:
        row, retried = await _new_action_on(
            session, instance_uuid, project_id, request_id, override_lock
        )
        if retried:
            return
        states.check_simple(action, row.uuid, row.vm_state, row.task_state)
        if not row.host:
            raise Conflict(f"Instance {row.uuid} has no host; cannot {verb} it.")
        now = datetime.now(UTC)
        extra: dict[str, Any] = {}
        changes: dict[str, Any] = {}
        if verb == "shelve" and image_id:
            # Before the snapshot is recorded: the disk was built from the server's own image.
            extra = {"image_id": image_id, "base_image": await _base_image(session, row)}
            changes["shelved_image_id"] = image_id
        await _guarded_update(
            session, row, verb, task_state=action.task.value, updated_at=now, **changes
        )
        _record_action(session, row, verb, rid, user_id, now)
        await outbox.add(session, commands.simple(verb, row.host, row.uuid, rid, **extra))
        await session.commit()
    conductor.wakeup.set()


async def unshelve(
    conductor: Conductor,
    instance_uuid: str,
    project_id: str,
    user_id: str,
    request_id: str,
    *,
    override_lock: bool = False,
    availability_zone: str | None = None,
    host: str = "",
) -> None:
    """A shelved server still on its host is powered on there (task unshelving, an unshelve
    command). An offloaded one is scheduled afresh, as a build is: task scheduling and a
    schedule message for its next attempt, in one transaction; the scheduler claims a host
    (in `availability_zone` when given, "" unpinning it; on `host` when given) and the
    host builds it again from its image. FAILED_PRECONDITION in any other state, or when a
    zone or host is asked for a server that is not offloaded. Idempotent per request_id."""
    rid = _request_id(request_id)
    action = states.SIMPLE_ACTIONS["unshelve"]
    async with conductor.sessions() as session:
        row, retried = await _new_action_on(
            session, instance_uuid, project_id, request_id, override_lock
        )
        if retried:
            return
        states.check_simple(action, row.uuid, row.vm_state, row.task_state)
        now = datetime.now(UTC)
        if row.vm_state == VmState.SHELVED:
            if availability_zone is not None or host:
                raise Conflict(
                    "Specifying an availability zone or a host when unshelving server "
                    f"{row.uuid} with status SHELVED is not supported. The server status "
                    "must be SHELVED_OFFLOADED."
                )
            if not row.host:
                raise Conflict(f"Instance {row.uuid} has no host; cannot unshelve it.")
            await _guarded_update(
                session, row, "unshelve", task_state=action.task.value, updated_at=now
            )
            _record_action(session, row, "unshelve", rid, user_id, now)
            await outbox.add(
                session,
                commands.simple(
                    "unshelve", row.host, row.uuid, rid, drop_image_id=row.shelved_image_id or ""
                ),
            )
        else:
            values: dict[str, object] = {
                "task_state": TaskState.SCHEDULING.value,
                "failed_hosts": [],
                "alternates": [],
                "force_host": host or None,
                "updated_at": now,
            }
            if availability_zone is not None:
                values["requested_availability_zone"] = availability_zone or None
                if not availability_zone:
                    values["availability_zone"] = None
            attempt = row.attempts + 1
            await _guarded_update(session, row, "unshelve", **values)
            _record_action(session, row, "unshelve", rid, user_id, now)
            await outbox.add(session, commands.schedule(row.uuid, attempt))
        await session.commit()
    conductor.wakeup.set()


async def rebuild(conductor: Conductor, request: servers_pb2.RebuildServerRequest) -> Instance:
    """Postcondition: the server records the new image (and the other given fields), its
    task is rebuilding, a rebuild action is recorded and the rebuild command is queued for
    its host, all together; or FAILED_PRECONDITION / INVALID_ARGUMENT and nothing changed.
    A retry with the same request_id is a no-op returning the server."""
    rid = _request_id(request.request_id)
    async with conductor.sessions() as session:
        row, retried = await _new_action_on(
            session, request.id, request.project_id, request.request_id, request.override_lock
        )
        if retried:
            return row
        states.check_rebuild(row.uuid, row.vm_state, row.task_state)
        if not row.host:
            raise Conflict(f"Instance {row.uuid} has no host; cannot rebuild it.")
        found = (
            await session.execute(
                select(Image, visible_to(row.project_id)).where(Image.id == request.image_id)
            )
        ).one_or_none()
        image = found[0] if found is not None else None
        if image is None or image.deleted or found is None or not found[1]:
            raise InvalidArgument(f"Image {request.image_id} could not be found.")
        if image.status != "active":
            raise InvalidArgument(f"Image {request.image_id} is not active.")
        if row.memory_mb < image.min_ram:
            raise InvalidArgument("Flavor's memory is too small for requested image.")
        if row.root_gb and row.root_gb < image.min_disk:
            raise InvalidArgument("Flavor's disk is too small for requested image.")
        values: dict[str, object] = {}
        if request.HasField("key_name"):
            key_data = None
            if request.key_name:
                key_data = (
                    await session.execute(
                        select(Keypair.public_key).where(
                            Keypair.user_id == (request.user_id or row.user_id),
                            Keypair.name == request.key_name,
                        )
                    )
                ).scalar_one_or_none()
                if key_data is None:
                    raise InvalidArgument(f"Invalid key_name provided: {request.key_name}")
            values["key_name"] = request.key_name or None
            values["key_data"] = key_data
        if request.metadata or request.replace_metadata:
            merged = (
                dict(request.metadata)
                if request.replace_metadata
                else {**(row.metadata_ or {}), **request.metadata}
            )
            limit = await limit_of(
                session, row.project_id, "metadata_items", conductor.cfg.conductor
            )
            check_metadata_items(len(merged), limit)
            values["metadata_"] = merged
        for field in ("name", "access_ipv4", "access_ipv6", "hostname"):
            if request.HasField(field):
                values[field] = getattr(request, field)
        if request.HasField("description"):
            values["description"] = request.description or None
        if request.HasField("user_data"):
            values["user_data"] = request.user_data or None
        props = dict(image.properties or {})
        now = datetime.now(UTC)
        power_on = row.vm_state != VmState.STOPPED
        await _guarded_update(
            session,
            row,
            "rebuild",
            task_state=TaskState.REBUILDING.value,
            updated_at=now,
        )
        for key, value in {
            **values,
            "image_id": image.id,
            "image_properties": {str(k): str(v) for k, v in props.items()},
            "kernel_id": str(props.get("kernel_id", "")),
            "ramdisk_id": str(props.get("ramdisk_id", "")),
            "task_state": TaskState.REBUILDING.value,
            "updated_at": now,
        }.items():
            setattr(row, key, value)
        _record_action(session, row, "rebuild", rid, user_id=request.user_id, now=now)
        await outbox.add(
            session,
            commands.rebuild(row.host, instance_spec(row, image), rid, power_on=power_on),
        )
        await session.commit()
    conductor.wakeup.set()
    return row


async def set_lock(
    conductor: Conductor,
    instance_uuid: str,
    project_id: str,
    user_id: str,
    request_id: str,
    *,
    locked: bool,
    locked_by: str = "owner",
    reason: str | None = None,
) -> None:
    """Locks or unlocks. Postcondition: locked, locked_by and locked_reason are stored and
    a lock/unlock action with its event is recorded; in any state (Nova locks servers in
    every state). Locking a locked server keeps the first lock's holder and reason;
    unlocking an unlocked one changes nothing. Idempotent per request_id."""
    verb = "lock" if locked else "unlock"
    rid = _request_id(request_id)
    async with conductor.sessions() as session:
        row = await load_instance(session, instance_uuid, project_id, for_update=_locks(session))
        if request_id and await _action_exists(session, row.uuid, rid):
            return
        now = datetime.now(UTC)
        if locked and not row.locked:
            row.locked, row.locked_by, row.locked_reason = True, locked_by, reason
            row.updated_at = now
        elif not locked and row.locked:
            row.locked, row.locked_by, row.locked_reason = False, None, None
            row.updated_at = now
        _record_action(session, row, verb, rid, user_id, now)
        await session.flush()
        await record_event(session, row.uuid, verb, f"api_{verb}", "Success")
        await session.execute(
            update(InstanceAction)
            .where(
                InstanceAction.instance_uuid == row.uuid,
                InstanceAction.request_id == rid,
            )
            .values(finish_time=now, updated_at=now)
        )
        await session.commit()


async def delete_server(
    conductor: Conductor,
    instance_uuid: str,
    project_id: str,
    user_id: str,
    request_id: str,
    *,
    override_lock: bool = False,
    force: bool = False,
) -> str:
    """Deletes in every state. With reclaim_instance_interval > 0 and not `force`, a
    launched server with no task on a host that is up is soft deleted instead: task
    soft-deleting and a power-off queued (the agent's answer makes it SOFT_DELETED), its
    claim and quota usage kept until the reclaim pass or a forceDelete deletes it;
    deleting a soft-deleted server again changes nothing. Otherwise, postcondition: with a
    host whose compute service is up, task_state is deleting and a delete command is
    queued (the agent's DELETED event finishes it); with a host that is down ("local
    delete"), or no host yet, the server is deleted at once and its claim released — a
    down host still gets the delete command, for when it returns. Idempotent: deleting a
    deleted server succeeds.

    Returns the snapshot a shelve took that the deleted server leaves (for the caller to
    delete with its bytes), or "" (none, or reported by an earlier delete)."""
    rid = _request_id(request_id)
    # Delete wins over whatever task raced it: a guard that lost simply looks again.
    for _ in range(5):
        try:
            return await _delete_once(
                conductor, instance_uuid, project_id, user_id, rid, override_lock, force
            )
        except states.InvalidState:
            continue
    raise Conflict(f"Instance {instance_uuid} kept changing; delete it again.")


async def _delete_once(
    conductor: Conductor,
    instance_uuid: str,
    project_id: str,
    user_id: str,
    rid: str,
    override_lock: bool,
    force: bool = False,
) -> str:
    release = False
    async with conductor.sessions() as session:
        # The instance and whether this request's action is recorded already, in ONE
        # statement (a delete storm pays it per server).
        found = (
            await session.execute(
                select(
                    Instance,
                    exists().where(
                        InstanceAction.instance_uuid == Instance.uuid,
                        InstanceAction.request_id == rid,
                    ),
                ).where(Instance.uuid == instance_uuid)
            )
        ).one_or_none()
        if found is None or (project_id and found[0].project_id != project_id):
            raise NotFound(f"Instance {instance_uuid} could not be found.")
        row, action_recorded = found[0], bool(found[1])
        if row.deleted:
            return ""
        shelved = row.shelved_image_id or ""
        check_lock(row, override_lock)
        # Whether the host is down is the scheduler's to say; a host it does not know, or
        # a scheduler that cannot answer, is not called down: nothing says so.
        if row.host and await conductor.scheduler.is_down(row.host):
            await _delete_locally(conductor, session, row, rid, user_id)
            return shelved
        if row.task_state == TaskState.DELETING:
            return ""
        now = datetime.now(UTC)
        soft = conductor.cfg.conductor.reclaim_instance_interval > 0 and not force
        if soft and row.vm_state == VmState.SOFT_DELETED:
            return ""  # already waiting to be reclaimed
        if (
            soft
            and row.host
            and row.launched_at is not None
            # A shelve's snapshot still held (an unshelve that failed on its host) goes with
            # a real delete, whose answer names it: the reclaim could not delete its bytes.
            and not shelved
            and states.check_soft_delete(row.vm_state, row.task_state)
        ):
            await _guarded_update(
                session,
                row,
                "delete",
                task_state=TaskState.SOFT_DELETING.value,
                deleted_at=now,
                updated_at=now,
            )
            if not action_recorded:
                _record_action(session, row, "delete", rid, user_id, now)
            await outbox.add(session, commands.stop(row.host, row.uuid, rid))
            await session.commit()
            conductor.wakeup.set()
            return ""
        if row.host:
            await _guarded_update(
                session, row, "delete", task_state=TaskState.DELETING.value, updated_at=now
            )
            command = commands.delete(row.host, row.uuid)
            if session.get_bind().dialect.name == "postgresql" and not action_recorded:
                # The delete command and the action in ONE statement (a writable CTE).
                await session.execute(
                    pg_insert(_OUTBOX)
                    .values(outbox.rows_of([command]))
                    .on_conflict_do_nothing(index_elements=["msg_id"])
                    .add_cte(
                        insert(_ACTIONS)
                        .values(_action_values(row, "delete", rid, user_id, now))
                        .cte("new_action")
                    )
                )
                action_recorded = True
            else:
                await outbox.add(session, command)
        else:
            # Conditional on host IS NULL: if the scheduling worker placed it meanwhile,
            # this matches nothing and the delete goes the host's way on the retry below.
            result = await session.execute(
                update(Instance)
                .where(Instance.id == row.id, Instance.host.is_(None), Instance.deleted.is_(False))
                .values(
                    vm_state=VmState.DELETED.value,
                    task_state=None,
                    deleted=True,
                    deleted_at=now,
                    terminated_at=now,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                # Read before the rollback: it expires the row, and reloading an expired
                # attribute is I/O an async session cannot do implicitly.
                seen = (row.vm_state, row.task_state)
                await session.rollback()
                raise states.InvalidState("delete", *seen)
            release = True
        if not action_recorded:
            _record_action(session, row, "delete", rid, user_id, now)
        # A deleted server's console tokens die with it, in the same transaction.
        await session.execute(
            delete(ConsoleAuthToken)
            .where(ConsoleAuthToken.instance_uuid == row.uuid)
            .execution_options(synchronize_session=False)
        )
        await session.commit()
    conductor.wakeup.set()
    if release:
        # A scheduling worker may hold a claim it has not recorded yet; it also releases
        # when it finds the instance deleted. Releasing is exactly-once on the scheduler.
        try:
            await conductor.scheduler.release(rid, instance_uuid)
        except Exception as exc:
            log.warning("release after delete failed: %s", exc, extra={"instance": instance_uuid})
        # A server that never got a host may still have ports (a failed build, a
        # reschedule that found no host); a worker binding them now releases them itself
        # when it finds the server deleted.
        try:
            await nics.release(conductor, row)
        except Exception as exc:
            log.warning(
                "releasing the ports of a deleted server failed: %s",
                exc,
                extra={"instance": instance_uuid},
            )
    return shelved


async def _delete_locally(
    conductor: Conductor, session: AsyncSession, row: Instance, rid: str, user_id: str
) -> None:
    """Nova's local delete: the host is down, so nobody would answer a delete command.
    The claim is released first (the scheduler releases exactly once; a lost commit is
    made good by the client's retry, which releases nothing more), then ONE transaction
    marks the server deleted, records the finished action and still queues the delete
    command for the host, whose agent removes the domain when it returns (its reconcile
    would also destroy it as an orphan). Also finishes a delete that was waiting for the
    host when it went down."""
    host = str(row.host)
    await session.commit()  # no connection held across the scheduler call
    await conductor.scheduler.release(f"{rid}-release", row.uuid)
    await nics.release(conductor, row)
    now = datetime.now(UTC)
    result = await session.execute(
        update(Instance)
        .where(Instance.id == row.id, Instance.host == host, Instance.deleted.is_(False))
        .values(
            vm_state=VmState.DELETED.value,
            task_state=None,
            power_state=int(PowerState.NOSTATE),
            deleted=True,
            deleted_at=now,
            terminated_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        # Deleted or moved to another host meanwhile: look again.
        seen = (row.vm_state, row.task_state)  # read before the rollback expires the row
        await session.rollback()
        raise states.InvalidState("delete", *seen)
    await outbox.add(session, commands.delete(host, row.uuid))
    if not await _action_exists(session, row.uuid, rid):
        _record_action(session, row, "delete", rid, user_id, now)
    await session.flush()
    await record_event(
        session,
        row.uuid,
        "delete",
        "conductor_local_delete",
        "Success",
        details=f"Compute host {host} is down; deleted locally.",
    )
    await session.execute(
        update(InstanceAction)
        .where(
            InstanceAction.instance_uuid == row.uuid,
            InstanceAction.action == "delete",
            InstanceAction.finish_time.is_(None),
        )
        .values(finish_time=now, updated_at=now)
    )
    await session.commit()
    conductor.wakeup.set()
    log.info("deleted locally: host is down", extra={"instance": row.uuid, "host": host})


async def restore_server(
    conductor: Conductor,
    instance_uuid: str,
    project_id: str,
    user_id: str,
    request_id: str,
    *,
    override_lock: bool = False,
) -> None:
    """Brings a soft-deleted server back. Postcondition: task restoring, deleted_at
    cleared, a `restore` action recorded and a power-on queued for its host, together (the
    agent's answer makes it ACTIVE); or FAILED_PRECONDITION and nothing changed. A retry
    with the same request_id is a no-op."""
    rid = _request_id(request_id)
    async with conductor.sessions() as session:
        row, retried = await _new_action_on(
            session, instance_uuid, project_id, request_id, override_lock
        )
        if retried:
            return
        states.check_restore(row.uuid, row.vm_state, row.task_state)
        if not row.host:
            raise Conflict(f"Instance {row.uuid} has no host; cannot restore it.")
        now = datetime.now(UTC)
        await _guarded_update(
            session,
            row,
            "restore",
            task_state=TaskState.RESTORING.value,
            deleted_at=None,
            updated_at=now,
        )
        _record_action(session, row, "restore", rid, user_id, now)
        await outbox.add(session, commands.start(row.host, row.uuid, rid))
        await session.commit()
    conductor.wakeup.set()


async def _base_image(session: AsyncSession, row: Instance) -> agent_bus_pb2.ImageRef:
    """The image the server's disk was built from, as its host needs it for a snapshot."""
    image = await session.get(Image, row.image_id) if row.image_id else None
    return image_ref(row, image)


async def snapshot_server(
    conductor: Conductor,
    instance_uuid: str,
    project_id: str,
    user_id: str,
    request_id: str,
    image_id: str,
    *,
    override_lock: bool = False,
    backup: agent_bus_pb2.BackupRotation | None = None,
) -> None:
    """Snapshots the server's root disk into the queued image `image_id`. Postcondition:
    task image_snapshot, a `createImage` action recorded and a snapshot command queued for
    its host, together (the agent's answer clears the task; the server keeps its state);
    or FAILED_PRECONDITION and nothing changed. With `backup` it is a backup: task
    image_backup, action `createBackup`, and the host rotates the server's backups once
    the image is uploaded. A retry with the same request_id is a no-op."""
    rid = _request_id(request_id)
    action = "createImage" if backup is None else "createBackup"
    task = TaskState.IMAGE_SNAPSHOT if backup is None else TaskState.IMAGE_BACKUP
    async with conductor.sessions() as session:
        row, retried = await _new_action_on(
            session, instance_uuid, project_id, request_id, override_lock
        )
        if retried:
            return
        states.check_snapshot(row.uuid, row.vm_state, row.task_state, action)
        if not row.host:
            raise Conflict(f"Instance {row.uuid} has no host; cannot snapshot it.")
        now = datetime.now(UTC)
        await _guarded_update(session, row, action, task_state=task.value, updated_at=now)
        _record_action(session, row, action, rid, user_id, now)
        base = await _base_image(session, row)
        await outbox.add(
            session, commands.snapshot(row.host, row.uuid, rid, image_id, base, backup)
        )
        await session.commit()
    conductor.wakeup.set()


async def inject_network_info(
    conductor: Conductor,
    instance_uuid: str,
    project_id: str,
    request_id: str,
    *,
    override_lock: bool = False,
) -> None:
    """Has the server's host wire its ports again (InjectNetworkInfoCommand). Postcondition:
    the command is queued for the host; no task, no state and no action change (the
    compute API records none). FAILED_PRECONDITION when the server has no host (being
    scheduled, offloaded) or is being deleted; a locked server needs `override_lock`."""
    rid = _request_id(request_id)
    async with conductor.sessions() as session:
        # The row is taken, as every command for an instance takes it, so the command's
        # outbox id (its Loom-Command-Seq) follows every command decided before it.
        row = await load_instance(session, instance_uuid, project_id, for_update=_locks(session))
        check_lock(row, override_lock)
        if row.task_state in (TaskState.DELETING.value, TaskState.SOFT_DELETING.value) or (
            row.vm_state == VmState.SOFT_DELETED
        ):
            raise Conflict(f"Instance {row.uuid} is being deleted; its network is not injected.")
        if not row.host:
            raise Conflict(f"Instance {row.uuid} has no host; cannot inject its network info.")
        await outbox.add(session, commands.simple("inject_network_info", row.host, row.uuid, rid))
        await session.commit()
    conductor.wakeup.set()


async def update_server(
    conductor: Conductor, instance_uuid: str, project_id: str, values: dict[str, object]
) -> Instance:
    """Postcondition: the given fields are stored; the others keep their value."""
    async with conductor.sessions() as session:
        row = await load_instance(session, instance_uuid, project_id)
        for key, value in values.items():
            setattr(row, key, value)
        row.updated_at = datetime.now(UTC)
        await session.commit()
        return row


async def set_metadata(
    conductor: Conductor,
    instance_uuid: str,
    project_id: str,
    items: dict[str, str],
    *,
    replace: bool,
    override_lock: bool = False,
) -> dict[str, str]:
    """Postcondition: metadata is items (replace) or items merged over the old; never more
    keys than the project's metadata_items limit."""
    async with conductor.sessions() as session:
        row = await load_instance(session, instance_uuid, project_id, for_update=_locks(session))
        check_lock(row, override_lock)
        merged = dict(items) if replace else {**(row.metadata_ or {}), **items}
        limit = await limit_of(session, row.project_id, "metadata_items", conductor.cfg.conductor)
        check_metadata_items(len(merged), limit)
        row.metadata_ = merged
        row.updated_at = datetime.now(UTC)
        await session.commit()
        return {str(k): str(v) for k, v in merged.items()}


async def delete_metadata_item(
    conductor: Conductor,
    instance_uuid: str,
    project_id: str,
    key: str,
    *,
    override_lock: bool = False,
) -> None:
    async with conductor.sessions() as session:
        row = await load_instance(session, instance_uuid, project_id, for_update=_locks(session))
        check_lock(row, override_lock)
        metadata = dict(row.metadata_ or {})
        if key not in metadata:
            raise NotFound(f"Metadata item was not found: {key}")
        del metadata[key]
        row.metadata_ = metadata
        row.updated_at = datetime.now(UTC)
        await session.commit()


MAX_TAGS = 50
MAX_TAG_LENGTH = 60


def check_tag(tag: str) -> None:
    """A tag is 1-60 characters with no "," or "/" (the compute API's rule)."""
    if not 1 <= len(tag) <= MAX_TAG_LENGTH or "," in tag or "/" in tag:
        raise InvalidArgument(
            f"Tag '{tag[:64]}' is invalid: a tag is 1-{MAX_TAG_LENGTH} characters without"
            " ',' or '/'."
        )


async def set_tags(
    conductor: Conductor,
    instance_uuid: str,
    project_id: str,
    tags: list[str],
    *,
    replace: bool,
    remove: list[str],
) -> tuple[list[str], bool]:
    """The server's tags after replacing them with `tags`, or adding `tags` and removing
    `remove`; and whether that changed them. Never more than MAX_TAGS; a building server
    is refused, as the compute API refuses it."""
    for tag in [*tags, *remove]:
        check_tag(tag)
    async with conductor.sessions() as session:
        row = await load_instance(session, instance_uuid, project_id, for_update=_locks(session))
        if row.vm_state == VmState.BUILDING:
            raise Conflict(
                f"Cannot 'update tags' instance {row.uuid} while it is in vm_state building"
            )
        old = [str(t) for t in row.tags or []]
        missing = [t for t in remove if t not in old]
        if missing:
            raise NotFound(f"Tag {missing[0][:64]} could not be found on the server.")
        new = list(dict.fromkeys(tags)) if replace else list(dict.fromkeys([*old, *tags]))
        new = [t for t in new if t not in remove]
        if len(new) > MAX_TAGS:
            raise InvalidArgument(f"The number of tags exceeded the per-server limit {MAX_TAGS}")
        changed = new != old
        if changed:
            row.tags = new
            row.updated_at = datetime.now(UTC)
        await session.commit()
        return new, changed


def _locks(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def reset_state(conductor: Conductor, instance_uuid: str, state: str) -> Instance:
    """An operator's reset (os-resetState): vm_state `state` ("active" or "error"), no task
    state, whatever the server was doing; nothing is sent to its host. The server as
    stored after it."""
    wanted = {"active": VmState.ACTIVE, "error": VmState.ERROR}.get(state)
    if wanted is None:
        raise InvalidArgument(f"state must be 'active' or 'error', not {state!r}")
    async with conductor.sessions() as session:
        row = await load_instance(session, instance_uuid, for_update=_locks(session))
        row.vm_state = wanted.value
        row.task_state = None
        row.updated_at = datetime.now(UTC)
        await session.commit()
        return row
