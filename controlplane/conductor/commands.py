"""The messages the conductor sends, with message ids that make a resend a no-op.

Ids are derived from what the message means (instance, attempt, host, request), so the
same decision taken twice (a redelivered event, a retried request) yields the same id and
JetStream keeps only one copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import conductor_bus_pb2

from controlplane.conductor.outbox import Outgoing
from controlplane.runtime import bus

SCHEDULE_SUBJECT = bus.conductor_subject("schedule")


def schedule(instance_uuid: str, attempt: int) -> Outgoing:
    """Asks the scheduling worker to place the instance for this build attempt."""
    msg_id = f"schedule-{instance_uuid}-{attempt}"
    payload = conductor_bus_pb2.ScheduleInstanceMessage(
        request_id=msg_id, instance_id=instance_uuid, attempt=attempt
    )
    return Outgoing(SCHEDULE_SUBJECT, msg_id, payload)


def build(
    host: str,
    spec: agent_bus_pb2.InstanceSpec,
    attempt: int,
    dhcp: Sequence[agent_bus_pb2.NetworkDhcp] = (),
    drop_image_id: str = "",
) -> Outgoing:
    msg_id = f"build-{spec.instance_id}-{attempt}"
    payload = agent_bus_pb2.BuildInstanceCommand(
        request_id=msg_id,
        spec=spec,
        attempt=attempt,
        dhcp=list(dhcp),
        drop_image_id=drop_image_id,
    )
    return Outgoing(bus.compute_subject(host, "build"), msg_id, payload)


def delete(host: str, instance_uuid: str, *, after: str = "") -> Outgoing:
    """One delete per (instance, host) is enough for the user's delete (the agent's is
    idempotent). `after` names what made a further one necessary (the id of the event
    of a domain that came back): its own message id, so JetStream does not drop it as a
    resend of the first within its duplicate window."""
    msg_id = f"delete-{instance_uuid}-{host}" + (f"-after-{after}" if after else "")
    payload = agent_bus_pb2.DeleteInstanceCommand(request_id=msg_id, instance_id=instance_uuid)
    return Outgoing(bus.compute_subject(host, "delete"), msg_id, payload)


def start(host: str, instance_uuid: str, request_id: str) -> Outgoing:
    msg_id = f"start-{instance_uuid}-{request_id}"
    payload = agent_bus_pb2.StartInstanceCommand(request_id=msg_id, instance_id=instance_uuid)
    return Outgoing(bus.compute_subject(host, "start"), msg_id, payload)


def stop(host: str, instance_uuid: str, request_id: str) -> Outgoing:
    msg_id = f"stop-{instance_uuid}-{request_id}"
    payload = agent_bus_pb2.StopInstanceCommand(request_id=msg_id, instance_id=instance_uuid)
    return Outgoing(bus.compute_subject(host, "stop"), msg_id, payload)


def reboot(host: str, instance_uuid: str, request_id: str, *, hard: bool) -> Outgoing:
    msg_id = f"reboot-{instance_uuid}-{request_id}"
    payload = agent_bus_pb2.RebootInstanceCommand(
        request_id=msg_id,
        instance_id=instance_uuid,
        reboot_type=agent_bus_pb2.REBOOT_TYPE_HARD if hard else agent_bus_pb2.REBOOT_TYPE_SOFT,
    )
    return Outgoing(bus.compute_subject(host, "reboot"), msg_id, payload)


_SIMPLE_COMMANDS = {
    "pause": agent_bus_pb2.PauseInstanceCommand,
    "unpause": agent_bus_pb2.UnpauseInstanceCommand,
    "suspend": agent_bus_pb2.SuspendInstanceCommand,
    "resume": agent_bus_pb2.ResumeInstanceCommand,
    "shelve": agent_bus_pb2.ShelveInstanceCommand,
    "shelve_offload": agent_bus_pb2.ShelveOffloadInstanceCommand,
    "unshelve": agent_bus_pb2.UnshelveInstanceCommand,
    "inject_network_info": agent_bus_pb2.InjectNetworkInfoCommand,
}


def simple(verb: str, host: str, instance_uuid: str, request_id: str, **fields: Any) -> Outgoing:
    """pause, unpause, suspend, resume, shelve, shelve_offload, unshelve (of a server
    still on its host) or inject_network_info: each carries the instance, and `fields` of
    its own (a shelve's snapshot image, an unshelve's image to drop)."""
    msg_id = f"{verb}-{instance_uuid}-{request_id}"
    payload = _SIMPLE_COMMANDS[verb](request_id=msg_id, instance_id=instance_uuid, **fields)
    return Outgoing(bus.compute_subject(host, verb), msg_id, payload)


def snapshot(
    host: str,
    instance_uuid: str,
    request_id: str,
    image_id: str,
    base: agent_bus_pb2.ImageRef,
    backup: agent_bus_pb2.BackupRotation | None = None,
) -> Outgoing:
    msg_id = f"snapshot-{instance_uuid}-{request_id}"
    payload = agent_bus_pb2.SnapshotInstanceCommand(
        request_id=msg_id, instance_id=instance_uuid, image_id=image_id, base_image=base
    )
    if backup is not None:
        payload.backup.CopyFrom(backup)
    return Outgoing(bus.compute_subject(host, "snapshot"), msg_id, payload)


def rebuild(
    host: str, spec: agent_bus_pb2.InstanceSpec, request_id: str, *, power_on: bool
) -> Outgoing:
    msg_id = f"rebuild-{spec.instance_id}-{request_id}"
    payload = agent_bus_pb2.RebuildInstanceCommand(request_id=msg_id, spec=spec, power_on=power_on)
    return Outgoing(bus.compute_subject(host, "rebuild"), msg_id, payload)


def refresh_port_security(host: str, bindings: Sequence[agent_bus_pb2.PortBinding]) -> Outgoing:
    """The current bindings of the host's ports a security change touched. One take of
    changes gives one revision to all its bindings: the id is the host and that revision."""
    revision = max((b.security_revision for b in bindings), default=0)
    msg_id = f"port-security-{host}-{revision}"
    payload = agent_bus_pb2.RefreshPortSecurityCommand(request_id=msg_id, ports=list(bindings))
    return Outgoing(bus.compute_subject(host, "port_security"), msg_id, payload)


def refresh_routers(host: str, routers: Sequence[agent_bus_pb2.RouterBinding]) -> Outgoing:
    """The current bindings of the routers a change touched, for the host serving them;
    one take gives one revision to all: the id is the host and that revision."""
    revision = max((r.revision for r in routers), default=0)
    msg_id = f"routers-{host}-{revision}"
    payload = agent_bus_pb2.RefreshRoutersCommand(request_id=msg_id, routers=list(routers))
    return Outgoing(bus.compute_subject(host, "routers"), msg_id, payload)
