"""The schema, as typed SQLAlchemy 2.0 models. Alembic's chain in migrations/ must match it.

Ownership (the only writer of each table):
  conductor: instances, instance_actions, instance_action_events, flavors, images,
             image_members, keypairs, quotas, quota_classes, services, outbox, projects,
             users, roles, role_assignments, server_groups, console_auth_tokens, migrations
  scheduler: resource_providers, allocations, aggregates, aggregate_hosts, aggregate_metadata
  network:   networks, subnets, ports, port_security_groups, ip_allocations, security_groups,
             security_group_rules, default_security_groups, routers, floating_ips,
             network_quotas
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only autoincrements INTEGER primary keys; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


# --------------------------------------------------------------------------- conductor


class Instance(TimestampMixin, Base):
    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_project_deleted_created", "project_id", "deleted", "created_at"),
        Index("ix_instances_host_deleted", "host", "deleted"),
        Index("ix_instances_updated_at", "updated_at"),
        Index("ix_instances_create_request_id", "create_request_id"),
        Index("ix_instances_reservation_id", "reservation_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(64))
    vm_state: Mapped[str] = mapped_column(String(32))
    task_state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    power_state: Mapped[int] = mapped_column(Integer, default=0)
    # Flavor snapshot taken at build time.
    flavor_id: Mapped[str] = mapped_column(String(255))
    flavor_name: Mapped[str] = mapped_column(String(255))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    root_gb: Mapped[int] = mapped_column(Integer)
    ephemeral_gb: Mapped[int] = mapped_column(Integer, default=0)
    swap_mb: Mapped[int] = mapped_column(Integer, default=0)
    flavor_extra_specs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    image_id: Mapped[str] = mapped_column(String(36))
    # The image's properties when the server was created (a later change to the image
    # leaves them as they were), as text.
    image_properties: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    kernel_id: Mapped[str] = mapped_column(String(36), default="")
    ramdisk_id: Mapped[str] = mapped_column(String(36), default="")
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    availability_zone: Mapped[str | None] = mapped_column(String(255), nullable=True)
    requested_availability_zone: Mapped[str | None] = mapped_column(String(255), nullable=True)
    key_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    key_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    user_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    reservation_id: Mapped[str] = mapped_column(String(255))
    launch_index: Mapped[int] = mapped_column(Integer, default=0)
    hostname: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    locked: Mapped[bool] = mapped_column(Boolean, default=False)
    locked_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # "owner" or "admin" while locked: an owner cannot lift an admin's lock.
    locked_by: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # When it was last shelved: a shelved server is offloaded shelved_offload_time later.
    shelved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The snapshot image the shelve took; an offloaded server is unshelved from it, and it
    # is deleted once the server runs again (or is deleted).
    shelved_image_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    access_ipv4: Mapped[str] = mapped_column(String(64), default="")
    access_ipv6: Mapped[str] = mapped_column(String(64), default="")
    config_drive: Mapped[str] = mapped_column(String(16), default="")
    server_group_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    addresses: Mapped[list[Any]] = mapped_column(default=list)
    # What server create asked for, resolved: {"networks": [{"network_id", "port_id",
    # "fixed_ip"}], "security_group_ids": [...] or null for the project's default}; null
    # for a server with no network ("none").
    requested_networks: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Its ports once bound: [{"port_id", "network_id", "network_name", "mac_address",
    # "fixed_ips": [...], "user_port"}], in NIC order.
    network_info: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    # {code, message, details, created_at} while in ERROR.
    fault: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Build bookkeeping: attempts so far, hosts that failed, alternates still to try.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    failed_hosts: Mapped[list[Any]] = mapped_column(default=list)
    alternates: Mapped[list[Any]] = mapped_column(default=list)
    force_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The placement hints it was created with besides its group (migration 0020):
    # {"same_host": [uuid, ...], "different_host": [uuid, ...]}, each key only when
    # given; null for neither. Every scheduling of the server keeps them.
    scheduler_hints: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The CreateServers request_id: a retry returns the same servers.
    create_request_id: Mapped[str] = mapped_column(String(255))
    launched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    terminated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class InstanceAction(Base):
    __tablename__ = "instance_actions"
    __table_args__ = (
        UniqueConstraint("instance_uuid", "request_id", name="uq_instance_actions_request"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    instance_uuid: Mapped[str] = mapped_column(String(36), index=True)
    action: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(String(64))
    start_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finish_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class InstanceActionEvent(Base):
    __tablename__ = "instance_action_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    action_id: Mapped[int] = mapped_column(
        ForeignKey("instance_actions.id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str] = mapped_column(String(255))
    start_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finish_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    result: Mapped[str | None] = mapped_column(String(32), nullable=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    details: Mapped[str | None] = mapped_column(Text, nullable=True)


class Flavor(TimestampMixin, Base):
    __tablename__ = "flavors"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    flavorid: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    root_gb: Mapped[int] = mapped_column(Integer)
    ephemeral_gb: Mapped[int] = mapped_column(Integer, default=0)
    swap_mb: Mapped[int] = mapped_column(Integer, default=0)
    rxtx_factor: Mapped[float] = mapped_column(Float, default=1.0)
    is_public: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    extra_specs: Mapped[dict[str, Any]] = mapped_column(default=dict)


class FlavorProject(Base):
    """A project's access to a private flavor (os-flavor-access) (0012)."""

    __tablename__ = "flavor_projects"
    __table_args__ = (UniqueConstraint("flavor_id", "project_id", name="uq_flavor_projects"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    flavor_id: Mapped[int] = mapped_column(ForeignKey("flavors.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[str] = mapped_column(String(255), index=True)


class Image(TimestampMixin, Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    disk_format: Mapped[str | None] = mapped_column(String(32), nullable=True)
    container_format: Mapped[str | None] = mapped_column(String(32), nullable=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    virtual_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    checksum: Mapped[str | None] = mapped_column(String(32), nullable=True)
    os_hash_algo: Mapped[str | None] = mapped_column(String(64), nullable=True)
    os_hash_value: Mapped[str | None] = mapped_column(String(128), nullable=True)
    min_disk: Mapped[int] = mapped_column(Integer, default=0)
    min_ram: Mapped[int] = mapped_column(Integer, default=0)
    visibility: Mapped[str] = mapped_column(String(16), default="shared")
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    location: Mapped[str | None] = mapped_column(Text, nullable=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class ImageMember(TimestampMixin, Base):
    """A project a shared image is offered to, and its answer (0022). An image's
    deletion removes its members; a change of visibility away from shared keeps them,
    but only a shared image's members see it."""

    __tablename__ = "image_members"
    __table_args__ = (
        UniqueConstraint("image_id", "member_id", name="uq_image_members_image_member"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    member_id: Mapped[str] = mapped_column(String(255), index=True)
    # pending, accepted or rejected.
    status: Mapped[str] = mapped_column(String(16))


class Keypair(Base):
    __tablename__ = "keypairs"
    __table_args__ = (UniqueConstraint("user_id", "name", name="uq_keypairs_user_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(String(64), default="")
    name: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(255))
    public_key: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16), default="ssh")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Quota(Base):
    __tablename__ = "quotas"
    __table_args__ = (
        UniqueConstraint("project_id", "resource", name="uq_quotas_project_resource"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(64))
    hard_limit: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class QuotaClass(Base):
    """A stored default limit: the class "default" (Nova's only class) overrides the
    configured defaults of every project that has no limit of its own for the resource."""

    __tablename__ = "quota_classes"
    __table_args__ = (
        UniqueConstraint("class_name", "resource", name="uq_quota_classes_class_name"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    class_name: Mapped[str] = mapped_column(String(255))
    resource: Mapped[str] = mapped_column(String(64))
    hard_limit: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Service(TimestampMixin, Base):
    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("host", "binary", name="uq_services_host_binary"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    binary: Mapped[str] = mapped_column(String(64))
    zone: Mapped[str] = mapped_column(String(255), default="nova")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    forced_down: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen_up: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    report_count: Mapped[int] = mapped_column(BigInteger, default=0)
    version: Mapped[str] = mapped_column(String(32), default="")
    compute_endpoint: Mapped[str] = mapped_column(String(255), default="")


class ConsoleAuthToken(Base):
    """A console token: only its SHA-256 is kept, bound to one instance and to the console
    server (host, port) the agent reported when it was made."""

    __tablename__ = "console_auth_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    instance_uuid: Mapped[str] = mapped_column(String(36), index=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    protocol: Mapped[str] = mapped_column(String(32))
    console_type: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OutboxMessage(Base):
    """A NATS message committed with the database change that implies it.

    The relay publishes rows in id order with Nats-Msg-Id = msg_id, then deletes them.
    A crash between commit and publish only delays the message; a crash between publish
    and delete publishes it again, which JetStream's dedup window turns into a no-op.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(255))
    msg_id: Mapped[str] = mapped_column(String(255), unique=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The W3C trace context of the span that queued it (tracing on), sent as the message's
    # traceparent header, so the consumer's span continues the same trace.
    traceparent: Mapped[str | None] = mapped_column(String(55), nullable=True)


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("domain_id", "name", name="uq_projects_domain_name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    domain_id: Mapped[str] = mapped_column(String(64), default="default")
    description: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("domain_id", "name", name="uq_users_domain_name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    domain_id: Mapped[str] = mapped_column(String(64), default="default")
    # A salted, slow hash (scrypt); never logged, never returned.
    password_hash: Mapped[str] = mapped_column(String(512))
    email: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    default_project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Attributes a client gave beyond the standard ones (0013).
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Role(Base):
    __tablename__ = "roles"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)


class TokenRevocation(Base):
    """Tokens no longer valid before their expiry: one token (audit_id), or every token of a
    user (those scoped to project_id only, when it is set) issued at or before
    issued_before. Written by the identity service alone; token validators keep a copy
    (ListRevocations). Dropped once expired."""

    __tablename__ = "token_revocations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    audit_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    issued_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class RoleAssignment(Base):
    __tablename__ = "role_assignments"
    __table_args__ = (
        UniqueConstraint("user_id", "project_id", "role_id", name="uq_role_assignments_grant"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    role_id: Mapped[str] = mapped_column(ForeignKey("roles.id", ondelete="CASCADE"))


class ServerGroup(Base):
    """A server group (os-server-groups); members are instances naming it in
    instances.server_group_id. Added by migration 0002_catalog_server_groups."""

    __tablename__ = "server_groups"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[str] = mapped_column(String(64))
    policy: Mapped[str] = mapped_column(String(32))
    rules: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# --------------------------------------------------------------------------- scheduler


class ResourceProvider(TimestampMixin, Base):
    """A host's inventory and usage. Claims are conditional UPDATEs on the *_used columns;
    the CHECK constraints make over-commit impossible even for a buggy writer."""

    __tablename__ = "resource_providers"
    __table_args__ = (
        CheckConstraint("vcpu_used >= 0", name="vcpu_used_nonneg"),
        CheckConstraint("memory_mb_used >= 0", name="memory_mb_used_nonneg"),
        CheckConstraint("disk_gb_used >= 0", name="disk_gb_used_nonneg"),
        CheckConstraint(
            "vcpu_used <= vcpu_total * vcpu_ratio - vcpu_reserved", name="vcpu_capacity"
        ),
        CheckConstraint(
            "memory_mb_used <= memory_mb_total * memory_mb_ratio - memory_mb_reserved",
            name="memory_mb_capacity",
        ),
        CheckConstraint(
            "disk_gb_used <= disk_gb_total * disk_gb_ratio - disk_gb_reserved",
            name="disk_gb_capacity",
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    availability_zone: Mapped[str | None] = mapped_column(String(255), nullable=True)
    vcpu_total: Mapped[int] = mapped_column(BigInteger, default=0)
    vcpu_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    vcpu_ratio: Mapped[float] = mapped_column(Float, default=16.0)
    vcpu_used: Mapped[int] = mapped_column(BigInteger, default=0)
    memory_mb_total: Mapped[int] = mapped_column(BigInteger, default=0)
    memory_mb_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    memory_mb_ratio: Mapped[float] = mapped_column(Float, default=1.5)
    memory_mb_used: Mapped[int] = mapped_column(BigInteger, default=0)
    disk_gb_total: Mapped[int] = mapped_column(BigInteger, default=0)
    disk_gb_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    disk_gb_ratio: Mapped[float] = mapped_column(Float, default=1.0)
    disk_gb_used: Mapped[int] = mapped_column(BigInteger, default=0)
    allocation_count: Mapped[int] = mapped_column(Integer, default=0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    hypervisor_type: Mapped[str] = mapped_column(String(64), default="")
    hypervisor_version: Mapped[int] = mapped_column(BigInteger, default=0)
    compute_endpoint: Mapped[str] = mapped_column(String(255), default="")
    host_ip: Mapped[str] = mapped_column(String(64), default="")
    cpu_info: Mapped[str] = mapped_column(Text, default="")
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    # An operator forced the host down (os-services --down): no new placements (0007).
    forced_down: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The ratios the host's own report asked for; the *_ratio columns hold the effective
    # ones (the lowest of its aggregates' cpu/ram/disk_allocation_ratio, else these).
    # NULL: the same as *_ratio (0007).
    vcpu_host_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    memory_mb_host_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_gb_host_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The host's aggregates' metadata merged, {key: [value of each aggregate]}: derived
    # from the aggregate tables in the same transaction that changes them (0007), so the
    # host cache and the filters read it with the row.
    aggregate_metadata: Mapped[dict[str, Any]] = mapped_column(
        default=dict, server_default=text("'{}'")
    )


class Aggregate(TimestampMixin, Base):
    """A host aggregate (os-aggregates); its `availability_zone` metadata makes it a zone."""

    __tablename__ = "aggregates"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)


class AggregateHost(Base):
    """A host's membership of an aggregate."""

    __tablename__ = "aggregate_hosts"
    __table_args__ = (
        UniqueConstraint("aggregate_id", "provider_id", name="uq_aggregate_hosts_member"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    aggregate_id: Mapped[int] = mapped_column(
        ForeignKey("aggregates.id", ondelete="CASCADE"), index=True
    )
    provider_id: Mapped[int] = mapped_column(
        ForeignKey("resource_providers.id", ondelete="CASCADE"), index=True
    )


class AggregateMetadata(Base):
    """One metadata item of an aggregate."""

    __tablename__ = "aggregate_metadata"
    __table_args__ = (UniqueConstraint("aggregate_id", "key", name="uq_aggregate_metadata_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    aggregate_id: Mapped[int] = mapped_column(
        ForeignKey("aggregates.id", ondelete="CASCADE"), index=True
    )
    key: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(String(255))


class Allocation(Base):
    """What one consumer (instance) holds on one provider. One row per consumer, so a
    repeated claim is a no-op and a release happens exactly once (DELETE ... RETURNING)."""

    __tablename__ = "allocations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    consumer_id: Mapped[str] = mapped_column(String(36), unique=True)
    provider_id: Mapped[int] = mapped_column(ForeignKey("resource_providers.id"), index=True)
    project_id: Mapped[str] = mapped_column(String(64), default="")
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The consumer's server group (0004): its policy is checked against these rows.
    group_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)


class Migration(Base):
    """One move of one instance between hosts (resize, cold migration). Its uuid is also
    the placement consumer that holds the source host's allocation while the move is open."""

    __tablename__ = "migrations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    instance_uuid: Mapped[str] = mapped_column(String(36), index=True)
    request_id: Mapped[str] = mapped_column(String(255))
    migration_type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32), index=True)
    source_compute: Mapped[str] = mapped_column(String(255))
    source_node: Mapped[str] = mapped_column(String(255))
    dest_compute: Mapped[str | None] = mapped_column(String(255), nullable=True)
    dest_node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    dest_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The instance's flavor snapshot before and after (Instance's flavor columns as JSON).
    old_flavor: Mapped[dict[str, Any]] = mapped_column(JSON)
    new_flavor: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Whether the instance ran when the move began (a revert starts it again).
    was_running: Mapped[bool] = mapped_column(Boolean, default=True)
    user_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


# --------------------------------------------------------------------------- network


class Network(TimestampMixin, Base):
    """A tenant's (or a shared, or an external) layer-2 network."""

    __tablename__ = "networks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str] = mapped_column(String(255), default="")
    admin_state_up: Mapped[bool] = mapped_column(Boolean, default=True)
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    router_external: Mapped[bool] = mapped_column(Boolean, default=False)
    mtu: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="ACTIVE")
    port_security_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    revision_number: Mapped[int] = mapped_column(Integer, default=0)
    # Its VXLAN VNI, given when a port of it is first bound to a host.
    segmentation_id: Mapped[int | None] = mapped_column(Integer, nullable=True, unique=True)


class AutoAllocatedNetwork(Base):
    """The network "auto" gave a project ("get me a network"): one per project, which
    the primary key makes so under concurrency."""

    __tablename__ = "auto_allocated_networks"

    project_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id", ondelete="CASCADE"))


class Subnet(TimestampMixin, Base):
    """An IPv4 range of a network; its pools are what IPAM hands out."""

    __tablename__ = "subnets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    network_id: Mapped[str] = mapped_column(
        ForeignKey("networks.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str] = mapped_column(String(255), default="")
    ip_version: Mapped[int] = mapped_column(Integer, default=4)
    cidr: Mapped[str] = mapped_column(String(64))
    gateway_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    enable_dhcp: Mapped[bool] = mapped_column(Boolean, default=True)
    # [{"start": ..., "end": ...}], inclusive, within cidr.
    allocation_pools: Mapped[list[Any]] = mapped_column(JSON)
    dns_nameservers: Mapped[list[Any]] = mapped_column(JSON)
    # [{"destination": ..., "nexthop": ...}]
    host_routes: Mapped[list[Any]] = mapped_column(JSON)
    revision_number: Mapped[int] = mapped_column(Integer, default=0)


class Port(TimestampMixin, Base):
    """A virtual NIC on a network: its MAC, what uses it, where it is bound."""

    __tablename__ = "ports"
    __table_args__ = (Index("ix_ports_device_id", "device_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str] = mapped_column(String(255), default="")
    admin_state_up: Mapped[bool] = mapped_column(Boolean, default=True)
    mac_address: Mapped[str] = mapped_column(String(17), unique=True)
    device_id: Mapped[str] = mapped_column(String(255), default="")
    device_owner: Mapped[str] = mapped_column(String(255), default="")
    binding_host_id: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(16), default="DOWN")
    port_security_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Extra addresses it may send from: [{"ip_address": IPv4 or CIDR, "mac_address": MAC}].
    allowed_address_pairs: Mapped[list[Any]] = mapped_column(default=list)
    revision_number: Mapped[int] = mapped_column(Integer, default=0)


class IpAllocation(Base):
    """One address held by one port. UNIQUE (subnet_id, ip_address) is what makes IPAM
    atomic: two ports racing for one address cannot both insert it."""

    __tablename__ = "ip_allocations"
    __table_args__ = (
        UniqueConstraint("subnet_id", "ip_address", name="uq_ip_allocations_subnet_address"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    subnet_id: Mapped[str] = mapped_column(ForeignKey("subnets.id", ondelete="CASCADE"))
    port_id: Mapped[str] = mapped_column(ForeignKey("ports.id", ondelete="CASCADE"), index=True)
    ip_address: Mapped[str] = mapped_column(String(64))


class SecurityGroup(TimestampMixin, Base):
    __tablename__ = "security_groups"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str] = mapped_column(String(255), default="")
    stateful: Mapped[bool] = mapped_column(Boolean, default=True)
    revision_number: Mapped[int] = mapped_column(Integer, default=0)


class DefaultSecurityGroup(Base):
    """Each project's `default` group: one row per project, so two first uses racing make
    one group."""

    __tablename__ = "default_security_groups"

    project_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    security_group_id: Mapped[str] = mapped_column(
        ForeignKey("security_groups.id", ondelete="CASCADE")
    )


class SecurityGroupRule(TimestampMixin, Base):
    """One rule. `signature` is the rule's matching attributes in one string, unique per
    group: a duplicate rule cannot be inserted, however concurrently."""

    __tablename__ = "security_group_rules"
    __table_args__ = (
        UniqueConstraint(
            "security_group_id", "signature", name="uq_security_group_rules_signature"
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    security_group_id: Mapped[str] = mapped_column(
        ForeignKey("security_groups.id", ondelete="CASCADE"), index=True
    )
    direction: Mapped[str] = mapped_column(String(8))
    ethertype: Mapped[str] = mapped_column(String(8))
    protocol: Mapped[str | None] = mapped_column(String(40), nullable=True)
    port_range_min: Mapped[int | None] = mapped_column(Integer, nullable=True)
    port_range_max: Mapped[int | None] = mapped_column(Integer, nullable=True)
    remote_ip_prefix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    remote_group_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    signature: Mapped[str] = mapped_column(String(255))
    revision_number: Mapped[int] = mapped_column(Integer, default=0)


class PortSecurityGroup(Base):
    __tablename__ = "port_security_groups"

    port_id: Mapped[str] = mapped_column(
        ForeignKey("ports.id", ondelete="CASCADE"), primary_key=True
    )
    security_group_id: Mapped[str] = mapped_column(
        ForeignKey("security_groups.id"), primary_key=True, index=True
    )


class PortSecurityChange(Base):
    """A change to what some bound ports' chains must say, not yet sent to their hosts: a
    group's rules or members changed (group_id), or a port's own groups, addresses or port
    security (port_id). Written in the transaction of the change; the conductor claims rows
    (claimed_until), sends the affected ports' bindings to their hosts, then deletes them.
    """

    __tablename__ = "port_security_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    group_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    port_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RouterChange(Base):
    """A change to what a router's host must serve (its gateway, interfaces, floating IPs,
    admin state, or the router's deletion), or to a device's floating IPs, not yet sent.
    Written in the transaction of the change; the conductor claims rows (claimed_until),
    sends the routers' bindings to the L3 host and records the devices' floating IPs,
    then deletes them."""

    __tablename__ = "router_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The router whose host must be told (null for a device-only change).
    router_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # A device (server) whose floating IPs changed: the compute service's addresses follow.
    device_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class NetworkCounter(Base):
    """A named counter of the network domain. `port_security`: the security_revision of
    port bindings; incremented (row-locked) before a binding is read, so a later revision
    always describes a later state."""

    __tablename__ = "network_counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class Router(TimestampMixin, Base):
    """A router; its interfaces and gateway are ports whose device_id is the router's id."""

    __tablename__ = "routers"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str] = mapped_column(String(255), default="")
    admin_state_up: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default="ACTIVE")
    # The gateway's external network and its port (both null without a gateway).
    gateway_network_id: Mapped[str | None] = mapped_column(ForeignKey("networks.id"), nullable=True)
    gateway_port_id: Mapped[str | None] = mapped_column(
        ForeignKey("ports.id", ondelete="SET NULL"), nullable=True
    )
    enable_snat: Mapped[bool] = mapped_column(Boolean, default=True)
    revision_number: Mapped[int] = mapped_column(Integer, default=0)


class FloatingIp(TimestampMixin, Base):
    """An external network's address held by a port of its own (`floating_port_id`, whose
    allocation makes it unique), mapped to a tenant port's fixed address when associated.
    One fixed address has at most one floating IP."""

    __tablename__ = "floating_ips"
    __table_args__ = (
        UniqueConstraint("port_id", "fixed_ip_address", name="uq_floating_ips_fixed"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    floating_network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"))
    floating_port_id: Mapped[str] = mapped_column(
        ForeignKey("ports.id", ondelete="CASCADE"), unique=True
    )
    floating_ip_address: Mapped[str] = mapped_column(String(64))
    port_id: Mapped[str | None] = mapped_column(
        ForeignKey("ports.id", ondelete="SET NULL"), nullable=True, index=True
    )
    fixed_ip_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    router_id: Mapped[str | None] = mapped_column(
        ForeignKey("routers.id", ondelete="SET NULL"), nullable=True
    )
    status: Mapped[str] = mapped_column(String(16), default="DOWN")
    description: Mapped[str] = mapped_column(String(255), default="")
    revision_number: Mapped[int] = mapped_column(Integer, default=0)


class NetworkQuota(Base):
    """A project's own limit for one network resource, over the configured default."""

    __tablename__ = "network_quotas"

    project_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource: Mapped[str] = mapped_column(String(32), primary_key=True)
    hard_limit: Mapped[int] = mapped_column(Integer)
