"""Protobuf to domain and back, for the gRPC and NATS boundaries: the one place that
knows both shapes. Bad input raises InvalidInput with a message fit for the caller."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

from google.protobuf.timestamp_pb2 import Timestamp
from loom.common.v1 import common_pb2
from loom.compute.v1 import agent_bus_pb2
from loom.scheduler.v1 import scheduler_pb2

from controlplane.config import SchedulerConfig
from controlplane.runtime.bus import valid_host_name
from controlplane.scheduler.hoststate import (
    HostState,
    Inventory,
    InventoryUpdate,
    ResourceClass,
    Resources,
)
from controlplane.scheduler.pipeline import Decision
from controlplane.scheduler.request import GroupPolicy, PlacementRequest

MAX_ALTERNATES = 20
MAX_CONSUMER_ID = 36
# Instances one same_host or different_host hint may name.
MAX_HINT_INSTANCES = 1000


class InvalidInput(ValueError):
    """A request field is missing or out of range; the message names the field."""


def resources_from_pb(res: common_pb2.Resources) -> Resources:
    out = Resources(vcpus=res.vcpus, memory_mb=res.memory_mb, disk_gb=res.disk_gb)
    bad = out.negative_classes()
    if bad:
        raise InvalidInput(f"resources: negative amount for {', '.join(rc.value for rc in bad)}")
    return out


def resources_to_pb(res: Resources) -> common_pb2.Resources:
    return common_pb2.Resources(vcpus=res.vcpus, memory_mb=res.memory_mb, disk_gb=res.disk_gb)


def require_consumer(consumer_id: str) -> str:
    if not consumer_id:
        raise InvalidInput("consumer_id is required")
    if len(consumer_id) > MAX_CONSUMER_ID:
        raise InvalidInput(f"consumer_id is longer than {MAX_CONSUMER_ID} characters")
    return consumer_id


def require_host(name: str, field: str = "host") -> str:
    if not name:
        raise InvalidInput(f"{field} is required")
    if not valid_host_name(name):
        raise InvalidInput(f"{field} {name!r} is not a valid host name")
    return name


def group_policy(pb: scheduler_pb2.ServerGroupPolicy) -> GroupPolicy | None:
    """The request's server group, or None; an unknown policy is invalid input, never
    ignored."""
    if not pb.id:
        return None
    if len(pb.id) > MAX_CONSUMER_ID:
        raise InvalidInput(f"server_group.id is longer than {MAX_CONSUMER_ID} characters")
    if pb.max_server_per_host < 0:
        raise InvalidInput("server_group.max_server_per_host must not be negative")
    if pb.max_server_per_host and pb.policy != "anti-affinity":
        raise InvalidInput("only the anti-affinity policy takes max_server_per_host")
    try:
        return GroupPolicy(
            id=pb.id,
            policy=pb.policy,
            name=pb.name,
            max_server_per_host=pb.max_server_per_host or 1,
        )
    except ValueError as exc:
        raise InvalidInput(f"server_group: {exc}") from exc


def hint_instances(ids: Iterable[str], field: str) -> frozenset[str]:
    """The instances (consumer ids) a same_host or different_host hint names."""
    out = frozenset(ids)
    if len(out) > MAX_HINT_INSTANCES:
        raise InvalidInput(f"{field} names more than {MAX_HINT_INSTANCES} instances")
    for consumer in out:
        if not consumer or len(consumer) > MAX_CONSUMER_ID:
            raise InvalidInput(f"{field}: each instance id has 1 to {MAX_CONSUMER_ID} characters")
    return out


def placement_request(
    req: scheduler_pb2.SelectDestinationsRequest, cfg: SchedulerConfig
) -> PlacementRequest:
    if req.num_alternates < 0 or req.num_alternates > MAX_ALTERNATES:
        raise InvalidInput(f"num_alternates must be between 0 and {MAX_ALTERNATES}")
    if req.force_host:
        require_host(req.force_host, "force_host")
    return PlacementRequest(
        consumer_id=require_consumer(req.consumer_id),
        resources=resources_from_pb(req.resources),
        project_id=req.project_id,
        availability_zone=req.availability_zone,
        ignore_hosts=frozenset(req.ignore_hosts),
        force_host=req.force_host,
        # proto3 cannot tell 0 from unset: 0 means the operator's default.
        num_alternates=req.num_alternates or cfg.num_alternates,
        request_id=req.request_id,
        group=group_policy(req.server_group),
        same_host=hint_instances(req.same_host, "same_host"),
        different_host=hint_instances(req.different_host, "different_host"),
        flavor_extra_specs=dict(req.flavor_extra_specs),
        image_properties=dict(req.image_properties),
    )


def claim_request(req: scheduler_pb2.ClaimResourcesRequest) -> PlacementRequest:
    require_host(req.host)
    return PlacementRequest(
        consumer_id=require_consumer(req.consumer_id),
        resources=resources_from_pb(req.resources),
        project_id=req.project_id,
        request_id=req.request_id,
        group=group_policy(req.server_group),
    )


class _InventoryLike(Protocol):
    """compute.v1 Inventory and scheduler.v1 ResourceUsage both carry these three."""

    @property
    def total(self) -> int: ...
    @property
    def reserved(self) -> int: ...
    @property
    def allocation_ratio(self) -> float: ...


def _inventory(rc: ResourceClass, given: _InventoryLike, default: float) -> Inventory:
    name = rc.value
    total, reserved, ratio = given.total, given.reserved, given.allocation_ratio
    if total < 0 or reserved < 0:
        raise InvalidInput(f"{name}: total and reserved must not be negative")
    if not math.isfinite(ratio) or ratio < 0:
        raise InvalidInput(f"{name}: allocation_ratio must be a non-negative number")
    # A ratio of 0 means "not set": the operator's default for the class applies.
    return Inventory(total=total, reserved=reserved, ratio=ratio or default)


def _classes(
    vcpu: _InventoryLike, memory_mb: _InventoryLike, disk_gb: _InventoryLike, cfg: SchedulerConfig
) -> tuple[Inventory, Inventory, Inventory]:
    return (
        _inventory(ResourceClass.VCPU, vcpu, cfg.cpu_allocation_ratio),
        _inventory(ResourceClass.MEMORY_MB, memory_mb, cfg.ram_allocation_ratio),
        _inventory(ResourceClass.DISK_GB, disk_gb, cfg.disk_allocation_ratio),
    )


def inventory_from_report(
    report: agent_bus_pb2.HostInventoryReport, cfg: SchedulerConfig
) -> InventoryUpdate:
    """An agent's report (NATS) as an inventory update."""
    vcpu, memory_mb, disk_gb = _classes(report.vcpu, report.memory_mb, report.disk_gb, cfg)
    return InventoryUpdate(
        host=require_host(report.host),
        vcpu=vcpu,
        memory_mb=memory_mb,
        disk_gb=disk_gb,
        hypervisor_type=report.hypervisor_type,
        hypervisor_version=report.hypervisor_version,
        compute_endpoint=report.compute_endpoint,
        host_ip=report.host_ip,
        cpu_info=report.cpu_info,
        availability_zone=report.availability_zone or None,
    )


def inventory_from_request(
    req: scheduler_pb2.ReportInventoryRequest, cfg: SchedulerConfig
) -> InventoryUpdate:
    """An inventory reported over gRPC as an inventory update (used and free are ignored)."""
    vcpu, memory_mb, disk_gb = _classes(req.vcpu, req.memory_mb, req.disk_gb, cfg)
    return InventoryUpdate(
        host=require_host(req.host),
        vcpu=vcpu,
        memory_mb=memory_mb,
        disk_gb=disk_gb,
        hypervisor_type=req.hypervisor_type,
        hypervisor_version=req.hypervisor_version,
        compute_endpoint=req.compute_endpoint,
        host_ip=req.host_ip,
    )


def _usage_pb(inv: Inventory) -> scheduler_pb2.ResourceUsage:
    return scheduler_pb2.ResourceUsage(
        total=inv.total,
        reserved=inv.reserved,
        allocation_ratio=inv.ratio,
        used=inv.used,
        free=inv.free,
    )


def timestamp(at: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(at)
    return ts


def host_to_pb(host: HostState, up: bool, default_zone: str = "") -> scheduler_pb2.Host:
    pb = scheduler_pb2.Host(
        name=host.name,
        uuid=host.uuid,
        id=host.id,
        availability_zone=host.zone_or(default_zone) if default_zone else host.zone,
        vcpu=_usage_pb(host.vcpu),
        memory_mb=_usage_pb(host.memory_mb),
        disk_gb=_usage_pb(host.disk_gb),
        allocation_count=host.allocation_count,
        enabled=host.enabled,
        disabled_reason=host.disabled_reason or "",
        up=up,
        compute_endpoint=host.compute_endpoint,
        hypervisor_type=host.hypervisor_type,
        hypervisor_version=host.hypervisor_version,
        host_ip=host.host_ip,
        cpu_info=host.cpu_info,
        forced_down=host.forced_down,
    )
    if host.last_heartbeat_at is not None:
        pb.last_heartbeat_at.CopyFrom(timestamp(host.last_heartbeat_at))
    return pb


def destination(
    host: HostState, claimed: bool, default_zone: str = ""
) -> scheduler_pb2.Destination:
    return scheduler_pb2.Destination(
        host=host.name,
        node=host.name,
        compute_endpoint=host.compute_endpoint,
        claimed=claimed,
        availability_zone=host.zone_or(default_zone) if default_zone else host.zone,
    )


def no_valid_host(decision: Decision, message: str) -> scheduler_pb2.NoValidHost:
    return scheduler_pb2.NoValidHost(
        hosts_considered=decision.hosts_considered,
        message=message,
        rejections=[
            scheduler_pb2.FilterRejection(
                filter=r.filter, hosts_removed=r.hosts_removed, reasons=dict(r.reasons)
            )
            for r in decision.rejections
        ],
    )
