"""Compute servers: create (with the 2.37 networks rules), list and detail with their
filters, show, update, delete, power actions, metadata, ips and instance actions."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import secrets
import uuid
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import fleet_pb2, servers_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext
from gateway.compute import (
    consoles,
    floating_ips,
    migrations,
    server_images,
    server_networks,
    server_security_groups,
)
from gateway.compute.common import context, empty, links, next_link, ok
from gateway.compute.views_time import iso_micro
from gateway.conductor import call
from gateway.errors import ApiError, BadRequest, Forbidden, NotFound
from gateway.microversion import Microversion
from gateway.routing import (
    ADMIN,
    MEMBER,
    READER,
    Policy,
    Rule,
    checked_body,
    checked_query,
    documented,
)
from gateway.state import gateway_of, json_body, microversion, request_id
from gateway.validation import Query, QueryParam, VersionedSchema, compile_schema
from gateway.validation.booleans import BOOLEAN_SCHEMA, TRUE_WORDS
from gateway.validation.schema import shorten
from gateway.views import servers as views

_NAME = {"type": "string", "minLength": 1, "maxLength": 255, "format": "name"}
# How many items: the project's metadata_items quota, which the conductor checks (403).
# Keys of 1-255 of these characters, values up to 255 characters (the compute API's rule).
_META = {
    "type": "object",
    "patternProperties": {"^[a-zA-Z0-9-_:. ]{1,255}$": {"type": "string", "maxLength": 255}},
    "additionalProperties": False,
}
_UUID = {"type": "string", "format": "uuid"}
# Servers one same_host or different_host hint may name (Nova sets no bound; the
# conductor and the scheduler take this many).
MAX_HINT_SERVERS = 1000
# same_host and different_host: one server UUID, or a list of them (Nova's schema).
_SERVERS_HINT = {"oneOf": [_UUID, {"type": "array", "items": _UUID, "maxItems": MAX_HINT_SERVERS}]}
_IP_ADDRESS = {"type": "string", "oneOf": [{"format": "ipv4"}, {"format": "ipv6"}]}
_HOSTNAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    "pattern": r"^[a-zA-Z0-9][a-zA-Z0-9.-]*$",
}
# Clients (the openstack CLI among them) describe "boot from this image on local disk"
# as a block device mapping; that one form is accepted, since Loom has no volumes.
_BDM = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "uuid": {"type": "string", "pattern": "^[0-9a-fA-F-]{32,36}$"},
        "boot_index": {"type": ["integer", "string", "null"]},
        "source_type": {"type": "string", "enum": ["image", "blank", "volume", "snapshot"]},
        "destination_type": {"type": "string", "enum": ["local", "volume"]},
        "delete_on_termination": BOOLEAN_SCHEMA,
        "device_name": {"type": ["string", "null"]},
        "device_type": {"type": ["string", "null"]},
        "disk_bus": {"type": ["string", "null"]},
        "guest_format": {"type": ["string", "null"]},
        "volume_size": {"type": ["integer", "string", "null"]},
        "tag": {"type": "string"},
        "no_device": {},
    },
}
_NETWORK_ITEM = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "uuid": _UUID,
        "port": {"type": ["string", "null"], "format": "uuid"},
        "fixed_ip": _IP_ADDRESS,
        "tag": {"type": "string", "maxLength": 60},
    },
}


def _create_schema(mv: Microversion) -> dict[str, Any]:
    networks: dict[str, Any] = {"type": "array", "items": _NETWORK_ITEM}
    if mv.at_least("2.37"):
        networks = {"anyOf": [networks, {"type": "string", "enum": ["auto", "none"]}]}
    fields: dict[str, Any] = {
        "name": _NAME,
        "imageRef": {"oneOf": [_UUID, {"type": "string", "maxLength": 0}]},
        "flavorRef": {"type": ["string", "integer"], "minLength": 1},
        "adminPass": {"type": "string"},
        "metadata": _META,
        "networks": networks,
        "OS-DCF:diskConfig": {"type": "string", "enum": ["AUTO", "MANUAL"]},
        "accessIPv4": {"type": "string", "format": "ipv4"},
        "accessIPv6": {"type": "string", "format": "ipv6"},
        "availability_zone": {"type": "string", "minLength": 1, "maxLength": 255},
        "key_name": _NAME,
        "user_data": {"type": "string", "maxLength": 65535},
        "config_drive": BOOLEAN_SCHEMA,
        "min_count": {"type": ["integer", "string"], "pattern": "^[0-9]+$", "minimum": 1},
        "max_count": {"type": ["integer", "string"], "pattern": "^[0-9]+$", "minimum": 1},
        "return_reservation_id": BOOLEAN_SCHEMA,
        "security_groups": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "additionalProperties": False,
            },
        },
        "block_device_mapping_v2": {"type": "array", "items": _BDM},
    }
    if not mv.at_least("2.57"):
        fields["personality"] = {"type": "array", "maxItems": 0}
    if mv.at_least("2.19"):
        fields["description"] = {"type": ["string", "null"], "maxLength": 255}
    if mv.at_least("2.52"):
        fields["tags"] = {
            "type": "array",
            "maxItems": 50,
            "items": {"type": "string", "minLength": 1, "maxLength": 60, "pattern": "^[^,/]*$"},
        }
    if mv.at_least("2.63"):
        fields["trusted_image_certificates"] = {"type": ["array", "null"], "maxItems": 0}
    if mv.at_least("2.74"):
        fields["host"] = {"type": "string", "minLength": 1, "maxLength": 255}
        fields["hypervisor_hostname"] = {"type": "string", "minLength": 1, "maxLength": 255}
    if mv.at_least("2.90"):
        fields["hostname"] = _HOSTNAME
    required = ["name", "flavorRef"] + (["networks"] if mv.at_least("2.37") else [])
    hints = {
        "type": "object",
        "properties": {"group": _UUID, "same_host": _SERVERS_HINT, "different_host": _SERVERS_HINT},
        "additionalProperties": True,
    }
    return {
        "type": "object",
        "required": ["server"],
        "additionalProperties": False,
        "properties": {
            "server": {
                "type": "object",
                "required": required,
                "additionalProperties": False,
                "properties": fields,
            },
            "os:scheduler_hints": hints,
            "OS-SCH-HNT:scheduler_hints": hints,
        },
    }


CREATE = VersionedSchema(_create_schema)

# The scheduler hints placement acts on; any other is refused rather than ignored.
_HONOURED_HINTS = frozenset({"group", "same_host", "different_host"})


def _update_schema(mv: Microversion) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": _NAME,
        "accessIPv4": {"type": "string", "format": "ipv4"},
        "accessIPv6": {"type": "string", "format": "ipv6"},
        "OS-DCF:diskConfig": {"type": "string", "enum": ["AUTO", "MANUAL"]},
    }
    if mv.at_least("2.19"):
        fields["description"] = {"type": ["string", "null"], "maxLength": 255}
    if mv.at_least("2.90"):
        fields["hostname"] = _HOSTNAME
    return {
        "type": "object",
        "required": ["server"],
        "additionalProperties": False,
        "properties": {
            "server": {"type": "object", "additionalProperties": False, "properties": fields}
        },
    }


UPDATE = VersionedSchema(_update_schema)


def _rebuild_schema(mv: Microversion) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "imageRef": {"type": "string", "minLength": 1, "maxLength": 255},
        "name": _NAME,
        "metadata": _META,
        "adminPass": {"type": "string"},
        "accessIPv4": {"type": "string", "format": "ipv4"},
        "accessIPv6": {"type": "string", "format": "ipv6"},
        "OS-DCF:diskConfig": {"type": "string", "enum": ["AUTO", "MANUAL"]},
        "preserve_ephemeral": BOOLEAN_SCHEMA,
    }
    if not mv.at_least("2.57"):
        fields["personality"] = {"type": "array", "maxItems": 0}
    if mv.at_least("2.19"):
        fields["description"] = {"type": ["string", "null"], "maxLength": 255}
    if mv.at_least("2.54"):
        fields["key_name"] = {"oneOf": [_NAME, {"type": "null"}]}
    if mv.at_least("2.57"):
        fields["user_data"] = {"type": ["string", "null"], "maxLength": 65535}
    if mv.at_least("2.63"):
        fields["trusted_image_certificates"] = {"type": ["array", "null"], "maxItems": 0}
    if mv.at_least("2.90"):
        fields["hostname"] = _HOSTNAME
    return {
        "type": "object",
        "required": ["rebuild"],
        "additionalProperties": False,
        "properties": {
            "rebuild": {
                "type": "object",
                "required": ["imageRef"],
                "additionalProperties": False,
                "properties": fields,
            }
        },
    }


REBUILD = VersionedSchema(_rebuild_schema)
ACTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "minProperties": 1,
    "maxProperties": 1,
    "properties": {
        # Nova reads no body for these: null and {} are both what clients send.
        "os-start": {"type": ["null", "object"]},
        "os-stop": {"type": ["null", "object"]},
        "reboot": {
            "type": "object",
            "required": ["type"],
            "additionalProperties": False,
            "properties": {"type": {"type": "string", "enum": ["SOFT", "HARD", "soft", "hard"]}},
        },
        "pause": {"type": ["null", "object"]},
        "unpause": {"type": ["null", "object"]},
        "suspend": {"type": ["null", "object"]},
        "resume": {"type": ["null", "object"]},
        # The reason is checked against the microversion in _lock (2.73+).
        "lock": {
            "type": ["null", "object"],
            "additionalProperties": False,
            "properties": {"locked_reason": {"type": ["string", "null"], "maxLength": 255}},
        },
        "unlock": {"type": ["null", "object"]},
        # Parsed as Nova does, with its messages (server_security_groups.py).
        "addSecurityGroup": {},
        "removeSecurityGroup": {},
        "createImage": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {"name": _NAME, "metadata": _META},
        },
        "createBackup": {
            "type": "object",
            "required": ["name", "backup_type", "rotation"],
            "additionalProperties": False,
            "properties": {
                "name": _NAME,
                "backup_type": {"type": "string"},
                # A whole number, or its digits as a string (the compute API's rule).
                "rotation": {
                    "type": ["integer", "string"],
                    "pattern": "^[0-9]{1,9}$",
                    "minimum": 0,
                    "maximum": 2147483647,
                },
                "metadata": _META,
            },
        },
        # Up to 2.43; checked with Nova's messages in floating_ips.py.
        "addFloatingIp": {},
        "removeFloatingIp": {},
        "shelve": {"type": ["null", "object"]},
        # Checked against the microversion's schema in _rebuild.
        "rebuild": {"type": "object"},
        "shelveOffload": {"type": ["null", "object"]},
        # Checked against the microversion in _unshelve (availability_zone 2.77+, host and
        # a null zone 2.91+).
        "unshelve": {
            "type": ["null", "object"],
            "additionalProperties": False,
            "properties": {
                "availability_zone": {"type": ["string", "null"], "minLength": 1, "maxLength": 255},
                "host": {"type": "string", "minLength": 1, "maxLength": 255},
            },
        },
        "injectNetworkInfo": {"type": ["null", "object"], "additionalProperties": False},
        "os-resetState": {
            "type": "object",
            "required": ["state"],
            "additionalProperties": False,
            "properties": {"state": {"type": "string", "enum": ["active", "error"]}},
        },
        # Soft delete (reclaim_instance_interval > 0): bring back, or delete now.
        "restore": {"type": ["null", "object"]},
        "forceDelete": {"type": ["null", "object"]},
        "os-getConsoleOutput": consoles.CONSOLE_OUTPUT_ACTION.schema,
        "os-getVNCConsole": consoles.VNC_CONSOLE_ACTION.schema,
    },
    "additionalProperties": False,
}
ACTION = compile_schema(ACTION_SCHEMA)
METADATA = compile_schema(
    {
        "type": "object",
        "required": ["metadata"],
        "additionalProperties": False,
        "properties": {"metadata": _META},
    }
)
META_ITEM = compile_schema(
    {
        "type": "object",
        "required": ["meta"],
        "additionalProperties": False,
        "properties": {
            "meta": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "additionalProperties": {"type": "string", "maxLength": 255},
            }
        },
    }
)

LIST_QUERY = Query(
    QueryParam("name"),
    QueryParam("status", multi=True),
    QueryParam("host"),
    QueryParam("node"),
    QueryParam("changes-since", "datetime"),
    QueryParam("changes-before", "datetime"),
    QueryParam("all_tenants"),
    QueryParam("project_id"),
    QueryParam("tenant_id"),
    QueryParam("user_id"),
    QueryParam("ip"),
    QueryParam("ip6"),
    QueryParam("image"),
    QueryParam("flavor"),
    QueryParam("reservation_id"),
    QueryParam("availability_zone"),
    QueryParam("uuid"),
    QueryParam("deleted", "boolean"),
    QueryParam("limit", "nonneg_integer"),
    QueryParam("marker"),
    QueryParam("sort_key", multi=True),
    QueryParam("sort_dir", multi=True, enum=("asc", "desc")),
    QueryParam("locked", "boolean"),
)
# Filters Nova keeps for admins; for anyone else they are silently dropped.
_ADMIN_FILTERS = ("host", "node", "deleted", "project_id", "tenant_id")
_SORT_KEYS = (
    "created_at",
    "updated_at",
    "display_name",
    "name",
    "launched_at",
    "terminated_at",
    "vm_state",
    "task_state",
    "uuid",
    "availability_zone",
    "host",
    "hostname",
    "key_name",
)


def _ts(value: Any) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _scope(ctx: RequestContext) -> str:
    return "" if ctx.is_admin else ctx.project_id


async def _host_statuses(request: Request, servers: list[servers_pb2.Server]) -> dict[str, str]:
    """Nova's host_status (admin, 2.16+): UP, DOWN, MAINTENANCE or UNKNOWN per host."""
    hosts = {s.host for s in servers if s.host}
    if not hosts:
        return {}
    try:
        reply = await call(
            gateway_of(request).conductor.fleet.ListServices,
            fleet_pb2.ListServicesRequest(binary="loom-compute"),
        )
    except ApiError:
        return dict.fromkeys(hosts, "UNKNOWN")
    out = dict.fromkeys(hosts, "UNKNOWN")
    for svc in reply.services:
        if svc.host in out:
            if svc.forced_down or not svc.up:
                out[svc.host] = "DOWN"
            elif not svc.enabled:
                out[svc.host] = "MAINTENANCE"
            else:
                out[svc.host] = "UP"
    return out


async def _render(
    request: Request,
    ctx: RequestContext,
    servers: list[servers_pb2.Server],
    *,
    listed: bool = False,
) -> list[dict[str, Any]]:
    mv = microversion(request)
    statuses = (
        await _host_statuses(request, servers) if ctx.is_admin and mv.at_least("2.16") else {}
    )
    admin = ctx.is_admin
    groups = await server_security_groups.names_by_server(request, ctx, servers)
    return [
        views.detail(
            request,
            s,
            mv,
            is_admin=admin,
            host_status=statuses.get(s.host, ""),
            listed=listed,
            security_groups=groups.get(s.id),
        )
        for s in servers
    ]


async def _get(request: Request, ctx: RequestContext) -> servers_pb2.Server:
    reply = await call(
        gateway_of(request).conductor.servers.GetServer,
        servers_pb2.GetServerRequest(id=request.path_params["server_id"], project_id=_scope(ctx)),
    )
    server: servers_pb2.Server = reply.server
    return server


# ------------------------------------------------------------------ list / show


async def _list(request: Request, detailed: bool) -> Response:
    ctx = context(request)
    ctx.require_read("os_compute_api:servers:index")
    mv = microversion(request)
    q = checked_query(request, LIST_QUERY)
    if not ctx.is_admin:
        for key in _ADMIN_FILTERS:
            q.pop(key, None)
    req = servers_pb2.ListServersRequest(project_id=ctx.project_id)
    if "all_tenants" in q:
        if not ctx.is_admin:
            raise Forbidden("Policy doesn't allow os_compute_api:servers:index:get_all_tenants.")
        if str(q["all_tenants"]).lower() not in ("0", "false", "off", "no"):
            # Every project, or the one project_id / tenant_id names; without all_tenants
            # those are ignored and an admin lists its own project, as in the compute API.
            req.project_id = q.get("project_id") or q.get("tenant_id") or ""
    if "changes-before" in q and not mv.at_least("2.66"):
        q.pop("changes-before")
    if "status" in q:
        wanted = [views.STATUS_BY_NAME.get(s.upper()) for s in q["status"]]
        if not any(w is not None for w in wanted):
            # Nova answers an unknown status with an empty list, not an error.
            return ok({"servers": []})
        req.statuses.extend(w for w in wanted if w is not None)
    req.name = q.get("name", "")
    req.host = q.get("host", "")
    req.image_id = q.get("image", "")
    req.flavor_id = q.get("flavor", "")
    req.reservation_id = q.get("reservation_id", "")
    req.availability_zone = q.get("availability_zone", "")
    req.user_id = q.get("user_id", "")
    req.ip = q.get("ip", "")
    req.include_deleted = bool(q.get("deleted", False))
    if "locked" in q and mv.at_least("2.73"):
        req.locked = bool(q["locked"])
    if "uuid" in q:
        req.ids.append(q["uuid"])
    if "changes-since" in q:
        req.changes_since.CopyFrom(_ts(q["changes-since"]))
        req.include_deleted = True
    if "changes-before" in q:
        req.changes_before.CopyFrom(_ts(q["changes-before"]))
        req.include_deleted = True
    if "changes-since" in q and "changes-before" in q and q["changes-since"] > q["changes-before"]:
        raise BadRequest("The value of changes-since must be less than or equal to changes-before.")
    keys = q.get("sort_key", [])
    for key in keys:
        if key not in _SORT_KEYS:
            raise BadRequest(f"Invalid input for query parameters sort_key. Value: {shorten(key)}.")
    if keys:
        req.sort_key = "name" if keys[0] == "display_name" else keys[0]
    dirs = q.get("sort_dir", [])
    if dirs:
        req.sort_dir = dirs[0]
    max_limit = 1000
    limit = min(q.get("limit", max_limit), max_limit)
    if limit == 0:
        # Nova answers limit=0 with no servers; 0 on the wire would mean "the default".
        return ok({"servers": []})
    req.limit = limit
    req.marker = q.get("marker", "")
    reply = await call(gateway_of(request).conductor.servers.ListServers, req)
    servers = list(reply.servers)
    items = (
        await _render(request, ctx, servers, listed=True)
        if detailed
        else [views.brief(request, s) for s in servers]
    )
    body: dict[str, Any] = {"servers": items}
    if reply.next_marker:
        body["servers_links"] = next_link(
            request, "servers/detail" if detailed else "servers", reply.next_marker, limit
        )
    return ok(body)


@documented(
    query=LIST_QUERY,
    tag="compute",
    policy=Policy("reader", target="all_tenants, and filtering by another project: admin"),
)
async def list_servers(request: Request) -> Response:
    """Servers (id, name, links), filtered and paginated."""
    return await _list(request, detailed=False)


@documented(
    query=LIST_QUERY,
    tag="compute",
    policy=Policy("reader", target="all_tenants, and filtering by another project: admin"),
)
async def list_servers_detail(request: Request) -> Response:
    """Servers with every field, filtered and paginated."""
    return await _list(request, detailed=True)


@documented(tag="compute", policy=READER)
async def show_server(request: Request) -> Response:
    """One server."""
    ctx = context(request)
    ctx.require_read("os_compute_api:servers:show")
    server = await _get(request, ctx)
    return ok({"server": (await _render(request, ctx, [server]))[0]})


# ------------------------------------------------------------------ create


def _count(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"Invalid input for field/attribute {name}.") from None


def _image_from_bdm(mappings: list[dict[str, Any]], image_ref: str) -> str:
    """The image to boot: imageRef, or the one image-to-local boot mapping."""
    for m in mappings:
        local_image = (
            m.get("source_type") == "image" and m.get("destination_type", "local") == "local"
        )
        if not local_image:
            raise BadRequest("Loom has no volumes: only image-to-local block device mappings work.")
        if str(m.get("boot_index", "0")) in ("0", "None") and m.get("uuid"):
            if image_ref and image_ref != m["uuid"]:
                raise BadRequest("imageRef and the boot block device mapping disagree.")
            image_ref = m["uuid"]
    return image_ref


def _canonical_ipv6(text: str) -> str:
    """The address in its compressed form (the schema has checked it is IPv6)."""
    return ipaddress.IPv6Address(text).compressed if text else ""


_SERVERS_HINT_VALUE = compile_schema(_SERVERS_HINT)


def _check_servers_hints(body: Any) -> None:
    """Refuses a same_host or different_host hint that is not a server UUID or a list of
    them, naming the hint (the body's schema says the same, but of a list's item it would
    name only the item's index)."""
    if not isinstance(body, dict):
        return
    for key in ("os:scheduler_hints", "OS-SCH-HNT:scheduler_hints"):
        hints = body.get(key)
        if not isinstance(hints, dict):
            continue
        for name in ("same_host", "different_host"):
            if name in hints and not _SERVERS_HINT_VALUE.is_valid(hints[name]):
                value = hints[name]
                raise BadRequest(
                    f"Invalid input for field/attribute {name}. Value:"
                    f" {shorten(value if isinstance(value, str) else str(value))}."
                    f" The {name} scheduler hint takes a server UUID or a list of at most"
                    f" {MAX_HINT_SERVERS} server UUIDs."
                )


def _servers_hint(hints: dict[str, Any], name: str) -> list[str]:
    """A same_host or different_host hint as a list of canonical server UUIDs (the schema
    has checked each is a UUID); empty when not given."""
    value = hints.get(name)
    if value is None:
        return []
    return [str(uuid.UUID(v)) for v in ([value] if isinstance(value, str) else value)]


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in TRUE_WORDS


@documented(
    body=CREATE.newest,
    tag="compute",
    policy=Policy("member", target="a forced host (an availability_zone of zone:host): admin"),
)
async def create_server(request: Request) -> Response:
    """Create one or more servers (202; the build goes on asynchronously)."""
    ctx = context(request)
    ctx.require_write("os_compute_api:servers:create")
    mv = microversion(request)
    body = await json_body(request)
    _check_servers_hints(body)
    checked_body(CREATE.at(mv), body)
    s = body["server"]
    hints = body.get("os:scheduler_hints") or body.get("OS-SCH-HNT:scheduler_hints") or {}
    unhonoured = sorted(set(hints) - _HONOURED_HINTS)
    if unhonoured:
        raise BadRequest(
            "Loom's scheduler does not honour the scheduler hint(s)"
            f" {shorten(', '.join(unhonoured))}; only 'different_host', 'group' and"
            " 'same_host' are."
        )

    min_count = _count(s.get("min_count", 1), "min_count")
    max_count = _count(s.get("max_count", min_count), "max_count")
    if min_count > max_count:
        raise BadRequest("min_count must be <= max_count")
    if s.get("user_data"):
        try:
            base64.b64decode(s["user_data"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("User data needs to be valid base 64.") from None
    image_ref = _image_from_bdm(s.get("block_device_mapping_v2", []), s.get("imageRef", ""))
    if not image_ref:
        raise BadRequest("Loom boots from images only: imageRef is required.")
    force_host = ""
    az = s.get("availability_zone", "")
    if ":" in az:
        # The legacy "zone:host" form forces a host; only admins may.
        az, _, force_host = az.partition(":")
        force_host = force_host.partition(":")[0]
    if s.get("host") or s.get("hypervisor_hostname") or force_host:
        ctx.require_admin("compute:servers:create:requested_destination")
        force_host = s.get("host") or s.get("hypervisor_hostname") or force_host
    flavor_id = str(s["flavorRef"]).rstrip("/").rsplit("/", 1)[-1]
    hostname = s.get("hostname", "")
    if hostname and max_count > 1:
        raise BadRequest("Cannot set hostname when creating more than one server.")
    # Checked against the network service before the 202 (none asks it nothing).
    nics = await server_networks.resolve(request, ctx, s, max_count)
    reply = await call(
        gateway_of(request).conductor.servers.CreateServers,
        servers_pb2.CreateServersRequest(
            request_id=request_id(request),
            project_id=ctx.project_id,
            user_id=ctx.user_id,
            name=s["name"],
            flavor_id=flavor_id,
            private_flavors_allowed=ctx.is_admin,
            image_id=image_ref.rstrip("/").rsplit("/", 1)[-1],
            availability_zone=az,
            key_name=s.get("key_name", ""),
            metadata=s.get("metadata", {}),
            user_data=s.get("user_data", ""),
            networks=nics.networks,
            requested_networks=nics.requested,
            security_group_ids=nics.security_group_ids,
            min_count=min_count,
            max_count=max_count,
            description=s.get("description") or "",
            hostname=hostname,
            server_group_id=hints.get("group", ""),
            same_host=_servers_hint(hints, "same_host"),
            different_host=_servers_hint(hints, "different_host"),
            tags=s.get("tags", []),
            access_ipv4=s.get("accessIPv4", ""),
            access_ipv6=_canonical_ipv6(s.get("accessIPv6", "")),
            config_drive=_truthy(s.get("config_drive", False)),
            force_host=force_host,
        ),
    )
    if _truthy(s.get("return_reservation_id", False)):
        return ok({"reservation_id": reply.reservation_id}, 202)
    if not reply.servers:
        raise ApiError(500, "The conductor created no server.")
    first = reply.servers[0]
    out: dict[str, Any] = {
        "id": first.id,
        "links": links(request, "servers", first.id),
        "OS-DCF:diskConfig": "MANUAL",
        "security_groups": [
            {"name": str(g.get("name", ""))} for g in s.get("security_groups") or []
        ]
        or [{"name": "default"}],
        # Loom sets no guest password; Nova's API still returns one, so clients that
        # read it keep working.
        "adminPass": s.get("adminPass") or secrets.token_urlsafe(9),
    }
    return ok({"server": out}, 202)


# ------------------------------------------------------------------ update / delete / actions


@documented(body=UPDATE.newest, tag="compute", policy=MEMBER)
async def update_server(request: Request) -> Response:
    """Rename or redescribe a server."""
    ctx = context(request)
    ctx.require_write("os_compute_api:servers:update")
    mv = microversion(request)
    body = await json_body(request)
    checked_body(UPDATE.at(mv), body)
    s = body["server"]
    req = servers_pb2.UpdateServerRequest(
        request_id=request_id(request),
        id=request.path_params["server_id"],
        project_id=_scope(ctx),
    )
    if "name" in s:
        req.name = s["name"]
    if "description" in s:
        req.description = s["description"] or ""
    if "accessIPv4" in s:
        req.access_ipv4 = s["accessIPv4"]
    if "accessIPv6" in s:
        req.access_ipv6 = _canonical_ipv6(s["accessIPv6"])
    if "hostname" in s:
        req.hostname = s["hostname"]
    reply = await call(gateway_of(request).conductor.servers.UpdateServer, req)
    server = reply.server
    statuses = (
        await _host_statuses(request, [server]) if ctx.is_admin and mv.at_least("2.16") else {}
    )
    return ok(
        {
            "server": views.updated(
                request,
                server,
                mv,
                is_admin=ctx.is_admin,
                host_status=statuses.get(server.host),
                security_groups=await _groups_from_2_75(request, ctx, server),
            )
        }
    )


async def _groups_from_2_75(
    request: Request, ctx: RequestContext, server: servers_pb2.Server
) -> list[str] | None:
    """The server's security groups for an update's or rebuild's response (2.75+)."""
    if not microversion(request).at_least("2.75"):
        return None
    return (await server_security_groups.names_by_server(request, ctx, [server])).get(server.id)


@documented(tag="compute", policy=MEMBER)
async def delete_server(request: Request) -> Response:
    """Delete a server (204)."""
    ctx = context(request)
    ctx.require_write("os_compute_api:servers:delete")
    deleted = await call(
        gateway_of(request).conductor.servers.DeleteServer,
        servers_pb2.DeleteServerRequest(
            request_id=request_id(request),
            id=request.path_params["server_id"],
            project_id=_scope(ctx),
            user_id=ctx.user_id,
            override_lock=ctx.is_admin,
        ),
    )
    if deleted.shelved_image_id:
        await server_images.discard(request, deleted.shelved_image_id)
    return empty(204)


# Nova's policy names, for the 403 message.
_ACTION_POLICIES = {
    "os-start": "os_compute_api:servers:start",
    "os-stop": "os_compute_api:servers:stop",
    "reboot": "os_compute_api:servers:reboot",
    "pause": "os_compute_api:os-pause-server:pause",
    "unpause": "os_compute_api:os-pause-server:unpause",
    "suspend": "os_compute_api:os-suspend-server:suspend",
    "resume": "os_compute_api:os-suspend-server:resume",
    "lock": "os_compute_api:os-lock-server:lock",
    "unlock": "os_compute_api:os-lock-server:unlock",
    "shelve": "os_compute_api:os-shelve:shelve",
    "shelveOffload": "os_compute_api:os-shelve:shelve_offload",
    "unshelve": "os_compute_api:os-shelve:unshelve",
    "rebuild": "os_compute_api:servers:rebuild",
    "os-resetState": "os_compute_api:os-admin-actions:reset_state",
    "injectNetworkInfo": "os_compute_api:os-admin-actions:inject_network_info",
    "restore": "os_compute_api:os-deferred-delete:restore",
    "forceDelete": "os_compute_api:os-deferred-delete:force",
    "addSecurityGroup": "os_compute_api:os-security-groups:add",
    "removeSecurityGroup": "os_compute_api:os-security-groups:remove",
    "createImage": "os_compute_api:servers:create_image",
    "createBackup": "os_compute_api:os-create-backup",
    "addFloatingIp": "os_compute_api:os-floating-ips:add",
    "removeFloatingIp": "os_compute_api:os-floating-ips:remove",
}

# Who may send each action (the body's one key): the dispatcher's table, published in
# /openapi.json and checked by the generated policy matrix. A project's member acts on
# its own servers; moving a server between hosts, offloading it and forcing its state are
# an operator's (admin's).
# The actions of _ACTION_POLICIES kept to admins (the move actions, admin too, are
# dispatched apart).
_ADMIN_ONLY_ACTIONS = ("shelveOffload", "os-resetState", "injectNetworkInfo")

SERVER_ACTION_POLICY = Policy(
    "member",
    actions={
        **{
            action: MEMBER
            for action in (
                *(a for a in _ACTION_POLICIES if a not in _ADMIN_ONLY_ACTIONS),
                "resize",
                "confirmResize",
                "revertResize",
                *consoles.CONSOLE_ACTIONS,
            )
        },
        **{
            action: ADMIN
            for action in (
                *_ADMIN_ONLY_ACTIONS,
                "migrate",
                "os-migrateLive",
                "evacuate",
            )
        },
        "unshelve": Policy("member", target="a host to unshelve onto: admin"),
        "unlock": Policy("member", target="a server an admin locked: admin"),
    },
)


# The name each action is refused under, as the handlers of each kind name it.
_POLICY_NAMES = {
    **_ACTION_POLICIES,
    "resize": "os_compute_api:servers:resize",
    "confirmResize": "os_compute_api:servers:confirm_resize",
    "revertResize": "os_compute_api:servers:revert_resize",
    "migrate": "os_compute_api:os-migrate-server:migrate",
    "os-migrateLive": "os_compute_api:os-migrate-server:migrate_live",
    "evacuate": "os_compute_api:os-evacuate",
    "os-getConsoleOutput": "os_compute_api:os-console-output",
    "os-getVNCConsole": "os_compute_api:os-remote-consoles",
}


def _require(ctx: RequestContext, rule: Rule, name: str) -> None:
    """Refuses (403) a caller whose roles fall short of `rule` (the token is checked)."""
    if rule == "admin":
        ctx.require_admin(name)
    elif rule == "member":
        ctx.require_write(name)
    elif rule == "reader":
        ctx.require_read(name)


@documented(body=ACTION, tag="compute", policy=SERVER_ACTION_POLICY)
async def server_action(request: Request) -> Response:
    """Server actions: os-start, os-stop, reboot, pause, unpause, suspend, resume, lock,
    unlock, shelve, shelveOffload, unshelve, rebuild, os-resetState, restore, forceDelete,
    addSecurityGroup, removeSecurityGroup, addFloatingIp and removeFloatingIp (up to 2.43),
    createImage, createBackup, injectNetworkInfo (202); the console actions (200)."""
    ctx = context(request)
    body = await json_body(request)
    named = next(iter(body)) if isinstance(body, dict) and len(body) == 1 else ""
    if named in SERVER_ACTION_POLICY.actions:
        # The action's declared rule before its body: whoever may not act learns nothing
        # of the body's shape.
        _require(ctx, SERVER_ACTION_POLICY.actions[named].rule, _POLICY_NAMES[named])
    if isinstance(body, dict) and len(body) == 1 and next(iter(body)) in migrations.MOVE_ACTIONS:
        return await migrations.move_action(request, ctx, body)
    if isinstance(body, dict) and len(body) == 1:
        name = next(iter(body))
        if name not in ACTION_SCHEMA["properties"]:
            raise BadRequest(f"There is no such action: {shorten(name)}")
    if isinstance(body, dict) and len(body) == 1 and next(iter(body)) in consoles.CONSOLE_ACTIONS:
        return await consoles.console_action(request, ctx, body)
    checked_body(ACTION, body)
    action = next(iter(body))
    ctx.require_write(_ACTION_POLICIES[action])
    conductor = gateway_of(request).conductor.servers
    common: dict[str, Any] = {
        "request_id": request_id(request),
        "id": request.path_params["server_id"],
        "project_id": _scope(ctx),
        "user_id": ctx.user_id,
    }
    if action in ("lock", "unlock"):
        await _lock(request, ctx, action, body[action], common)
        return empty(202)
    if action in floating_ips.ACTIONS:
        floating_ips.refuse_after_2_43(request)
        await floating_ips.server_action(
            request, ctx, await _get(request, ctx), action, body[action]
        )
        return empty(202)
    if action in ("addSecurityGroup", "removeSecurityGroup"):
        await server_security_groups.change(
            request, ctx, await _get(request, ctx), action, body[action]
        )
        return empty(202)
    if action == "os-resetState":
        # An operator's act (Nova's default policy: admins only), in any project.
        ctx.require_admin(_ACTION_POLICIES[action])
        await call(
            conductor.ResetServerState,
            servers_pb2.ResetServerStateRequest(
                request_id=common["request_id"], id=common["id"], state=body[action]["state"]
            ),
        )
        return empty(202)
    if action == "injectNetworkInfo":
        # An operator's act: the host wires the server's ports again.
        ctx.require_admin(_ACTION_POLICIES[action])
        await call(
            conductor.InjectNetworkInfo,
            servers_pb2.InjectNetworkInfoRequest(
                request_id=common["request_id"], id=common["id"], override_lock=True
            ),
        )
        return empty(202)
    # Admins act on locked servers; the conductor refuses everyone else.
    common["override_lock"] = ctx.is_admin
    if action == "createImage":
        return await server_images.create_image(
            request, ctx, await _get(request, ctx), body[action], common
        )
    if action == "createBackup":
        return await server_images.create_backup(
            request, ctx, await _get(request, ctx), body[action], common
        )
    if action == "shelveOffload":
        # Nova's default policy keeps offloading to admins.
        ctx.require_admin(_ACTION_POLICIES[action])
    if action == "unshelve":
        await _unshelve(request, ctx, body[action], common)
        return empty(202)
    if action == "rebuild":
        return await _rebuild(request, ctx, body, common)
    if action == "os-start":
        await call(conductor.StartServer, servers_pb2.StartServerRequest(**common))
    elif action == "os-stop":
        await call(conductor.StopServer, servers_pb2.StopServerRequest(**common))
    elif action == "pause":
        await call(conductor.PauseServer, servers_pb2.PauseServerRequest(**common))
    elif action == "unpause":
        await call(conductor.UnpauseServer, servers_pb2.UnpauseServerRequest(**common))
    elif action == "suspend":
        await call(conductor.SuspendServer, servers_pb2.SuspendServerRequest(**common))
    elif action == "resume":
        await call(conductor.ResumeServer, servers_pb2.ResumeServerRequest(**common))
    elif action == "shelve":
        await server_images.shelve(request, ctx, await _get(request, ctx), common)
    elif action == "shelveOffload":
        await call(conductor.ShelveOffloadServer, servers_pb2.ShelveOffloadServerRequest(**common))
    elif action == "restore":
        await call(conductor.RestoreServer, servers_pb2.RestoreServerRequest(**common))
    elif action == "forceDelete":
        deleted = await call(
            conductor.DeleteServer, servers_pb2.DeleteServerRequest(**common, force=True)
        )
        if deleted.shelved_image_id:
            await server_images.discard(request, deleted.shelved_image_id)
    else:
        kind = (
            agent_bus_pb2.REBOOT_TYPE_HARD
            if body["reboot"]["type"].upper() == "HARD"
            else agent_bus_pb2.REBOOT_TYPE_SOFT
        )
        await call(
            conductor.RebootServer, servers_pb2.RebootServerRequest(**common, reboot_type=kind)
        )
    return empty(202)


async def _rebuild(
    request: Request, ctx: RequestContext, body: dict[str, Any], common: dict[str, Any]
) -> Response:
    """rebuild: the same host, new disks from imageRef; 202 with the server body of the
    microversion (adminPass included, as at create)."""
    mv = microversion(request)
    checked_body(REBUILD.at(mv), body)
    r = body["rebuild"]
    if _truthy(r.get("preserve_ephemeral", False)):
        raise BadRequest("Loom cannot preserve the ephemeral disk across a rebuild.")
    image_id = r["imageRef"].rstrip("/").rsplit("/", 1)[-1]
    try:
        uuid.UUID(image_id)
    except ValueError:
        raise BadRequest(f"Invalid imageRef provided: {shorten(r['imageRef'])}") from None
    if r.get("user_data"):
        try:
            base64.b64decode(r["user_data"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("User data needs to be valid base 64.") from None
    req = servers_pb2.RebuildServerRequest(**common, image_id=image_id)
    if "name" in r:
        req.name = r["name"]
    if "metadata" in r:
        req.metadata.update(r["metadata"])
        req.replace_metadata = True
    if "accessIPv4" in r:
        req.access_ipv4 = r["accessIPv4"]
    if "accessIPv6" in r:
        req.access_ipv6 = _canonical_ipv6(r["accessIPv6"])
    if "description" in r:
        req.description = r["description"] or ""
    if "key_name" in r:
        req.key_name = r["key_name"] or ""
    if "user_data" in r:
        req.user_data = r["user_data"] or ""
    if "hostname" in r:
        req.hostname = r["hostname"]
    reply = await call(gateway_of(request).conductor.servers.RebuildServer, req)
    server = reply.server
    statuses = (
        await _host_statuses(request, [server]) if ctx.is_admin and mv.at_least("2.16") else {}
    )
    # Loom sets no guest password; the API returns one as at create.
    out = views.rebuilt(
        request,
        server,
        mv,
        is_admin=ctx.is_admin,
        admin_pass=r.get("adminPass") or secrets.token_urlsafe(9),
        host_status=statuses.get(server.host),
        security_groups=await _groups_from_2_75(request, ctx, server),
    )
    return ok({"server": out}, 202)


async def _unshelve(
    request: Request, ctx: RequestContext, args: dict[str, Any] | None, common: dict[str, Any]
) -> None:
    """unshelve, with a zone to build in at 2.77+ and, at 2.91+, a host (admins) or a null
    zone (unpinning the server from its zone)."""
    mv = microversion(request)
    req = servers_pb2.UnshelveServerRequest(**common)
    args = args or {}
    if args and not mv.at_least("2.77"):
        raise BadRequest(
            "Invalid input for field/attribute unshelve. Value: {...}. "
            "Additional properties are not allowed"
        )
    if not mv.at_least("2.91"):
        if "host" in args:
            raise BadRequest(
                "Invalid input for field/attribute unshelve. "
                "Additional properties are not allowed ('host' was unexpected)"
            )
        if args and args.get("availability_zone") is None:
            raise BadRequest(
                "Invalid input for field/attribute availability_zone. Value: None. "
                "None is not of type 'string'"
            )
    if "host" in args:
        ctx.require_admin("os_compute_api:os-shelve:unshelve_to_host")
        req.host = args["host"]
    if "availability_zone" in args:
        zone = args["availability_zone"]
        if zone is not None:
            await _check_zone(request, zone)
        req.availability_zone = zone or ""
    await call(gateway_of(request).conductor.servers.UnshelveServer, req)


async def _check_zone(request: Request, zone: str) -> None:
    reply = await call(
        gateway_of(request).conductor.fleet.ListAvailabilityZones,
        fleet_pb2.ListAvailabilityZonesRequest(detailed=False),
    )
    if zone not in {z.name for z in reply.zones if z.available}:
        raise BadRequest(f"The requested availability zone is not available: {shorten(zone)}")


async def _lock(
    request: Request,
    ctx: RequestContext,
    action: str,
    args: dict[str, Any] | None,
    common: dict[str, Any],
) -> None:
    """lock (with a reason at 2.73+) and unlock. A server locked by an admin for a project
    other than the admin's own ("admin" lock) can only be unlocked by an admin."""
    conductor = gateway_of(request).conductor.servers
    server = await _get(request, ctx)
    if action == "lock":
        req = servers_pb2.LockServerRequest(
            **common, locked_by="owner" if server.project_id == ctx.project_id else "admin"
        )
        if args:
            if not microversion(request).at_least("2.73"):
                raise BadRequest(
                    "Invalid input for field/attribute lock. Value: {...}. "
                    "Additional properties are not allowed"
                )
            if args.get("locked_reason") is not None:
                req.locked_reason = args["locked_reason"]
        await call(conductor.LockServer, req)
        return
    if server.locked_by == "admin" and not ctx.is_admin:
        raise Forbidden(
            "Policy doesn't allow os_compute_api:os-lock-server:unlock:unlock_override "
            "to be performed."
        )
    await call(conductor.UnlockServer, servers_pb2.UnlockServerRequest(**common))


# ------------------------------------------------------------------ metadata


async def _set_metadata(
    request: Request, ctx: RequestContext, items: dict[str, str], replace: bool
) -> dict[str, str]:
    reply = await call(
        gateway_of(request).conductor.servers.SetServerMetadata,
        servers_pb2.SetServerMetadataRequest(
            request_id=request_id(request),
            id=request.path_params["server_id"],
            project_id=_scope(ctx),
            metadata=items,
            replace=replace,
            override_lock=ctx.is_admin,
        ),
    )
    return dict(reply.metadata)


def _check_meta_keys(items: dict[str, str]) -> None:
    for key in items:
        if not key or len(key) > 255:
            raise BadRequest("Metadata keys must be 1-255 characters.")


@documented(tag="compute", policy=READER)
async def list_metadata(request: Request) -> Response:
    """A server's metadata."""
    ctx = context(request)
    ctx.require_read("os_compute_api:server-metadata:index")
    return ok({"metadata": dict((await _get(request, ctx)).metadata)})


@documented(body=METADATA, tag="compute", policy=MEMBER)
async def merge_metadata(request: Request) -> Response:
    """Merge metadata items (POST) or replace all metadata (PUT)."""
    ctx = context(request)
    ctx.require_write("os_compute_api:server-metadata:update")
    body = await json_body(request)
    checked_body(METADATA, body)
    _check_meta_keys(body["metadata"])
    replace = request.method == "PUT"
    result = await _set_metadata(request, ctx, body["metadata"], replace)
    return ok({"metadata": result})


@documented(tag="compute", policy=READER)
async def show_metadata_item(request: Request) -> Response:
    """One metadata item."""
    ctx = context(request)
    ctx.require_read("os_compute_api:server-metadata:show")
    key = request.path_params["key"]
    meta = (await _get(request, ctx)).metadata
    if key not in meta:
        raise NotFound("Metadata item was not found")
    return ok({"meta": {key: meta[key]}})


@documented(body=META_ITEM, tag="compute", policy=MEMBER)
async def set_metadata_item(request: Request) -> Response:
    """Set one metadata item; the body's key must match the URL's."""
    ctx = context(request)
    ctx.require_write("os_compute_api:server-metadata:update")
    key = request.path_params["key"]
    body = await json_body(request)
    checked_body(META_ITEM, body)
    if key not in body["meta"]:
        raise BadRequest("Request body and URI mismatch")
    _check_meta_keys(body["meta"])
    await _set_metadata(request, ctx, body["meta"], replace=False)
    return ok({"meta": body["meta"]})


@documented(tag="compute", policy=MEMBER)
async def delete_metadata_item(request: Request) -> Response:
    """Remove one metadata item (204)."""
    ctx = context(request)
    ctx.require_write("os_compute_api:server-metadata:delete")
    await call(
        gateway_of(request).conductor.servers.DeleteServerMetadataItem,
        servers_pb2.DeleteServerMetadataItemRequest(
            request_id=request_id(request),
            id=request.path_params["server_id"],
            project_id=_scope(ctx),
            key=request.path_params["key"],
            override_lock=ctx.is_admin,
        ),
    )
    return empty(204)


# ------------------------------------------------------------------ ips and actions


@documented(tag="compute", policy=READER)
async def list_ips(request: Request) -> Response:
    """A server's addresses by network."""
    ctx = context(request)
    ctx.require_read("os_compute_api:ips:index")
    return ok({"addresses": views.addresses(await _get(request, ctx))})


@documented(tag="compute", policy=READER)
async def show_ips(request: Request) -> Response:
    """A server's addresses on one network."""
    ctx = context(request)
    ctx.require_read("os_compute_api:ips:show")
    network = request.path_params["network"]
    addrs = views.addresses(await _get(request, ctx))
    if network not in addrs:
        raise NotFound("Instance is not a member of specified network")
    return ok({network: addrs[network]})


def _action(a: servers_pb2.InstanceAction, mv: Microversion) -> dict[str, Any]:
    body: dict[str, Any] = {
        "action": a.action,
        "instance_uuid": a.instance_id,
        "message": a.message or None,
        "project_id": a.project_id,
        "request_id": a.request_id,
        "start_time": iso_micro(a.start_time),
        "user_id": a.user_id,
    }
    if mv.at_least("2.58"):
        body["updated_at"] = iso_micro(a.updated_at)
    return body


@documented(tag="compute", policy=READER)
async def list_instance_actions(request: Request) -> Response:
    """Actions recorded for a server, newest first."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-instance-actions:list")
    reply = await call(
        gateway_of(request).conductor.servers.ListInstanceActions,
        servers_pb2.ListInstanceActionsRequest(
            id=request.path_params["server_id"], project_id=_scope(ctx)
        ),
    )
    mv = microversion(request)
    return ok({"instanceActions": [_action(a, mv) for a in reply.actions]})


@documented(tag="compute", policy=READER)
async def show_instance_action(request: Request) -> Response:
    """One action with its events."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-instance-actions:show")
    reply = await call(
        gateway_of(request).conductor.servers.GetInstanceAction,
        servers_pb2.GetInstanceActionRequest(
            id=request.path_params["server_id"],
            project_id=_scope(ctx),
            request_id=request.path_params["request_id"],
        ),
    )
    mv = microversion(request)
    body = _action(reply.action, mv)
    events = []
    for e in reply.action.events:
        event: dict[str, Any] = {
            "event": e.event,
            "start_time": iso_micro(e.start_time),
            "finish_time": iso_micro(e.finish_time),
            "result": e.result or None,
        }
        if ctx.is_admin:
            event["traceback"] = None
        if mv.at_least("2.62"):
            event["hostId"] = views.host_id(reply.action.project_id, e.host)
            if ctx.is_admin:
                event["host"] = e.host
        if mv.at_least("2.84") and ctx.is_admin:
            event["details"] = e.details or None
        events.append(event)
    body["events"] = events
    return ok({"instanceAction": body})


# ------------------------------------------------------------------ volume attachments

VOLUME_ATTACHMENTS_QUERY = Query(
    QueryParam("limit", "nonneg_integer"), QueryParam("offset", "nonneg_integer")
)


@documented(query=VOLUME_ATTACHMENTS_QUERY, tag="compute", policy=READER)
async def list_volume_attachments(request: Request) -> Response:
    """A server's volume attachments: always none, since Loom has no volumes yet."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-volumes-attachments:index")
    checked_query(request, VOLUME_ATTACHMENTS_QUERY)
    await _get(request, ctx)
    return ok({"volumeAttachments": []})


@documented(tag="compute", policy=READER)
async def show_volume_attachment(request: Request) -> Response:
    """One volume attachment: none exists (404) while Loom has no volumes."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-volumes-attachments:show")
    server = await _get(request, ctx)
    raise NotFound(
        f"Volume {shorten(request.path_params['volume_id'])} is not attached to server {server.id}."
    )


def routes() -> list[BaseRoute]:
    p = "/compute/v2.1/servers"
    s = p + "/{server_id}"
    return [
        Route(p, list_servers, methods=["GET"]),
        Route(p, create_server, methods=["POST"]),
        Route(p + "/detail", list_servers_detail, methods=["GET"]),
        Route(s, show_server, methods=["GET"]),
        Route(s, update_server, methods=["PUT"]),
        Route(s, delete_server, methods=["DELETE"]),
        Route(s + "/action", server_action, methods=["POST"]),
        Route(s + "/metadata", list_metadata, methods=["GET"]),
        Route(s + "/metadata", merge_metadata, methods=["POST", "PUT"]),
        Route(s + "/metadata/{key}", show_metadata_item, methods=["GET"]),
        Route(s + "/metadata/{key}", set_metadata_item, methods=["PUT"]),
        Route(s + "/metadata/{key}", delete_metadata_item, methods=["DELETE"]),
        Route(s + "/ips", list_ips, methods=["GET"]),
        Route(s + "/ips/{network}", show_ips, methods=["GET"]),
        Route(s + "/os-volume_attachments", list_volume_attachments, methods=["GET"]),
        Route(s + "/os-volume_attachments/{volume_id}", show_volume_attachment, methods=["GET"]),
        Route(s + "/os-instance-actions", list_instance_actions, methods=["GET"]),
        Route(s + "/os-instance-actions/{request_id}", show_instance_action, methods=["GET"]),
    ]
