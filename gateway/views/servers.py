"""Nova's server bodies per microversion, from the conductor's Server message."""

from __future__ import annotations

import hashlib
from typing import Any

from loom.conductor.v1 import servers_pb2
from starlette.requests import Request

from gateway.compute.common import COMPUTE, links
from gateway.compute.views_time import iso_micro, iso_z
from gateway.microversion import Microversion
from gateway.state import base_url
from gateway.views import image_properties

VM_STATES = {
    servers_pb2.VM_STATE_BUILDING: "building",
    servers_pb2.VM_STATE_ACTIVE: "active",
    servers_pb2.VM_STATE_STOPPED: "stopped",
    servers_pb2.VM_STATE_ERROR: "error",
    servers_pb2.VM_STATE_DELETED: "deleted",
    servers_pb2.VM_STATE_PAUSED: "paused",
    servers_pb2.VM_STATE_SUSPENDED: "suspended",
    servers_pb2.VM_STATE_RESIZED: "resized",
    servers_pb2.VM_STATE_SHELVED: "shelved",
    servers_pb2.VM_STATE_SHELVED_OFFLOADED: "shelved_offloaded",
    servers_pb2.VM_STATE_SOFT_DELETED: "soft-delete",
}
TASK_STATES = {
    servers_pb2.TASK_STATE_SCHEDULING: "scheduling",
    servers_pb2.TASK_STATE_SPAWNING: "spawning",
    servers_pb2.TASK_STATE_POWERING_OFF: "powering-off",
    servers_pb2.TASK_STATE_POWERING_ON: "powering-on",
    servers_pb2.TASK_STATE_REBOOTING: "rebooting",
    servers_pb2.TASK_STATE_REBOOTING_HARD: "rebooting_hard",
    servers_pb2.TASK_STATE_DELETING: "deleting",
    servers_pb2.TASK_STATE_NETWORKING: "networking",
    servers_pb2.TASK_STATE_BLOCK_DEVICE_MAPPING: "block_device_mapping",
    servers_pb2.TASK_STATE_RESIZE_PREP: "resize_prep",
    servers_pb2.TASK_STATE_RESIZE_MIGRATING: "resize_migrating",
    servers_pb2.TASK_STATE_RESIZE_MIGRATED: "resize_migrated",
    servers_pb2.TASK_STATE_RESIZE_FINISH: "resize_finish",
    servers_pb2.TASK_STATE_RESIZE_REVERTING: "resize_reverting",
    servers_pb2.TASK_STATE_RESIZE_CONFIRMING: "resize_confirming",
    servers_pb2.TASK_STATE_MIGRATING: "migrating",
    servers_pb2.TASK_STATE_PAUSING: "pausing",
    servers_pb2.TASK_STATE_UNPAUSING: "unpausing",
    servers_pb2.TASK_STATE_SUSPENDING: "suspending",
    servers_pb2.TASK_STATE_RESUMING: "resuming",
    servers_pb2.TASK_STATE_SHELVING: "shelving",
    servers_pb2.TASK_STATE_SHELVING_OFFLOADING: "shelving_offloading",
    servers_pb2.TASK_STATE_UNSHELVING: "unshelving",
    servers_pb2.TASK_STATE_REBUILDING: "rebuilding",
    servers_pb2.TASK_STATE_REBUILD_SPAWNING: "rebuild_spawning",
    servers_pb2.TASK_STATE_SOFT_DELETING: "soft-deleting",
    servers_pb2.TASK_STATE_RESTORING: "restoring",
    servers_pb2.TASK_STATE_IMAGE_SNAPSHOT: "image_snapshot",
    servers_pb2.TASK_STATE_IMAGE_BACKUP: "image_backup",
}
STATUSES = {
    servers_pb2.SERVER_STATUS_BUILD: "BUILD",
    servers_pb2.SERVER_STATUS_ACTIVE: "ACTIVE",
    servers_pb2.SERVER_STATUS_SHUTOFF: "SHUTOFF",
    servers_pb2.SERVER_STATUS_ERROR: "ERROR",
    servers_pb2.SERVER_STATUS_REBOOT: "REBOOT",
    servers_pb2.SERVER_STATUS_HARD_REBOOT: "HARD_REBOOT",
    servers_pb2.SERVER_STATUS_DELETED: "DELETED",
    servers_pb2.SERVER_STATUS_PAUSED: "PAUSED",
    servers_pb2.SERVER_STATUS_SUSPENDED: "SUSPENDED",
    servers_pb2.SERVER_STATUS_SHELVED: "SHELVED",
    servers_pb2.SERVER_STATUS_SHELVED_OFFLOADED: "SHELVED_OFFLOADED",
    servers_pb2.SERVER_STATUS_REBUILD: "REBUILD",
    servers_pb2.SERVER_STATUS_UNKNOWN: "UNKNOWN",
    servers_pb2.SERVER_STATUS_RESIZE: "RESIZE",
    servers_pb2.SERVER_STATUS_VERIFY_RESIZE: "VERIFY_RESIZE",
    servers_pb2.SERVER_STATUS_REVERT_RESIZE: "REVERT_RESIZE",
    servers_pb2.SERVER_STATUS_MIGRATING: "MIGRATING",
    servers_pb2.SERVER_STATUS_SOFT_DELETED: "SOFT_DELETED",
}
STATUS_BY_NAME = {v: k for k, v in STATUSES.items()}


# The statuses whose servers show `progress`, and its value: a step under way is at 0.
_PROGRESS = {
    servers_pb2.SERVER_STATUS_BUILD: 0,
    servers_pb2.SERVER_STATUS_REBUILD: 0,
    servers_pb2.SERVER_STATUS_RESIZE: 0,
    servers_pb2.SERVER_STATUS_ACTIVE: 100,
    servers_pb2.SERVER_STATUS_VERIFY_RESIZE: 100,
}


def host_id(project_id: str, host: str) -> str:
    """Nova's hostId: opaque per project, so tenants cannot map hosts across projects."""
    if not host:
        return ""
    return hashlib.sha224((project_id + host).encode()).hexdigest()


def addresses(server: servers_pb2.Server) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for a in server.addresses:
        out.setdefault(a.network, []).append(
            {
                "version": a.version,
                "addr": a.address,
                "OS-EXT-IPS:type": a.type or "fixed",
                "OS-EXT-IPS-MAC:mac_addr": a.mac_address,
            }
        )
    return out


def _flavor(request: Request, server: servers_pb2.Server, mv: Microversion) -> dict[str, Any]:
    f = server.flavor
    if not mv.at_least("2.47"):
        return {
            "id": f.id,
            "links": [{"href": f"{base_url(request)}{COMPUTE}/flavors/{f.id}", "rel": "bookmark"}],
        }
    return {
        "vcpus": f.vcpus,
        "ram": f.memory_mb,
        "disk": f.root_gb,
        "ephemeral": f.ephemeral_gb,
        "swap": f.swap_mb,
        "original_name": f.name,
        "extra_specs": dict(f.extra_specs),
    }


def _image(request: Request, server: servers_pb2.Server, mv: Microversion) -> dict[str, Any] | str:
    if not server.image_id:
        # Volume-backed servers show an empty string, as Nova does.
        return ""
    image: dict[str, Any] = {
        "id": server.image_id,
        "links": [
            {"href": f"{base_url(request)}{COMPUTE}/images/{server.image_id}", "rel": "bookmark"}
        ],
    }
    if mv.at_least("2.98"):
        image["properties"] = image_properties.shown(dict(server.image_properties))
    return image


def scheduler_hints(server: servers_pb2.Server) -> dict[str, list[str]]:
    """The hints the server was created with (2.100), values as lists: Loom honours
    `group`, `same_host` and `different_host`, and refuses the others at creation, so these
    are all there is to show."""
    hints: dict[str, list[str]] = {}
    if server.server_group_id:
        hints["group"] = [server.server_group_id]
    if server.same_host:
        hints["same_host"] = list(server.same_host)
    if server.different_host:
        hints["different_host"] = list(server.different_host)
    return hints


def fault(server: servers_pb2.Server, is_admin: bool) -> dict[str, Any] | None:
    if not server.HasField("fault") or server.status not in (
        servers_pb2.SERVER_STATUS_ERROR,
        servers_pb2.SERVER_STATUS_DELETED,
    ):
        return None
    body: dict[str, Any] = {
        "code": server.fault.code,
        "message": server.fault.message,
        "created": iso_z(server.fault.created_at),
    }
    # Details of internal failures are for operators only, as Nova has it.
    if server.fault.details and (is_admin or server.fault.code != 500):
        body["details"] = server.fault.details
    return body


def brief(request: Request, server: servers_pb2.Server) -> dict[str, Any]:
    return {"id": server.id, "name": server.name, "links": links(request, "servers", server.id)}


def detail(
    request: Request,
    server: servers_pb2.Server,
    mv: Microversion,
    *,
    is_admin: bool,
    host_status: str | None = None,
    listed: bool = False,
    security_groups: list[str] | None = None,
) -> dict[str, Any]:
    """One server's full body; `listed` for an item of GET /servers/detail, which leaves
    out what only a single server's body carries (its server groups). `security_groups`:
    its ports' groups' names; None (no port) leaves the key out, as Nova does."""
    body = brief(request, server)
    body.update(
        {
            "status": STATUSES.get(server.status, "UNKNOWN"),
            "tenant_id": server.project_id,
            "user_id": server.user_id,
            "metadata": dict(server.metadata),
            "hostId": host_id(server.project_id, server.host),
            "image": _image(request, server, mv),
            "flavor": _flavor(request, server, mv),
            "created": iso_z(server.created_at),
            "updated": iso_z(server.updated_at) or iso_z(server.created_at),
            "addresses": addresses(server),
            "accessIPv4": server.access_ipv4,
            "accessIPv6": server.access_ipv6,
            "key_name": server.key_name or None,
            "config_drive": server.config_drive,
            # The root disk is the image as it is: its partition is never grown.
            "OS-DCF:diskConfig": "MANUAL",
            "OS-EXT-AZ:availability_zone": server.availability_zone,
            "OS-EXT-STS:vm_state": VM_STATES.get(server.vm_state, "error"),
            "OS-EXT-STS:task_state": TASK_STATES.get(server.task_state),
            "OS-EXT-STS:power_state": int(server.power_state),
            "OS-SRV-USG:launched_at": iso_micro(server.launched_at),
            "OS-SRV-USG:terminated_at": iso_micro(server.terminated_at),
            "os-extended-volumes:volumes_attached": [],
        }
    )
    progress = _PROGRESS.get(server.status)
    if progress is not None:
        body["progress"] = progress
    f = fault(server, is_admin)
    if f is not None:
        body["fault"] = f
    if is_admin:
        body.update(
            {
                "OS-EXT-SRV-ATTR:host": server.host or None,
                "OS-EXT-SRV-ATTR:hypervisor_hostname": server.node or None,
                "OS-EXT-SRV-ATTR:instance_name": server.instance_name,
            }
        )
        if mv.at_least("2.3"):
            body.update(
                {
                    "OS-EXT-SRV-ATTR:reservation_id": server.reservation_id,
                    "OS-EXT-SRV-ATTR:launch_index": server.launch_index,
                    "OS-EXT-SRV-ATTR:kernel_id": server.kernel_id,
                    "OS-EXT-SRV-ATTR:ramdisk_id": server.ramdisk_id,
                    "OS-EXT-SRV-ATTR:root_device_name": "/dev/vda",
                    "OS-EXT-SRV-ATTR:user_data": server.user_data or None,
                }
            )
    if mv.at_least("2.3") and (is_admin or mv.at_least("2.90")):
        # From 2.90 every caller may see (and set) the hostname.
        body["OS-EXT-SRV-ATTR:hostname"] = server.hostname
    if mv.at_least("2.9"):
        body["locked"] = server.locked
    if mv.at_least("2.16") and is_admin:
        body["host_status"] = host_status if host_status is not None else ""
    if mv.at_least("2.19"):
        body["description"] = server.description or None
    if mv.at_least("2.26"):
        body["tags"] = list(server.tags)
    if mv.at_least("2.63"):
        body["trusted_image_certificates"] = None
    if mv.at_least("2.71") and not listed:
        body["server_groups"] = [server.server_group_id] if server.server_group_id else []
    if mv.at_least("2.73"):
        body["locked_reason"] = server.locked_reason or None
    if mv.at_least("2.96"):
        body["pinned_availability_zone"] = server.availability_zone or None
    if mv.at_least("2.100"):
        body["scheduler_hints"] = scheduler_hints(server)
    if mv.at_least("2.3"):
        # The delete_on_termination flag shows from 2.3 (Loom has no volumes yet).
        body["os-extended-volumes:volumes_attached"] = []
    if security_groups is not None:
        body["security_groups"] = [{"name": n} for n in security_groups]
    return body


# The PUT /servers/{id} body before 2.75: the server's own fields without the extended
# attributes (OS-EXT-*, OS-SRV-USG, security groups, volumes); from 2.75 it is the full
# body that GET shows.
_COMPACT_FIELDS = frozenset(
    {
        "id",
        "name",
        "status",
        "image",
        "flavor",
        "fault",
        "user_id",
        "tenant_id",
        "created",
        "updated",
        "progress",
        "metadata",
        "links",
        "addresses",
        "hostId",
        "OS-DCF:diskConfig",
        "accessIPv4",
        "accessIPv6",
        "locked",
        "description",
        "tags",
        "trusted_image_certificates",
        "server_groups",
        "locked_reason",
    }
)


def updated(
    request: Request,
    server: servers_pb2.Server,
    mv: Microversion,
    *,
    is_admin: bool,
    host_status: str | None = None,
    security_groups: list[str] | None = None,
) -> dict[str, Any]:
    """The body of an update's response for the given microversion (its security groups
    from 2.75, as a show's)."""
    body = detail(
        request,
        server,
        mv,
        is_admin=is_admin,
        host_status=host_status,
        security_groups=security_groups,
    )
    if mv.at_least("2.75"):
        return body
    compact = {k: v for k, v in body.items() if k in _COMPACT_FIELDS}
    compact["addresses"] = {
        net: [{"version": a["version"], "addr": a["addr"]} for a in addrs]
        for net, addrs in body["addresses"].items()
    }
    return compact


def rebuilt(
    request: Request,
    server: servers_pb2.Server,
    mv: Microversion,
    *,
    is_admin: bool,
    admin_pass: str,
    host_status: str | None = None,
    security_groups: list[str] | None = None,
) -> dict[str, Any]:
    """The body of a rebuild's 202: the update's body for the microversion, plus key_name
    (2.54+), user_data (2.57+; it replaces OS-EXT-SRV-ATTR:user_data from 2.75) and the
    admin password."""
    body = updated(
        request,
        server,
        mv,
        is_admin=is_admin,
        host_status=host_status,
        security_groups=security_groups,
    )
    if mv.at_least("2.54"):
        body["key_name"] = server.key_name or None
    if mv.at_least("2.57"):
        body.pop("OS-EXT-SRV-ATTR:user_data", None)
        body["user_data"] = server.user_data or None
    body["adminPass"] = admin_pass
    return body
