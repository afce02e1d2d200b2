"""One host's agent: compute commands in, libvirt effects, events out.

Every command runs under the host lock, so commands, power-state sync and reconcile never
interleave on one host. The order for a command is: effect in libvirt, event published
to JetStream (and acknowledged by it), then the command acked. A crash anywhere in
between redelivers the command, and every handler is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import grpc
from google.protobuf.message import DecodeError
from loom.compute.v1 import compute_pb2
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from controlplane.config import AgentConfig
from controlplane.runtime import bus
from nodeagent import messages as m
from nodeagent.driver.base import (
    BuildFailed,
    Driver,
    ImageCacheDriver,
    InstanceNotFound,
    PowerState,
)
from nodeagent.fleet import FleetView
from nodeagent.reconcile import ReconcilePlan, plan_reconcile, wanted_power_on

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_COMMANDS: dict[str, type[Any]] = {
    "build": compute_pb2.BuildInstanceCommand,
    "delete": compute_pb2.DeleteInstanceCommand,
    "start": compute_pb2.StartInstanceCommand,
    "stop": compute_pb2.StopInstanceCommand,
    "reboot": compute_pb2.RebootInstanceCommand,
}


def _valid_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class HostAgent:
    """The agent of one host. `start()` then `stop()`; the driver is owned by the agent."""

    def __init__(
        self,
        *,
        host: str,
        driver: Driver,
        nc: NATS,
        cfg: AgentConfig,
        compute_endpoint: str,
        host_ip: str = "",
        fleet: FleetView | None = None,
        placements: dict[str, str] | None = None,
        ack_wait: float = 30.0,
        fetch_timeout: float = 2.0,
    ) -> None:
        if not bus.valid_host_name(host):
            raise ValueError(f"host name {host!r} cannot be a NATS subject token")
        self.host = host
        self.driver = driver
        self.cfg = cfg
        self.compute_endpoint = compute_endpoint
        self.host_ip = host_ip
        self.reconciled = asyncio.Event()
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._fleet = fleet
        # instance → host for the whole process (the gRPC API dispatches with it).
        self._placements: dict[str, str] = {} if placements is None else placements
        self._ack_wait = ack_wait
        # The expiry of each pull request. Short on purpose: a pull request dies with the
        # server's memory when NATS restarts, and the client only notices when its own wait
        # ends, so this bounds how long commands sit unseen after a NATS restart; it also
        # bounds how long stop() waits for the last pull request to close.
        self._fetch_timeout = fetch_timeout
        self._lock = asyncio.Lock()
        self._known: dict[str, PowerState] = {}
        # Deleted by command since start: reconcile must not bring these back.
        self._deleted: set[str] = set()
        self._last_inventory = b""
        self._psub: JetStreamContext.PullSubscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = False

    @property
    def durable_name(self) -> str:
        return f"agent-{self.host}"

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connects the driver, reports inventory and a heartbeat, then consumes commands.

        Reconcile runs in the background: an unreachable conductor never holds up commands.
        """
        await self.call_driver(self.driver.open)
        self._replace_known(await self.call_driver(self.driver.list_instances))
        await self.publish_inventory()
        await self.send_heartbeat()
        self._psub = await self._js.pull_subscribe(
            bus.compute_host_filter(self.host),
            durable=self.durable_name,
            stream=bus.COMPUTE_STREAM,
            config=ConsumerConfig(
                durable_name=self.durable_name,
                filter_subject=bus.compute_host_filter(self.host),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self._ack_wait,
                max_ack_pending=64,
            ),
            # A host gets a handful of commands at a time; small limits keep 1,000
            # subscriptions in one process cheap.
            pending_msgs_limit=256,
            pending_bytes_limit=4 * 1024 * 1024,
        )
        self._consumer = asyncio.create_task(self._consume(), name=f"consume-{self.host}")
        self._tasks.append(asyncio.create_task(self._housekeeping(), name=f"tick-{self.host}"))
        if self._fleet is not None:
            self._tasks.append(asyncio.create_task(self._reconcile_task(), name=f"rec-{self.host}"))
        else:
            self.reconciled.set()

    async def stop_consuming(self) -> None:
        """Finishes the command in hand and lets the last pull request close (at most one
        fetch expiry); a command that arrives meanwhile is handed back at once (nak), so the
        next agent of this host gets it without waiting out ack_wait. Idempotent."""
        self._stopping = True
        consumer = self._consumer
        if consumer is not None:
            # Never cancelled while a pull request is open: a command the server delivered
            # to it would be dropped with the subscription and sit ack-pending for ack_wait.
            with contextlib.suppress(asyncio.CancelledError):
                await consumer

    async def stop(self) -> None:
        """Stops consuming (the durable consumer stays, no pull request is left open),
        stops the housekeeping and closes the driver. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await self.stop_consuming()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._psub is not None:
            with contextlib.suppress(Exception):
                await self._psub.unsubscribe()
        for iid in self._known:
            if self._placements.get(iid) == self.host:
                del self._placements[iid]
        await self.call_driver(self.driver.close)

    # -- driver calls -------------------------------------------------------------------

    async def call_driver(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self.driver.runs_inline:
            return fn(*args, **kwargs)
        # Real hypervisors block (disk copies, guest shutdowns): keep the loop free.
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _set_known(self, iid: str, state: PowerState) -> None:
        self._known[iid] = state
        self._placements[iid] = self.host

    def _forget(self, iid: str) -> None:
        self._known.pop(iid, None)
        if self._placements.get(iid) == self.host:
            del self._placements[iid]

    def _replace_known(self, actual: dict[str, PowerState]) -> None:
        for iid in self._known.keys() - actual.keys():
            self._forget(iid)
        for iid, state in actual.items():
            self._set_known(iid, state)

    @property
    def instance_count(self) -> int:
        return len(self._known)

    # -- commands -----------------------------------------------------------------------

    async def _consume(self) -> None:
        assert self._psub is not None
        while not self._stopping:
            try:
                msgs = await self._psub.fetch(1, timeout=self._fetch_timeout)
            except TimeoutError:
                continue
            except Exception as exc:
                if self._stopping:
                    return
                log.warning("fetch failed: %s", exc, extra={"host": self.host})
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                if self._stopping:
                    with contextlib.suppress(Exception):
                        await msg.nak()
                    continue
                await self._handle_message(msg)

    async def _handle_message(self, msg: Msg) -> None:
        verb = msg.subject.rsplit(".", 1)[-1]
        command_type = _COMMANDS.get(verb)
        if command_type is None:
            log.error("unknown command verb %s; dropped", verb, extra={"host": self.host})
            await msg.term()
            return
        try:
            command = command_type.FromString(msg.data)
        except DecodeError:
            log.error("undecodable %s command; dropped", verb, extra={"host": self.host})
            await msg.term()
            return
        keepalive = None
        if not self.driver.runs_inline:
            keepalive = asyncio.create_task(self._report_progress(msg))
        try:
            async with self._lock:
                event = await self._execute(verb, command)
                await self._publish_event(event)
        except Exception:
            # Most likely the event could not be published: leave the command to be
            # redelivered; the handler is idempotent.
            log.exception("%s not finished; will be redelivered", verb, extra={"host": self.host})
            with contextlib.suppress(Exception):
                await msg.nak(delay=2.0)
            return
        finally:
            if keepalive is not None:
                keepalive.cancel()
        await msg.ack()

    async def _report_progress(self, msg: Msg) -> None:
        """Long real operations tell JetStream they are alive, so it does not redeliver."""
        while True:
            await asyncio.sleep(self._ack_wait / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _execute(self, verb: str, command: Any) -> compute_pb2.InstanceEvent:
        if verb == "build":
            return await self._build(command)
        if verb == "delete":
            return await self._delete(command)
        iid = command.instance_id
        action: Callable[[], PowerState]
        if verb == "start":

            def action() -> PowerState:
                return self.driver.start(iid)
        elif verb == "stop":
            timeout = command.timeout_seconds or self.cfg.shutdown_timeout

            def action() -> PowerState:
                return self.driver.stop(iid, timeout)
        else:
            hard = command.reboot_type == compute_pb2.REBOOT_TYPE_HARD

            def action() -> PowerState:
                return self.driver.reboot(iid, hard=hard)

        return await self._power_action(verb, command.request_id, iid, action)

    async def _build(self, cmd: compute_pb2.BuildInstanceCommand) -> compute_pb2.InstanceEvent:
        spec = cmd.spec
        iid = spec.instance_id

        def answer(
            kind: m.Kind, state: PowerState, fault_msg: str = ""
        ) -> compute_pb2.InstanceEvent:
            return m.instance_event(
                host=self.host,
                instance_id=iid,
                kind=kind,
                power_state=state,
                request_id=cmd.request_id,
                action="build",
                attempt=cmd.attempt,
                fault=m.fault(500, fault_msg) if fault_msg else None,
            )

        if not _valid_uuid(iid) or not spec.instance_name:
            return answer(
                m.BUILD_FAILED,
                PowerState.NOSTATE,
                "The build command lacks a valid instance UUID or name.",
            )
        self._deleted.discard(iid)
        try:
            state = await self.call_driver(self.driver.create, spec)
        except BuildFailed as exc:
            self._forget(iid)
            return answer(m.BUILD_FAILED, PowerState.NOSTATE, str(exc))
        except Exception:
            log.exception("build failed unexpectedly", extra={"host": self.host, "instance": iid})
            with contextlib.suppress(Exception):
                await self.call_driver(self.driver.destroy, iid)
            self._forget(iid)
            return answer(
                m.BUILD_FAILED, PowerState.NOSTATE, "An internal error stopped the build."
            )
        self._set_known(iid, state)
        return answer(m.BUILD_SUCCEEDED, state)

    async def _delete(self, cmd: compute_pb2.DeleteInstanceCommand) -> compute_pb2.InstanceEvent:
        iid = cmd.instance_id
        if _valid_uuid(iid):
            await self.call_driver(self.driver.destroy, iid)
            self._deleted.add(iid)
        # An invalid UUID names nothing on this host: it is already absent.
        self._forget(iid)
        return m.instance_event(
            host=self.host,
            instance_id=iid,
            kind=m.DELETED,
            power_state=PowerState.NOSTATE,
            request_id=cmd.request_id,
            action="delete",
        )

    async def _power_action(
        self, verb: str, request_id: str, iid: str, action: Callable[[], PowerState]
    ) -> compute_pb2.InstanceEvent:
        kind = m.ACTION_SUCCEEDED
        fault = None
        try:
            state = await self.call_driver(action)
            self._set_known(iid, state)
        except InstanceNotFound as exc:
            self._forget(iid)
            kind, state, fault = m.ACTION_FAILED, PowerState.NOSTATE, m.fault(404, str(exc))
        except Exception:
            log.exception("%s failed", verb, extra={"host": self.host, "instance": iid})
            kind, fault = m.ACTION_FAILED, m.fault(500, f"The hypervisor could not {verb} it.")
            try:
                state = await self.call_driver(self.driver.describe, iid)
                self._set_known(iid, state)
            except Exception:
                state = PowerState.NOSTATE
        return m.instance_event(
            host=self.host,
            instance_id=iid,
            kind=kind,
            power_state=state,
            request_id=request_id,
            action=verb,
            fault=fault,
        )

    async def _publish_event(self, event: compute_pb2.InstanceEvent) -> None:
        await self._js.publish(
            bus.instance_event_subject(self.host),
            event.SerializeToString(),
            stream=bus.EVENTS_STREAM,
            headers={"Nats-Msg-Id": m.event_msg_id(event.request_id, event.kind)},
        )

    # -- reports ------------------------------------------------------------------------

    async def publish_inventory(self, *, force: bool = False) -> bool:
        """Publishes the inventory report when it changed (or when forced). True if sent."""
        facts = await self.call_driver(self.driver.host_facts)
        report = m.inventory_report(
            host=self.host,
            facts=facts,
            cfg=self.cfg,
            compute_endpoint=self.compute_endpoint,
            host_ip=self.host_ip,
        )
        data = report.SerializeToString(deterministic=True)
        if data == self._last_inventory and not force:
            return False
        await self._js.publish(bus.inventory_subject(self.host), data, stream=bus.INVENTORY_STREAM)
        self._last_inventory = data
        return True

    async def send_heartbeat(self) -> None:
        beat = m.heartbeat(
            host=self.host,
            instance_count=self.instance_count,
            compute_endpoint=self.compute_endpoint,
        )
        await self._nc.publish(bus.heartbeat_subject(self.host), beat.SerializeToString())

    async def sync_power_states(self) -> int:
        """Reports power-state changes nobody commanded; returns how many it reported."""
        reported = 0
        async with self._lock:
            actual = await self.call_driver(self.driver.list_instances)
            for iid, state in actual.items():
                before = self._known.get(iid)
                if before is not None and before != state:
                    await self._spontaneous(iid, m.POWER_STATE_CHANGED, state)
                    reported += 1
            for iid in self._known.keys() - actual.keys():
                await self._spontaneous(iid, m.MISSING, PowerState.NOSTATE)
                reported += 1
            self._replace_known(actual)
        return reported

    async def _spontaneous(self, iid: str, kind: m.Kind, state: PowerState) -> None:
        await self._publish_event(
            m.instance_event(host=self.host, instance_id=iid, kind=kind, power_state=state)
        )

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        hb_every, sync_every = self.cfg.heartbeat_interval, self.cfg.power_sync_interval
        prune_every = self.cfg.image_cache_prune_interval_s
        prunes = isinstance(self.driver, ImageCacheDriver)
        # Spread the first ticks so a thousand simulated hosts do not beat in lockstep.
        now = loop.time()
        next_hb = now + hb_every * random.uniform(0.5, 1.0)
        next_sync = now + sync_every * random.uniform(0.5, 1.0)
        next_prune = now + prune_every * random.uniform(0.5, 1.0) if prunes else float("inf")
        while True:
            await asyncio.sleep(max(0.0, min(next_hb, next_sync, next_prune) - loop.time()))
            now = loop.time()
            if now >= next_prune:
                next_prune = now + prune_every
                await self._guarded(self.prune_image_cache, "image cache prune")
            if now >= next_hb:
                next_hb = now + hb_every
                await self._guarded(self.send_heartbeat, "heartbeat")
            if now >= next_sync:
                next_sync = now + sync_every
                await self._guarded(self.sync_power_states, "power-state sync")
                await self._guarded(self.publish_inventory, "inventory")

    async def prune_image_cache(self) -> list[str]:
        """Removes cached images unused for image_cache_max_age_s; returns their ids.

        Runs under the host lock, so no build on this host is between recording the
        images it uses and creating its disks.
        """
        if not isinstance(self.driver, ImageCacheDriver):
            return []
        async with self._lock:
            return await self.call_driver(
                self.driver.prune_image_cache, float(self.cfg.image_cache_max_age_s)
            )

    async def _guarded(self, fn: Callable[[], Awaitable[Any]], what: str) -> None:
        try:
            await fn()
        except Exception as exc:
            log.warning("%s failed: %s", what, exc, extra={"host": self.host})

    # -- reconcile ----------------------------------------------------------------------

    async def _reconcile_task(self) -> None:
        try:
            await self.reconcile()
        except Exception:
            log.exception("reconcile failed", extra={"host": self.host})

    async def reconcile(self) -> ReconcilePlan | None:
        """Brings libvirt in line with the control plane's record. None when stopped first."""
        assert self._fleet is not None
        async with self._lock:
            before = await self.call_driver(self.driver.list_instances)
        delay = 0.2
        while True:
            try:
                expected = await self._fleet.expected_instances(self.host)
                break
            except grpc.aio.AioRpcError as exc:
                if self._stopping:
                    return None
                # One warning per host, then quiet: a fleet of simulated hosts would flood.
                log.log(
                    logging.WARNING if delay == 0.2 else logging.DEBUG,
                    "conductor unreachable for reconcile; retrying in %.1fs (%s)",
                    delay,
                    exc.code().name,
                    extra={"host": self.host},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        async with self._lock:
            now = await self.call_driver(self.driver.list_instances)
            plan = plan_reconcile(
                expected,
                before,
                now,
                persistent=self.driver.persistent,
                deleted_since_start=self._deleted,
            )
            await self._apply(plan)
            self._replace_known(await self.call_driver(self.driver.list_instances))
        self.reconciled.set()
        log.info(
            "reconciled",
            extra={
                "host": self.host,
                "recreated": len(plan.recreate),
                "missing": len(plan.missing),
                "drifted": len(plan.drifted),
                "orphans": len(plan.orphans),
            },
        )
        return plan

    async def _apply(self, plan: ReconcilePlan) -> None:
        for iid in plan.orphans:
            await self.call_driver(self.driver.destroy, iid)
            log.warning("destroyed orphan domain", extra={"host": self.host, "instance": iid})
        for exp in plan.recreate:
            # Only for hypervisors whose domains die with the agent (libvirt's test driver):
            # there a missing domain is not a lost guest but state that vanished with the
            # previous process, so the record is replayed to keep simulated fleets whole.
            try:
                state = await self.call_driver(
                    self.driver.create, exp.spec, power_on=wanted_power_on(exp)
                )
            except BuildFailed as exc:
                await self._publish_event(
                    m.instance_event(
                        host=self.host,
                        instance_id=exp.instance_id,
                        kind=m.MISSING,
                        power_state=PowerState.NOSTATE,
                        fault=m.fault(500, str(exc)),
                    )
                )
                continue
            log.info("re-created instance", extra={"host": self.host, "instance": exp.instance_id})
            if exp.power_state != PowerState.NOSTATE and state != exp.power_state:
                await self._spontaneous(exp.instance_id, m.POWER_STATE_CHANGED, state)
        for iid in plan.missing:
            await self._spontaneous(iid, m.MISSING, PowerState.NOSTATE)
        for iid, state in plan.drifted:
            await self._spontaneous(iid, m.POWER_STATE_CHANGED, state)
