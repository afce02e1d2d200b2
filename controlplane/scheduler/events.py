"""What the scheduler hears on NATS: compute heartbeats (liveness) and inventory reports.

Heartbeats are plain NATS: a lost one only delays liveness, and the next arrives soon.
Inventory reports live on JetStream with the last value kept per host; each scheduler
replica reads them through an ordered consumer of its own that starts at the last value
of every subject, so a fresh replica learns the whole fleet and then follows changes.
"""

from __future__ import annotations

import logging

from google.protobuf.message import DecodeError
from loom.compute.v1 import agent_bus_pb2
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy

from controlplane.config import SchedulerConfig
from controlplane.runtime import bus
from controlplane.scheduler import convert
from controlplane.scheduler.hostcache import HostCache
from controlplane.scheduler.placement import PlacementService

log = logging.getLogger(__name__)

# Binaries whose heartbeats say "this compute host is alive" (empty: older agents).
COMPUTE_BINARIES = frozenset({"", "loom-compute"})


def _host_of(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]


async def subscribe_heartbeats(nc: NATS, cache: HostCache) -> Subscription:
    """Marks a compute host alive at each heartbeat it sends.

    The time recorded is this scheduler's receive time, not the sender's clock, so a
    host with a skewed clock is neither kept up nor put down by the skew.
    """

    async def on_heartbeat(msg: Msg) -> None:
        beat = agent_bus_pb2.Heartbeat()
        try:
            beat.ParseFromString(msg.data)
        except DecodeError:
            log.warning("undecodable heartbeat", extra={"subject": msg.subject})
            return
        if beat.binary not in COMPUTE_BINARIES:
            return
        host = beat.host or _host_of(msg.subject)
        if bus.valid_host_name(host):
            cache.record_heartbeat(host)

    return await nc.subscribe(bus.HEARTBEAT_WILDCARD, cb=on_heartbeat)


async def subscribe_inventory(
    nc: NATS, placement: PlacementService, cfg: SchedulerConfig
) -> Subscription:
    """Upserts a provider for each inventory report, starting with the last one per host.

    A report that is malformed, or that would put capacity below current usage, is
    logged and skipped; the next report from that host is applied as usual.
    """

    async def on_report(msg: Msg) -> None:
        report = agent_bus_pb2.HostInventoryReport()
        try:
            report.ParseFromString(msg.data)
            update = convert.inventory_from_report(report, cfg)
        except (DecodeError, convert.InvalidInput) as exc:
            log.warning("inventory report ignored: %s", exc, extra={"subject": msg.subject})
            return
        try:
            await placement.report_inventory(update)
        except Exception:
            # The stream keeps the last report per host; a later report or a restart
            # re-reads it, so dropping this one loses nothing for good.
            log.exception("inventory report not stored", extra={"host": update.host})

    js = nc.jetstream()
    sub: Subscription = await js.subscribe(
        bus.INVENTORY_WILDCARD,
        stream=bus.INVENTORY_STREAM,
        cb=on_report,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
    )
    return sub
