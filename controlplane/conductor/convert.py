"""Rows to protobuf, in one place: servers, instance specs, actions, faults, services."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from loom.common.v1 import common_pb2
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import fleet_pb2, servers_pb2
from sqlalchemy import Row

from controlplane.conductor.states import Status, TaskState, VmState, derive_status
from controlplane.db.dialect import as_utc as aware
from controlplane.db.models import Image, Instance, InstanceAction, InstanceActionEvent, Service

VM_STATE_PB = {
    VmState.BUILDING: servers_pb2.VM_STATE_BUILDING,
    VmState.ACTIVE: servers_pb2.VM_STATE_ACTIVE,
    VmState.STOPPED: servers_pb2.VM_STATE_STOPPED,
    VmState.ERROR: servers_pb2.VM_STATE_ERROR,
    VmState.DELETED: servers_pb2.VM_STATE_DELETED,
    VmState.PAUSED: servers_pb2.VM_STATE_PAUSED,
    VmState.SUSPENDED: servers_pb2.VM_STATE_SUSPENDED,
    VmState.RESIZED: servers_pb2.VM_STATE_RESIZED,
    VmState.SHELVED: servers_pb2.VM_STATE_SHELVED,
    VmState.SHELVED_OFFLOADED: servers_pb2.VM_STATE_SHELVED_OFFLOADED,
    VmState.SOFT_DELETED: servers_pb2.VM_STATE_SOFT_DELETED,
}
VM_STATE_FROM_PB = {v: k for k, v in VM_STATE_PB.items()}

TASK_STATE_PB = {
    TaskState.SCHEDULING: servers_pb2.TASK_STATE_SCHEDULING,
    TaskState.SPAWNING: servers_pb2.TASK_STATE_SPAWNING,
    TaskState.POWERING_OFF: servers_pb2.TASK_STATE_POWERING_OFF,
    TaskState.POWERING_ON: servers_pb2.TASK_STATE_POWERING_ON,
    TaskState.REBOOTING: servers_pb2.TASK_STATE_REBOOTING,
    TaskState.REBOOTING_HARD: servers_pb2.TASK_STATE_REBOOTING_HARD,
    TaskState.DELETING: servers_pb2.TASK_STATE_DELETING,
    TaskState.RESIZE_PREP: servers_pb2.TASK_STATE_RESIZE_PREP,
    TaskState.RESIZE_MIGRATING: servers_pb2.TASK_STATE_RESIZE_MIGRATING,
    TaskState.RESIZE_MIGRATED: servers_pb2.TASK_STATE_RESIZE_MIGRATED,
    TaskState.RESIZE_FINISH: servers_pb2.TASK_STATE_RESIZE_FINISH,
    TaskState.RESIZE_REVERTING: servers_pb2.TASK_STATE_RESIZE_REVERTING,
    TaskState.RESIZE_CONFIRMING: servers_pb2.TASK_STATE_RESIZE_CONFIRMING,
    TaskState.MIGRATING: servers_pb2.TASK_STATE_MIGRATING,
    TaskState.PAUSING: servers_pb2.TASK_STATE_PAUSING,
    TaskState.UNPAUSING: servers_pb2.TASK_STATE_UNPAUSING,
    TaskState.SUSPENDING: servers_pb2.TASK_STATE_SUSPENDING,
    TaskState.RESUMING: servers_pb2.TASK_STATE_RESUMING,
    TaskState.SHELVING: servers_pb2.TASK_STATE_SHELVING,
    TaskState.SHELVING_OFFLOADING: servers_pb2.TASK_STATE_SHELVING_OFFLOADING,
    TaskState.UNSHELVING: servers_pb2.TASK_STATE_UNSHELVING,
    TaskState.REBUILDING: servers_pb2.TASK_STATE_REBUILDING,
    TaskState.REBUILD_SPAWNING: servers_pb2.TASK_STATE_REBUILD_SPAWNING,
    TaskState.SOFT_DELETING: servers_pb2.TASK_STATE_SOFT_DELETING,
    TaskState.RESTORING: servers_pb2.TASK_STATE_RESTORING,
    TaskState.IMAGE_SNAPSHOT: servers_pb2.TASK_STATE_IMAGE_SNAPSHOT,
    TaskState.IMAGE_BACKUP: servers_pb2.TASK_STATE_IMAGE_BACKUP,
}

STATUS_PB = {
    Status.BUILD: servers_pb2.SERVER_STATUS_BUILD,
    Status.ACTIVE: servers_pb2.SERVER_STATUS_ACTIVE,
    Status.SHUTOFF: servers_pb2.SERVER_STATUS_SHUTOFF,
    Status.ERROR: servers_pb2.SERVER_STATUS_ERROR,
    Status.REBOOT: servers_pb2.SERVER_STATUS_REBOOT,
    Status.HARD_REBOOT: servers_pb2.SERVER_STATUS_HARD_REBOOT,
    Status.DELETED: servers_pb2.SERVER_STATUS_DELETED,
    Status.PAUSED: servers_pb2.SERVER_STATUS_PAUSED,
    Status.SUSPENDED: servers_pb2.SERVER_STATUS_SUSPENDED,
    Status.SHELVED: servers_pb2.SERVER_STATUS_SHELVED,
    Status.SHELVED_OFFLOADED: servers_pb2.SERVER_STATUS_SHELVED_OFFLOADED,
    Status.REBUILD: servers_pb2.SERVER_STATUS_REBUILD,
    Status.UNKNOWN: servers_pb2.SERVER_STATUS_UNKNOWN,
    Status.RESIZE: servers_pb2.SERVER_STATUS_RESIZE,
    Status.VERIFY_RESIZE: servers_pb2.SERVER_STATUS_VERIFY_RESIZE,
    Status.REVERT_RESIZE: servers_pb2.SERVER_STATUS_REVERT_RESIZE,
    Status.MIGRATING: servers_pb2.SERVER_STATUS_MIGRATING,
    Status.SOFT_DELETED: servers_pb2.SERVER_STATUS_SOFT_DELETED,
}
STATUS_FROM_PB = {v: k for k, v in STATUS_PB.items()}


def ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    out = Timestamp()
    out.FromDatetime(aware(value))
    return out


def instance_name(instance_id: int) -> str:
    """The hypervisor-side name, derived from the integer id as Nova's template does."""
    return f"instance-{instance_id:08x}"


def fault_pb(fault: dict[str, Any] | None) -> common_pb2.Fault | None:
    if not fault:
        return None
    out = common_pb2.Fault(
        code=int(fault.get("code", 500)),
        message=str(fault.get("message", "")),
        details=str(fault.get("details", "")),
    )
    created = fault.get("created_at")
    if created:
        out.created_at.FromDatetime(aware(datetime.fromisoformat(str(created))))
    return out


def make_fault(code: int, message: str, details: str = "") -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "details": details,
        "created_at": datetime.now(UTC).isoformat(),
    }


def server_pb(row: Instance | Row[Any]) -> servers_pb2.Server:
    """The Server message for an instance row; status derived, never stored."""
    vm = VmState(row.vm_state)
    task = TaskState(row.task_state) if row.task_state else None
    server = servers_pb2.Server(
        id=row.uuid,
        name=row.name,
        project_id=row.project_id,
        user_id=row.user_id,
        vm_state=VM_STATE_PB[vm],
        task_state=TASK_STATE_PB[task] if task else servers_pb2.TASK_STATE_UNSPECIFIED,
        power_state=agent_bus_pb2.PowerState.ValueType(row.power_state or 0),
        status=STATUS_PB[derive_status(row.vm_state, row.task_state)],
        flavor=servers_pb2.FlavorSnapshot(
            id=row.flavor_id,
            name=row.flavor_name,
            vcpus=row.vcpus,
            memory_mb=row.memory_mb,
            root_gb=row.root_gb,
            ephemeral_gb=row.ephemeral_gb,
            swap_mb=row.swap_mb,
            extra_specs={str(k): str(v) for k, v in (row.flavor_extra_specs or {}).items()},
        ),
        image_id=row.image_id,
        image_properties={str(k): str(v) for k, v in (row.image_properties or {}).items()},
        host=row.host or "",
        node=row.node or "",
        availability_zone=row.availability_zone or row.requested_availability_zone or "",
        key_name=row.key_name or "",
        metadata={str(k): str(v) for k, v in (row.metadata_ or {}).items()},
        addresses=[
            servers_pb2.ServerAddress(
                network=str(a.get("network", "")),
                address=str(a.get("address", "")),
                version=int(a.get("version", 4)),
                mac_address=str(a.get("mac_address", "")),
                type=str(a.get("type", "fixed")),
            )
            for a in (row.addresses or [])
        ],
        reservation_id=row.reservation_id,
        launch_index=row.launch_index,
        hostname=row.hostname,
        user_data=row.user_data or "",
        description=row.description or "",
        locked=row.locked,
        locked_reason=row.locked_reason or "",
        locked_by=row.locked_by or "",
        instance_name=instance_name(row.id),
        tags=[str(t) for t in (row.tags or [])],
        access_ipv4=row.access_ipv4,
        access_ipv6=row.access_ipv6,
        config_drive=row.config_drive,
        kernel_id=row.kernel_id,
        ramdisk_id=row.ramdisk_id,
        server_group_id=row.server_group_id or "",
        same_host=[str(v) for v in (row.scheduler_hints or {}).get("same_host") or []],
        different_host=[str(v) for v in (row.scheduler_hints or {}).get("different_host") or []],
        attempts=row.attempts,
        deleted=row.deleted,
    )
    for stamp, value in (
        (server.created_at, row.created_at),
        (server.updated_at, row.updated_at),
        (server.launched_at, row.launched_at),
        (server.terminated_at, row.terminated_at),
    ):
        if value is not None:
            stamp.FromDatetime(aware(value))
    fault = fault_pb(row.fault)
    if fault is not None:
        server.fault.CopyFrom(fault)
    return server


def image_ref(row: Instance, image: Image | None) -> agent_bus_pb2.ImageRef:
    """The image an agent builds the instance's disk from: the image row given (a shelved
    server's snapshot), else the server's own id with what its row knows."""
    props = dict(image.properties or {}) if image is not None else {}
    ref = agent_bus_pb2.ImageRef(
        id=image.id if image is not None else row.image_id,
        kernel_id=row.kernel_id,
        ramdisk_id=row.ramdisk_id,
        properties={str(k): str(v) for k, v in props.items() if str(k).startswith(("hw_", "os_"))},
    )
    if image is not None:
        ref.disk_format = image.disk_format or ""
        ref.size = image.size or 0
        ref.hash_value = image.os_hash_value or ""
        ref.hash_algo = image.os_hash_algo or ""
    return ref


def instance_spec(row: Instance, image: Image | None, zone: str = "") -> agent_bus_pb2.InstanceSpec:
    """Everything an agent needs to build the instance, from its row and its image's row.
    `zone` is the availability zone of the placement being made, when the row does not
    hold it yet."""
    return agent_bus_pb2.InstanceSpec(
        instance_id=row.uuid,
        instance_name=instance_name(row.id),
        project_id=row.project_id,
        vcpus=row.vcpus,
        memory_mb=row.memory_mb,
        root_gb=row.root_gb,
        ephemeral_gb=row.ephemeral_gb,
        swap_mb=row.swap_mb,
        image=image_ref(row, image),
        user_data=row.user_data or "",
        key_data=row.key_data or "",
        metadata={str(k): str(v) for k, v in (row.metadata_ or {}).items()},
        hostname=row.hostname,
        display_name=row.name,
        config_drive=bool(row.config_drive),
        key_name=row.key_name or "",
        availability_zone=zone or row.availability_zone or row.requested_availability_zone or "",
        launch_index=row.launch_index or 0,
        # The NICs as last bound (a new host's build binds them there first: nics.py).
        ports=[
            json_format.ParseDict(n["binding"], agent_bus_pb2.PortBinding())
            for n in row.network_info or []
            if n.get("binding")
        ],
    )


def action_pb(
    action: InstanceAction, events: list[InstanceActionEvent] | None = None
) -> servers_pb2.InstanceAction:
    out = servers_pb2.InstanceAction(
        action=action.action,
        instance_id=action.instance_uuid,
        request_id=action.request_id,
        user_id=action.user_id,
        project_id=action.project_id,
        message=action.message or "",
    )
    out.start_time.CopyFrom(ts(action.start_time) or Timestamp())
    if action.updated_at is not None:
        out.updated_at.CopyFrom(ts(action.updated_at) or Timestamp())
    for ev in events or []:
        e = out.events.add(
            event=ev.event, result=ev.result or "", host=ev.host or "", details=ev.details or ""
        )
        e.start_time.CopyFrom(ts(ev.start_time) or Timestamp())
        if ev.finish_time is not None:
            e.finish_time.CopyFrom(ts(ev.finish_time) or Timestamp())
    return out


def service_pb(row: Service, *, up: bool) -> fleet_pb2.Service:
    out = fleet_pb2.Service(
        id=row.id,
        uuid=row.uuid,
        binary=row.binary,
        host=row.host,
        zone=row.zone,
        enabled=not row.disabled,
        up=up,
        disabled_reason=row.disabled_reason or "",
        forced_down=row.forced_down,
    )
    if row.last_seen_up is not None:
        out.updated_at.CopyFrom(ts(row.last_seen_up) or Timestamp())
    out.created_at.CopyFrom(ts(row.created_at) or Timestamp())
    return out
