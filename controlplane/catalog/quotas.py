"""Quotas: limits and usage counted from live rows.

A project's limit for a resource is, first found: its own (table quotas), the quota class
"default" (table quota_classes, what `PUT /os-quota-class-sets/default` stores), the
configured default. Other class names can be stored and read, as Nova allows, but only
"default" applies to projects.

Usage is counted, never stored (Nova's "counted quotas"): there is no usage record to drift.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from loom.catalog.v1 import quotas_pb2, quotas_pb2_grpc
from sqlalchemy import BindParameter, ScalarSelect, Subquery, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.config import ConductorConfig
from controlplane.db.dialect import upsert_insert
from controlplane.db.models import Instance, Keypair, Quota, QuotaClass
from controlplane.runtime.errors import InvalidArgument, QuotaExceeded
from controlplane.runtime.rpc import grpc_errors

RESOURCES = (
    "instances",
    "cores",
    "ram",
    "key_pairs",
    "metadata_items",
    "server_groups",
    "server_group_members",
    "injected_files",
    "injected_file_content_bytes",
    "injected_file_path_bytes",
    "fixed_ips",
    "floating_ips",
    "security_groups",
    "security_group_rules",
)

# Legacy limits Loom does not enforce but reports, with Nova's defaults.
_LEGACY_DEFAULTS = {
    "injected_files": 5,
    "injected_file_content_bytes": 10240,
    "injected_file_path_bytes": 255,
    # nova-network's quotas, shown by the compute API before 2.36 (quota sets) and 2.50
    # (quota classes); networking quotas are the network service's own.
    "fixed_ips": -1,
    "floating_ips": 10,
    "security_groups": 10,
    "security_group_rules": 20,
}


DEFAULT_CLASS = "default"


def default_limits(cfg: ConductorConfig) -> dict[str, int]:
    """The configured defaults (before the stored "default" class)."""
    return {
        "instances": cfg.default_quota_instances,
        "cores": cfg.default_quota_cores,
        "ram": cfg.default_quota_ram,
        "key_pairs": cfg.default_quota_key_pairs,
        "metadata_items": cfg.default_quota_metadata_items,
        "server_groups": cfg.default_quota_server_groups,
        "server_group_members": cfg.default_quota_server_group_members,
        **_LEGACY_DEFAULTS,
    }


@dataclass(frozen=True)
class InstanceUsage:
    instances: int
    cores: int
    ram: int


@dataclass(frozen=True)
class ProjectQuota:
    """What a project may use and what it uses now (instances, cores, ram)."""

    limits: dict[str, int]
    usage: InstanceUsage

    def check(self, instances: int, cores: int, ram: int) -> None:
        """Raises QuotaExceeded naming the first resource the request would take over its
        limit; -1 is unlimited."""
        for resource, requested, used in (
            ("instances", instances, self.usage.instances),
            ("cores", cores, self.usage.cores),
            ("ram", ram, self.usage.ram),
        ):
            limit = self.limits[resource]
            if limit >= 0 and used + requested > limit:
                raise QuotaExceeded(resource, requested, used, limit)

    @property
    def unlimited(self) -> bool:
        """No limit on instances, cores or ram: no create can take this project over."""
        return all(self.limits[r] < 0 for r in ("instances", "cores", "ram"))

    def headroom(self, per_instance_cores: int, per_instance_ram: int) -> int | None:
        """How many more instances of this size fit; None when unlimited."""
        room: list[int] = []
        for resource, each, used in (
            ("instances", 1, self.usage.instances),
            ("cores", per_instance_cores, self.usage.cores),
            ("ram", per_instance_ram, self.usage.ram),
        ):
            limit = self.limits[resource]
            if limit >= 0 and each > 0:
                room.append(max(0, (limit - used) // each))
        return min(room) if room else None


def usage_columns(
    project_id: str | BindParameter[str],
) -> tuple[Subquery, list[ScalarSelect[Any]]]:
    """A one-row derived table with the project's instance usage (count, cores, ram) and
    scalar subqueries for its instances/cores/ram overrides, to join into another query."""
    usage = (
        select(
            func.count(Instance.id).label("instances"),
            func.coalesce(func.sum(Instance.vcpus), 0).label("cores"),
            func.coalesce(func.sum(Instance.memory_mb), 0).label("ram"),
        )
        .where(Instance.project_id == project_id, Instance.deleted.is_(False))
        .subquery("usage")
    )
    overrides = [override(project_id, r) for r in ("instances", "cores", "ram")]
    return usage, overrides


def override(project_id: str | BindParameter[str], resource: str) -> ScalarSelect[Any]:
    """The project's own limit, else the "default" class's; NULL when neither is stored."""
    own = (
        select(Quota.hard_limit)
        .where(Quota.project_id == project_id, Quota.resource == resource)
        .scalar_subquery()
    )
    of_class = (
        select(QuotaClass.hard_limit)
        .where(QuotaClass.class_name == DEFAULT_CLASS, QuotaClass.resource == resource)
        .scalar_subquery()
    )
    return select(func.coalesce(own, of_class)).scalar_subquery()


async def class_limits(
    session: AsyncSession, class_name: str, cfg: ConductorConfig
) -> dict[str, int]:
    """The configured defaults with the class's stored limits over them."""
    limits = default_limits(cfg)
    rows = await session.execute(
        select(QuotaClass.resource, QuotaClass.hard_limit).where(
            QuotaClass.class_name == class_name
        )
    )
    for resource, hard_limit in rows:
        if resource in limits:
            limits[resource] = int(hard_limit)
    return limits


def project_quota_from(row: Sequence[Any], cfg: ConductorConfig) -> ProjectQuota:
    """Builds the quota from (instances, cores, ram, instances_limit, cores_limit, ram_limit)."""
    limits = default_limits(cfg)
    for name, value in zip(("instances", "cores", "ram"), row[3:6], strict=True):
        if value is not None:
            limits[name] = int(value)
    return ProjectQuota(limits, InstanceUsage(int(row[0]), int(row[1]), int(row[2])))


async def load_project_quota(
    session: AsyncSession, project_id: str, cfg: ConductorConfig
) -> ProjectQuota:
    """Limits and instance usage of a project in ONE statement."""
    usage, overrides = usage_columns(project_id)
    row = (await session.execute(select(*usage.c, *overrides))).one()
    return project_quota_from(tuple(row), cfg)


async def limit_of(
    session: AsyncSession, project_id: str, resource: str, cfg: ConductorConfig
) -> int:
    value = (await session.execute(select(override(project_id, resource)))).scalar_one_or_none()
    return default_limits(cfg)[resource] if value is None else int(value)


async def all_limits(
    session: AsyncSession, project_id: str, cfg: ConductorConfig
) -> dict[str, int]:
    limits = await class_limits(session, DEFAULT_CLASS, cfg)
    rows = await session.execute(
        select(Quota.resource, Quota.hard_limit).where(Quota.project_id == project_id)
    )
    for resource, hard_limit in rows:
        if resource in limits:
            limits[resource] = int(hard_limit)
    return limits


def check_metadata_items(count: int, limit: int) -> None:
    if limit >= 0 and count > limit:
        raise QuotaExceeded("metadata_items", count, 0, limit)


def limits_pb(limits: dict[str, int]) -> quotas_pb2.QuotaLimits:
    return quotas_pb2.QuotaLimits(**{k: limits[k] for k in RESOURCES})


class QuotasServicer(quotas_pb2_grpc.QuotasServiceServicer):
    def __init__(self, sessions: async_sessionmaker[AsyncSession], cfg: ConductorConfig) -> None:
        self._sessions = sessions
        self._cfg = cfg

    @grpc_errors
    async def GetQuotas(
        self, request: quotas_pb2.GetQuotasRequest, context: grpc.aio.ServicerContext
    ) -> quotas_pb2.GetQuotasResponse:
        async with self._sessions() as session:
            quota = await load_project_quota(session, request.project_id, self._cfg)
            limits = await all_limits(session, request.project_id, self._cfg)
            key_pairs = 0
            if request.user_id:
                key_pairs = int(
                    (
                        await session.execute(
                            select(func.count(Keypair.id)).where(Keypair.user_id == request.user_id)
                        )
                    ).scalar_one()
                )
        usage = quotas_pb2.QuotaUsage(
            instances=quota.usage.instances,
            cores=quota.usage.cores,
            ram=quota.usage.ram,
            key_pairs=key_pairs,
        )
        return quotas_pb2.GetQuotasResponse(limits=limits_pb(limits), usage=usage)

    @grpc_errors
    async def UpdateQuotas(
        self, request: quotas_pb2.UpdateQuotasRequest, context: grpc.aio.ServicerContext
    ) -> quotas_pb2.UpdateQuotasResponse:
        """Postcondition: every given limit is stored; the others keep their value.
        Unknown keys or values below -1 change nothing and give INVALID_ARGUMENT."""
        if not request.project_id:
            raise InvalidArgument("project_id is required")
        _check_limits(request.limits)
        async with self._sessions() as session:
            async with session.begin():
                if request.limits:
                    rows = [
                        {
                            "project_id": request.project_id,
                            "resource": k,
                            "hard_limit": v,
                            "updated_at": datetime.now(UTC),
                        }
                        for k, v in request.limits.items()
                    ]
                    ins = upsert_insert(session, Quota)
                    await session.execute(
                        ins.values(rows).on_conflict_do_update(
                            index_elements=["project_id", "resource"],
                            set_={
                                "hard_limit": ins.excluded.hard_limit,
                                "updated_at": ins.excluded.updated_at,
                            },
                        )
                    )
            limits = await all_limits(session, request.project_id, self._cfg)
        return quotas_pb2.UpdateQuotasResponse(limits=limits_pb(limits))

    @grpc_errors
    async def GetDefaultQuotas(
        self, request: quotas_pb2.GetDefaultQuotasRequest, context: grpc.aio.ServicerContext
    ) -> quotas_pb2.GetDefaultQuotasResponse:
        async with self._sessions() as session:
            limits = await class_limits(session, DEFAULT_CLASS, self._cfg)
        return quotas_pb2.GetDefaultQuotasResponse(limits=limits_pb(limits))

    @grpc_errors
    async def GetQuotaClass(
        self, request: quotas_pb2.GetQuotaClassRequest, context: grpc.aio.ServicerContext
    ) -> quotas_pb2.GetQuotaClassResponse:
        if not request.class_name:
            raise InvalidArgument("class_name is required")
        async with self._sessions() as session:
            limits = await class_limits(session, request.class_name, self._cfg)
        return quotas_pb2.GetQuotaClassResponse(limits=limits_pb(limits))

    @grpc_errors
    async def UpdateQuotaClass(
        self, request: quotas_pb2.UpdateQuotaClassRequest, context: grpc.aio.ServicerContext
    ) -> quotas_pb2.UpdateQuotaClassResponse:
        """Postcondition: every given limit of the class is stored (a retry stores the same
        values again); the class "default" is then the default of every project without a
        limit of its own. Unknown keys or values below -1 change nothing: INVALID_ARGUMENT."""
        if not request.class_name:
            raise InvalidArgument("class_name is required")
        _check_limits(request.limits)
        async with self._sessions() as session:
            async with session.begin():
                if request.limits:
                    now = datetime.now(UTC)
                    rows = [
                        {
                            "class_name": request.class_name,
                            "resource": k,
                            "hard_limit": v,
                            "updated_at": now,
                        }
                        for k, v in request.limits.items()
                    ]
                    ins = upsert_insert(session, QuotaClass)
                    await session.execute(
                        ins.values(rows).on_conflict_do_update(
                            index_elements=["class_name", "resource"],
                            set_={
                                "hard_limit": ins.excluded.hard_limit,
                                "updated_at": ins.excluded.updated_at,
                            },
                        )
                    )
            limits = await class_limits(session, request.class_name, self._cfg)
        return quotas_pb2.UpdateQuotaClassResponse(limits=limits_pb(limits))


def _check_limits(limits: Mapping[str, int]) -> None:
    for key, value in limits.items():
        if key not in RESOURCES:
            raise InvalidArgument(f"Unknown quota resource: {key}")
        if value < -1:
            raise InvalidArgument(f"Quota limit {value} for {key} must be -1 or greater")
