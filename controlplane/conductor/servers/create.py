"""CreateServers: validate, then ONE transaction writes the instances, their create actions
and one schedule message each through the outbox. The build goes on asynchronously."""

from __future__ import annotations

import re
import secrets
import string
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from types import SimpleNamespace
from typing import Any

import orjson
import psycopg
from loom.conductor.v1 import servers_pb2
from sqlalchemy import (
    Integer,
    Select,
    String,
    bindparam,
    cast,
    exists,
    func,
    literal,
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import REGCLASS
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from controlplane.catalog.quotas import (
    check_metadata_items,
    limit_of,
    override,
    project_quota_from,
    usage_columns,
)
from controlplane.conductor import commands, outbox
from controlplane.conductor.context import Conductor
from controlplane.conductor.states import TaskState, VmState
from controlplane.config import ConductorConfig
from controlplane.db import driver
from controlplane.db.models import (
    Flavor,
    FlavorProject,
    Image,
    Instance,
    InstanceAction,
    Keypair,
    ServerGroup,
)
from controlplane.image.visibility import visible_to
from controlplane.runtime.errors import InvalidArgument, QuotaExceeded

# Stable instance UUIDs per (project, request_id, index): a retried request collides on the
# unique uuid instead of creating twice, with no lookup on the fast path.
_IDEMPOTENCY_NS = uuid.UUID("6f1c1f55-3d5e-4a5f-9a57-2f8e0f3c1e11")


@dataclass(frozen=True)
class CreateResult:
    servers: list[Instance]
    reservation_id: str


def instance_uuid(project_id: str, request_id: str, index: int) -> str:
    if not request_id:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_IDEMPOTENCY_NS, f"{project_id}/{request_id}/{index}"))


def reservation_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "r-" + "".join(secrets.choice(alphabet) for _ in range(8))


_HOSTNAME_BAD = re.compile(r"[^a-z0-9-]+")


def sanitize_hostname(name: str) -> str:
    """Nova's rule: lower case, letters, digits and hyphens, at most 63 characters."""
    host = _HOSTNAME_BAD.sub("-", name.lower()).strip("-")[:63]
    return host or "server"


def _requested_networks(request: servers_pb2.CreateServersRequest) -> dict[str, Any] | None:
    """What the instances record of their NICs: None for "none"; the resolved list
    otherwise. "auto" is the caller's to resolve (the gateway picks or makes the
    project's network), so the conductor never guesses a network."""
    if request.networks == "none":
        if request.requested_networks:
            raise InvalidArgument("networks 'none' cannot come with requested networks")
        return None
    if request.networks or not request.requested_networks:
        raise InvalidArgument(
            "networks must be 'none' or a list of requested networks ('auto' is resolved"
            f" to a network before the conductor is asked), not {request.networks!r}"
        )
    nics: list[dict[str, str]] = []
    for r in request.requested_networks:
        if bool(r.network_id) == bool(r.port_id):
            raise InvalidArgument("each requested network names a network or a port")
        if r.port_id and r.fixed_ip:
            raise InvalidArgument("a requested port cannot come with a fixed_ip")
        nics.append({"network_id": r.network_id, "port_id": r.port_id, "fixed_ip": r.fixed_ip})
    if any(n["port_id"] or n["fixed_ip"] for n in nics) and (request.max_count or 1) > 1:
        raise InvalidArgument(
            "Unable to launch multiple instances with a single configured port ID or fixed IP."
        )
    groups = list(dict.fromkeys(request.security_group_ids)) or None
    return {"networks": nics, "security_group_ids": groups}


# Instances one same_host or different_host hint may name (as many as the scheduler takes).
MAX_HINT_INSTANCES = 1000


def _hint(values: list[str], name: str) -> list[str]:
    """One hint's server UUIDs, canonical (lower case, hyphenated), each once, in order."""
    if len(values) > MAX_HINT_INSTANCES:
        raise InvalidArgument(
            f"The {name} scheduler hint names at most {MAX_HINT_INSTANCES} servers."
        )
    out: list[str] = []
    for value in values:
        try:
            canonical = str(uuid.UUID(value))
        except ValueError:
            raise InvalidArgument(
                f"The {name} scheduler hint takes server UUIDs, not {value[:64]!r}."
            ) from None
        if canonical not in out:
            out.append(canonical)
    return out


def scheduler_hints(request: servers_pb2.CreateServersRequest) -> dict[str, list[str]] | None:
    """The same_host and different_host hints as the instances keep them (each key only
    when given); None when neither is. Raises InvalidArgument for a value that is not a
    UUID, or too many of them."""
    hints = {
        name: _hint(list(values), name)
        for name, values in (
            ("same_host", request.same_host),
            ("different_host", request.different_host),
        )
        if values
    }
    return hints or None


def _counts(request: servers_pb2.CreateServersRequest) -> tuple[int, int]:
    min_count = request.min_count or 1
    max_count = request.max_count or min_count
    if min_count < 1 or max_count < 1:
        raise InvalidArgument("min_count and max_count must be at least 1")
    if min_count > max_count:
        raise InvalidArgument(f"min_count ({min_count}) must be <= max_count ({max_count})")
    return min_count, max_count


# A transaction-scoped advisory lock per project (released at commit or rollback), in
# psycopg's parameter style: it goes straight to the driver, prepared, as the create's
# other statements do.
_PROJECT_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%(project_id)s, 20231))"

# Projects whose last create found a limit to hold (quota or a server group's member
# limit). Only the ORDER of the create's first statements depends on it (lock first, or
# read first and lock only when a limit turns up), never whether the lock is taken, so a
# stale entry costs one statement and nothing else.
_LIMITED: set[str] = set()
_LIMITED_MAX = 100_000


def _remember_limited(project_id: str, limited: bool) -> None:
    if not limited:
        _LIMITED.discard(project_id)
        return
    if len(_LIMITED) >= _LIMITED_MAX:
        _LIMITED.clear()
    _LIMITED.add(project_id)


async def create_servers(
    conductor: Conductor, request: servers_pb2.CreateServersRequest
) -> CreateResult:
    """Postcondition: the servers exist in BUILD (building/scheduling) with a create action
    and a queued schedule message each, all committed together; or nothing was written.
    A retry with the same request_id returns the servers of the first call."""
    cfg = conductor.cfg.conductor
    min_count, max_count = _counts(request)
    requested = _requested_networks(request)
    hints = scheduler_hints(request)
    if not request.project_id or not request.user_id:
        raise InvalidArgument("project_id and user_id are required")
    if request.availability_zone and ":" in request.availability_zone and not request.force_host:
        # Nova's "zone:host" form forces a host (admin only: policy is the gateway's).
        zone, _, forced = request.availability_zone.partition(":")
    else:
        zone, forced = request.availability_zone, request.force_host

    async with conductor.sessions() as session:
        # Every read the validation needs, in ONE statement: flavor, image, usage, limits,
        # keypair. A boot's statement budget is small (see the conductor's README).
        postgres = session.get_bind().dialect.name == "postgresql"
        params = {
            "project_id": request.project_id,
            "user_id": request.user_id,
            "key_name": request.key_name,
            "image_id": request.image_id,
            "flavor_id": request.flavor_id,
            "id_count": max_count,
        }
        found: Any
        if postgres:
            # Creates in a project with a limit take turns from the lock to their commit:
            # the usage the quota check reads after the lock then includes every create
            # committed before, so concurrent creates cannot both pass on the same
            # headroom. (READ COMMITTED reads a fresh snapshot per statement, so the lock
            # must come before the read, on its own.) A project with no limit to hold has
            # nothing to race for, and its creates run side by side. SQLite serialises
            # writers by itself.
            db = await session.connection()
            lock = {"project_id": request.project_id}
            locked = request.project_id in _LIMITED or bool(request.server_group_id)
            if locked:
                await driver.execute(db, _PROJECT_LOCK, lock)
            found = await _validate_on_driver(db, bool(request.key_name), params)
            limited = found is not None and (
                bool(request.server_group_id)
                or not project_quota_from(tuple(found[2:8]), cfg).unlimited
            )
            _remember_limited(request.project_id, limited)
            if limited and not locked:
                await driver.execute(db, _PROJECT_LOCK, lock)
                found = await _validate_on_driver(db, bool(request.key_name), params)
        else:
            found = (
                await session.execute(_validation_query(bool(request.key_name), False), params)
            ).one_or_none()
        if found is None:
            raise InvalidArgument(f"Flavor {request.flavor_id} could not be found.")
        flavor, image = found[0], found[1]
        quota = project_quota_from(tuple(found[2:8]), cfg)
        key_data, metadata_limit = found[8], found[9]
        shared_with_project = bool(found[10])
        image_visible = bool(found[11])
        if not (flavor.is_public or request.private_flavors_allowed or shared_with_project):
            raise InvalidArgument(f"Flavor {request.flavor_id} could not be found.")
        if flavor.disabled:
            raise InvalidArgument(f"Flavor {request.flavor_id} is disabled and cannot be used.")
        if image is None or image.deleted or not image_visible:
            raise InvalidArgument(f"Image {request.image_id} could not be found.")
        if image.status != "active":
            raise InvalidArgument(f"Image {request.image_id} is not active.")
        if flavor.memory_mb < image.min_ram:
            raise InvalidArgument("Flavor's memory is too small for requested image.")
        if flavor.root_gb and flavor.root_gb < image.min_disk:
            raise InvalidArgument("Flavor's disk is too small for requested image.")
        if request.key_name and key_data is None:
            raise InvalidArgument(f"Invalid key_name provided: {request.key_name}")
        if request.metadata:
            limit = cfg.default_quota_metadata_items if metadata_limit is None else metadata_limit
            check_metadata_items(len(request.metadata), int(limit))

        room = quota.headroom(flavor.vcpus, flavor.memory_mb)
        if request.server_group_id:
            members_room = await _server_group_room(session, request, cfg)
            room = members_room if room is None else min(room, members_room)
        count = max_count if room is None else min(max_count, room)
        if count < min_count:
            try:
                quota.check(min_count, flavor.vcpus * min_count, flavor.memory_mb * min_count)
            except QuotaExceeded:
                # The instances of an earlier try of this very request count against the
                # quota: a retry must get them back, not an error.
                existing = await _existing(session, request)
                if existing:
                    return CreateResult(existing, existing[0].reservation_id)
                raise

        # The reads above opened the transaction the writes below commit in.
        now = datetime.now(UTC)
        rid = reservation_id()
        rows: list[Instance] = []
        for index in range(count):
            name = f"{request.name}-{index + 1}" if count > 1 else request.name
            kernel_id = str((image.properties or {}).get("kernel_id", ""))
            ramdisk_id = str((image.properties or {}).get("ramdisk_id", ""))
            rows.append(
                Instance(
                    uuid=instance_uuid(request.project_id, request.request_id, index),
                    name=name,
                    project_id=request.project_id,
                    user_id=request.user_id,
                    vm_state=VmState.BUILDING.value,
                    task_state=TaskState.SCHEDULING.value,
                    power_state=0,
                    flavor_id=flavor.flavorid,
                    flavor_name=flavor.name,
                    vcpus=flavor.vcpus,
                    memory_mb=flavor.memory_mb,
                    root_gb=flavor.root_gb,
                    ephemeral_gb=flavor.ephemeral_gb,
                    swap_mb=flavor.swap_mb,
                    flavor_extra_specs=dict(flavor.extra_specs or {}),
                    image_id=image.id,
                    image_properties={str(k): str(v) for k, v in (image.properties or {}).items()},
                    kernel_id=kernel_id,
                    ramdisk_id=ramdisk_id,
                    requested_availability_zone=zone or None,
                    availability_zone=zone or None,
                    key_name=request.key_name or None,
                    key_data=key_data,
                    metadata_=dict(request.metadata),
                    user_data=request.user_data or None,
                    reservation_id=rid,
                    launch_index=index,
                    hostname=sanitize_hostname(
                        request.hostname if request.hostname and count == 1 else name
                    ),
                    description=request.description or None,
                    access_ipv4=request.access_ipv4,
                    access_ipv6=request.access_ipv6,
                    config_drive="True" if request.config_drive else "",
                    server_group_id=request.server_group_id or None,
                    tags=list(request.tags),
                    addresses=[],
                    requested_networks=requested,
                    network_info=None,
                    attempts=0,
                    failed_hosts=[],
                    alternates=[],
                    force_host=forced or None,
                    scheduler_hints=hints,
                    create_request_id=request.request_id,
                    created_at=now,
                    updated_at=now,
                    deleted=False,
                    locked=False,
                )
            )
        action_request = request.request_id or str(uuid.uuid4())
        actions = [
            {
                "instance_uuid": row.uuid,
                "action": "create",
                "request_id": action_request,
                "user_id": request.user_id,
                "project_id": request.project_id,
                "start_time": now,
                "updated_at": now,
            }
            for row in rows
        ]
        scheduled = [commands.schedule(row.uuid, 1) for row in rows]
        try:
            if postgres:
                for row, new_id in zip(rows, found[12], strict=False):
                    row.id = int(new_id)
                # ONE statement writes the instances, their actions and their schedule
                # messages (writable CTEs); the rows stay plain objects, never flushed.
                sql, _ = driver.compiled(_INSERT_ALL)
                await driver.execute(
                    await session.connection(),
                    sql,
                    _insert_all_params(rows, actions, scheduled),
                )
            else:
                session.add_all(rows)
                await session.flush()  # one INSERT ... RETURNING gives the integer ids
                session.add_all(InstanceAction(**a) for a in actions)
                await outbox.add(session, *scheduled)
            await session.commit()
        except (IntegrityError, psycopg.IntegrityError):
            if not request.request_id:
                raise
            await session.rollback()
            existing = await _existing(session, request)
            if not existing:
                raise
            return CreateResult(existing, existing[0].reservation_id)
    conductor.wakeup.set()
    return CreateResult(rows, rid)


async def _server_group_room(
    session: AsyncSession, request: servers_pb2.CreateServersRequest, cfg: ConductorConfig
) -> int:
    """How many more members the request's server group may take; the group must exist in
    the request's project (its policy is enforced by the scheduler, so a group that does
    not exist is refused here, never ignored)."""
    group = await session.get(ServerGroup, request.server_group_id)
    if group is None or group.project_id != request.project_id:
        raise InvalidArgument(f"Instance group {request.server_group_id} could not be found.")
    limit = await limit_of(session, request.project_id, "server_group_members", cfg)
    if limit < 0:
        return max(1, request.max_count or 1)
    members = await session.scalar(
        select(func.count())
        .select_from(Instance)
        .where(Instance.server_group_id == group.id, Instance.deleted.is_(False))
    )
    room = limit - int(members or 0)
    if room < max(1, request.min_count or 1):
        existing = await _existing(session, request)
        if existing:
            return len(existing)
        raise QuotaExceeded("server_group_members", max(1, request.min_count), limit - room, limit)
    return room


async def _existing(
    session: AsyncSession, request: servers_pb2.CreateServersRequest
) -> list[Instance]:
    if not request.request_id:
        return []
    result = await session.execute(
        select(Instance)
        .where(
            Instance.create_request_id == request.request_id,
            Instance.project_id == request.project_id,
        )
        .order_by(Instance.launch_index)
    )
    return list(result.scalars())


# (attribute, column) of every column of an instance row: metadata_ is "metadata".
_INSTANCE_COLUMNS = [(a.key, str(a.columns[0].key)) for a in Instance.__mapper__.column_attrs]
_ACTION_COLUMNS: tuple[str, ...] = (
    "instance_uuid",
    "action",
    "request_id",
    "user_id",
    "project_id",
    "start_time",
    "updated_at",
)
_OUTBOX_COLUMNS = ("subject", "msg_id", "payload", "created_at", "traceparent")


def _select_from_json(table: str, columns: tuple[str, ...], param: str) -> str:
    names = ", ".join(columns)
    return (
        f"INSERT INTO {table} ({names}) SELECT {names} "
        f"FROM jsonb_populate_recordset(NULL::{table}, CAST(:{param} AS jsonb))"
    )


# INSERT instances, INSERT actions and INSERT outbox as ONE PostgreSQL statement: the first
# two are writable CTEs, which run whether or not the main statement reads them. The rows
# travel as three JSON arrays, so the statement text never changes with the number of
# servers: it is compiled and prepared once, not per request (compiling a multi-row
# INSERT per call cost about a fifth of the conductor's CPU in a boot storm).
_INSERT_ALL = text(
    "WITH new_instances AS ("
    + _select_from_json("instances", tuple(c for _, c in _INSTANCE_COLUMNS), "instances")
    + "), new_actions AS ("
    + _select_from_json("instance_actions", _ACTION_COLUMNS, "actions")
    + ") "
    + _select_from_json("outbox", _OUTBOX_COLUMNS, "outbox")
    + " ON CONFLICT (msg_id) DO NOTHING"
)


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return "\\x" + value.hex()  # bytea's hex input form
    raise TypeError(f"cannot encode {type(value).__name__}")


def _insert_all_params(
    rows: list[Instance], actions: list[dict[str, Any]], messages: list[outbox.Outgoing]
) -> dict[str, str]:
    """The three JSON arrays _INSERT_ALL reads. A uuid that exists already fails the whole
    statement (the idempotent retry's signal)."""

    def encode(items: list[dict[str, Any]]) -> str:
        return orjson.dumps(items, default=_json_default).decode()

    return {
        "instances": encode(
            [{column: getattr(row, attr) for attr, column in _INSTANCE_COLUMNS} for row in rows]
        ),
        "actions": encode(actions),
        "outbox": encode(outbox.rows_of(messages)),
    }


_FLAVOR_COLUMNS = [c.key for c in Flavor.__table__.columns]
_IMAGE_COLUMNS = [c.key for c in Image.__table__.columns]


async def _validate_on_driver(
    db: AsyncConnection, with_key: bool, params: dict[str, Any]
) -> tuple[Any, ...] | None:
    """The validation query sent straight to psycopg (PostgreSQL): the same row as the
    ORM path gives, with the flavor and image as plain attribute bags."""
    sql, literals = driver.compiled(_validation_query(with_key, True))
    row = await (await driver.execute(db, sql, {**literals, **params})).fetchone()
    if row is None:
        return None
    nf, ni = len(_FLAVOR_COLUMNS), len(_IMAGE_COLUMNS)
    flavor = SimpleNamespace(**dict(zip(_FLAVOR_COLUMNS, row[:nf], strict=True)))
    image_values = row[nf : nf + ni]
    image = (
        None
        if image_values[0] is None
        else SimpleNamespace(**dict(zip(_IMAGE_COLUMNS, image_values, strict=True)))
    )
    return (flavor, image, *row[nf + ni :])


@cache
def _validation_query(with_key: bool, postgres: bool) -> Select[Any]:
    """Every read the validation needs, in ONE statement: flavor, image, usage, limits,
    keypair and, on PostgreSQL, the new ids. A boot's statement budget is small (see the
    conductor's README). Built once per variant, with bound parameters: building the
    expression anew cost as much as running it."""
    project = bindparam("project_id", type_=String)
    usage, overrides = usage_columns(project)
    extra: list[Any] = [
        select(Keypair.public_key)
        .where(
            Keypair.user_id == bindparam("user_id", type_=String),
            Keypair.name == bindparam("key_name", type_=String),
        )
        .scalar_subquery()
        if with_key
        else literal(None),
        override(project, "metadata_items"),
        # Whether the flavor is shared with the project (a private flavor's access list).
        exists()
        .where(FlavorProject.flavor_id == Flavor.id, FlavorProject.project_id == project)
        .correlate(Flavor),
        # Whether the project sees the image: the image service's rule (members included).
        visible_to(project),
    ]
    if postgres:
        # The new instances' ids, drawn from their sequence in this same statement, so the
        # addresses (derived from the ids) go into the INSERT instead of a later UPDATE.
        # Ids left unused (quota, a retry) are gaps, as a rolled-back INSERT leaves.
        seq = cast(func.pg_get_serial_sequence("instances", "id"), REGCLASS)
        count = bindparam("id_count", type_=Integer)
        extra.append(
            select(func.array_agg(func.nextval(seq)))
            .select_from(func.generate_series(1, count).alias("n"))
            .scalar_subquery()
        )
    return (
        select(Flavor, Image, *usage.c, *overrides, *extra)
        .select_from(Flavor)
        .outerjoin(Image, Image.id == bindparam("image_id", type_=String))
        .join(usage, true())
        .where(Flavor.flavorid == bindparam("flavor_id", type_=String))
    )
