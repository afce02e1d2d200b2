"""One host's agent: compute commands in, libvirt effects, events out.

Every command runs under the host lock, so commands, power-state sync and reconcile never
interleave on one host. The order for a command is: effect in libvirt, event published
to JetStream (and acknowledged by it), then the command acked. A crash anywhere in
between redelivers the command, and every handler is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import grpc
from google.protobuf.message import DecodeError
from loom.common.v1 import common_pb2
from loom.compute.v1 import agent_bus_pb2
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from controlplane.config import AgentConfig
from controlplane.runtime import bus, tracing
from controlplane.runtime.busfaults import BusFaults
from nodeagent import messages as m
from nodeagent import moves
from nodeagent.driver.base import (
    ActionFailed,
    BuildFailed,
    Driver,
    ImageCacheDriver,
    InstanceNotFound,
    NetworkWiringDriver,
    PauseSuspendDriver,
    PortSecurityDriver,
    PowerState,
    RebuildDriver,
    RouterDriver,
)
from nodeagent.fleet import ExpectedInstance, FleetView
from nodeagent.metrics import HostCounters
from nodeagent.reconcile import ReconcilePlan, plan_reconcile, wanted_power_on
from nodeagent.snapshots import RotationFailed, SnapshotFailed, SnapshotTaker

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_COMMANDS: dict[str, type[Any]] = {
    "build": agent_bus_pb2.BuildInstanceCommand,
    "delete": agent_bus_pb2.DeleteInstanceCommand,
    "start": agent_bus_pb2.StartInstanceCommand,
    "stop": agent_bus_pb2.StopInstanceCommand,
    "reboot": agent_bus_pb2.RebootInstanceCommand,
    **{verb: agent_bus_pb2.MoveInstanceCommand for verb in moves.VERBS},
    "pause": agent_bus_pb2.PauseInstanceCommand,
    "unpause": agent_bus_pb2.UnpauseInstanceCommand,
    "suspend": agent_bus_pb2.SuspendInstanceCommand,
    "resume": agent_bus_pb2.ResumeInstanceCommand,
    "shelve": agent_bus_pb2.ShelveInstanceCommand,
    "shelve_offload": agent_bus_pb2.ShelveOffloadInstanceCommand,
    "unshelve": agent_bus_pb2.UnshelveInstanceCommand,
    "rebuild": agent_bus_pb2.RebuildInstanceCommand,
    "snapshot": agent_bus_pb2.SnapshotInstanceCommand,
    "inject_network_info": agent_bus_pb2.InjectNetworkInfoCommand,
    "port_security": agent_bus_pb2.RefreshPortSecurityCommand,
    "routers": agent_bus_pb2.RefreshRoutersCommand,
}


# Verbs that act on the instance's existing domain (a build, a delete or a move's
# destination step needs none).
_ACTS_ON_DOMAIN = frozenset(
    {
        "start",
        "stop",
        "reboot",
        "pause",
        "unpause",
        "suspend",
        "resume",
        "shelve",
        "unshelve",
        "snapshot",
        "inject_network_info",
        moves.STOP_SOURCE,
        moves.RESTORE_SOURCE,
    }
)

# Build requests remembered as deleted, per host: enough for every redelivery JetStream
# can still make (a build is redelivered until acked, at most a few times ack_wait late).
_DELETED_BUILDS_KEPT = 65536
# How many instances' last carried-out command sequence the agent keeps (oldest dropped).
_APPLIED_SEQS_KEPT = 65536


def _command_seq(msg: Msg) -> int | None:
    """The outbox sequence of a relayed command (controlplane/runtime/bus.py), if any."""
    raw = msg.headers.get(bus.COMMAND_SEQ_HEADER) if msg.headers else None
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def _valid_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# -- the pull subscription, below nats-py's public API -------------------------------------
# Deliveries to a pull subscription (commands and the status messages that end pull
# requests) queue in the client until a fetch takes them; fetch() takes queued ones before
# it asks the server for more, so a command delivered for a pull request whose fetch was
# ended still reaches the next fetch. nats-py (2.16) offers no public way to the three
# things below; they use the client's own structures, as the client does itself when it
# closes. mypy reports a rename in a newer client, and the agent's tests exercise each.


# The second pull request after a consumer's leader changed goes this long after the first.
_AFTER_LEADER_CHANGE_S = 1.0


def _end_fetch_waits(psub: JetStreamContext.PullSubscription) -> bool:
    """Ends a fetch waiting for its pull request's answer. False when none is waiting.

    What is cancelled is the client's inner wait, never the fetch itself: a fetch cancelled
    just after that wait took a command off the queue would drop the command (back only
    after ack_wait), while a cancelled wait either leaves the command queued or returns it
    through the fetch.
    """
    waits = psub._sub._pending_next_msgs_calls
    if not waits:
        return False
    for wait in list(waits.values()):
        wait.cancel()
    return True


async def _withdraw_interest(nc: NATS, psub: JetStreamContext.PullSubscription) -> None:
    """Ends the subscription on the server first and in the client only after a round trip,
    so every command the server sent to it is in the client's queue.

    Once the server has processed the UNSUB, it drops open pull requests whose reply
    subject has no interest instead of delivering to them, and a delivery it had already
    begun finds no subscriber and is queued again for immediate redelivery. Ending the
    subscription in the client first would discard what the server sent meanwhile, to come
    back only after ack_wait.
    """
    if nc.is_connected:
        try:
            async with asyncio.timeout(5):
                await nc._send_unsubscribe(psub._sub._id)
                # flush() writes its PING straight to the socket, ahead of commands still
                # buffered: wait until the UNSUB is written, so the PONG comes after it.
                await nc._flush_pending(force_flush=True)
                await nc.flush()
        except Exception as exc:
            # Commands delivered meanwhile come back after ack_wait.
            log.warning("command subscription not ended cleanly: %s", exc)
    # While reconnecting the server has no subscription to end: nothing can be delivered.
    with contextlib.suppress(Exception):
        await psub.unsubscribe()


def _take_queued_commands(psub: JetStreamContext.PullSubscription) -> list[Msg]:
    """Empties the subscription's queue; returns the commands in it (statuses dropped)."""
    sub = psub._sub
    queue = sub._pending_queue
    commands: list[Msg] = []
    while not queue.empty():
        msg = queue.get_nowait()
        sub._pending_size -= len(msg.data)
        if JetStreamContext.is_status_msg(msg) is None:
            commands.append(msg)
    return commands


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
        watch: bus.ConnectionWatch | None = None,
        faults: BusFaults | None = None,
        snapshots: SnapshotTaker | None = None,
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
        # Chaos faults on the commands fetched (none by default; redeliveries counted).
        self._faults = faults or BusFaults()
        # Where snapshots' bytes go (None: this host cannot upload images).
        self._snapshots = snapshots
        # The expiry of each pull request. Long is cheap (an idle host sends one pull request
        # per expiry) and nothing waits it out: a pull request lost with a restarted server
        # is replaced as soon as the connection is back (watch), and stop ends the open one.
        self._pull_expiry = cfg.command_pull_expiry
        self._watch = watch
        # What the consume loop waits on (a fetch, or the pause after a failed one), and for
        # a fetch, the connection its pull request went out on (an event set once it drops).
        self._waiting: asyncio.Task[Any] | None = None
        self._waiting_is_fetch = False
        self._waiting_link: asyncio.Event | None = None
        self._consuming_stopped: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._known: dict[str, PowerState] = {}
        # Deleted by command since start: reconcile must not bring these back.
        self._deleted: set[str] = set()
        # instance → the request of the build that made its domain here; and the requests
        # of builds whose instance a delete command has removed since. A build command
        # JetStream delivers again after that delete (its ack was lost) is not carried out
        # again: it would leave a domain nobody owns (chaos scenario R3).
        self._built: dict[str, str] = {}
        self._deleted_builds: dict[str, None] = {}
        # instance → the sequence of the newest command carried out for it (oldest entries
        # dropped past _APPLIED_SEQS_KEPT). A command with an older sequence is stale: a
        # redelivery whose first delivery was carried out and answered, since overtaken
        # (a stop coming back after the start that followed it would stop the guest).
        self._applied_seqs: dict[str, int] = {}
        self._last_inventory = b""
        self._psub: JetStreamContext.PullSubscription | None = None
        self._leader_sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = False
        self._counters = HostCounters(host)

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
        if self._watch is not None:
            self._watch.on_restored(self._pull_again_after_reconnect)
        # On a cluster, the consumer's leader holds the open pull request; when that node
        # dies, the request dies unanswered and the agent would wait out its expiry.
        self._leader_sub = await self._nc.subscribe(
            bus.consumer_leader_elected_subject(bus.COMPUTE_STREAM, self.durable_name),
            cb=self._pull_again_after_leader_change,
        )
        self._consumer = asyncio.create_task(self._consume(), name=f"consume-{self.host}")
        self._tasks.append(asyncio.create_task(self._heartbeats(), name=f"beat-{self.host}"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name=f"tick-{self.host}"))
        if self._fleet is not None:
            self._tasks.append(asyncio.create_task(self._reconcile_task(), name=f"rec-{self.host}"))
        else:
            self.reconciled.set()

    def repull(self) -> None:
        """Replaces the open pull request with a fresh one at once (or ends the pause after
        a failed fetch). A command the old request still brings is queued in the client
        and taken by the next fetch, so nothing is lost."""
        if not self._stopping:
            self._end_wait()

    def _end_wait(self) -> None:
        waiting = self._waiting
        if waiting is None or waiting.done():
            return
        if self._waiting_is_fetch and self._psub is not None and _end_fetch_waits(self._psub):
            return
        # The pause, or a fetch not yet waiting for an answer: it holds no command to drop.
        waiting.cancel()

    def _pull_again_after_reconnect(self) -> None:
        # A pull request sent on the connection that dropped may have died with the server;
        # the client would wait out its expiry. One sent while reconnecting went out on the
        # new connection and stands.
        link = self._waiting_link
        if link is None or link.is_set():
            self.repull()

    async def _pull_again_after_leader_change(self, _advisory: Msg) -> None:
        log.info("command consumer has a new leader; pulling again", extra={"host": self.host})
        self.repull()
        # The advisory may overtake the new leader's interest in pull requests on its way
        # through the cluster's routes: a pull request sent at once can find nobody and be
        # lost as well. One more, a moment later, reaches the leader.
        asyncio.get_running_loop().call_later(_AFTER_LEADER_CHANGE_S, self.repull)

    async def stop_consuming(self) -> None:
        """Stops taking commands, promptly: the command in hand is finished, the open pull
        request is ended, and commands that already reached this agent are handed back at
        once (nak), so the next agent of this host gets them without waiting out ack_wait.
        The durable consumer stays. Idempotent; concurrent calls share one stop."""
        if self._consuming_stopped is None:
            self._stopping = True
            self._end_wait()  # a command in hand is finished first
            self._consuming_stopped = asyncio.create_task(
                self._stop_consuming(), name=f"stop-consuming-{self.host}"
            )
        await asyncio.shield(self._consuming_stopped)

    async def _stop_consuming(self) -> None:
        if self._leader_sub is not None:
            with contextlib.suppress(Exception):
                await self._leader_sub.unsubscribe()
        consumer = self._consumer
        if consumer is not None:
            await asyncio.wait([consumer])
            if not consumer.cancelled() and consumer.exception() is not None:
                log.error(
                    "command consumer failed",
                    exc_info=consumer.exception(),
                    extra={"host": self.host},
                )
        psub = self._psub
        if psub is None:
            return
        # The pull request the fetch waited on is still open on the server: end the
        # subscription (which closes it), then give back what reached this agent.
        await _withdraw_interest(self._nc, psub)
        for msg in _take_queued_commands(psub):
            await self._hand_back(msg)

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

    # What a move step (nodeagent/moves.py) records about an instance on this host.
    def note_power(self, iid: str, state: PowerState) -> None:
        self._set_known(iid, state)

    def forget(self, iid: str) -> None:
        self._forget(iid)

    def note_deleted(self, iid: str) -> None:
        self._deleted.add(iid)
        self._forget(iid)

    def forget_deletion(self, iid: str) -> None:
        self._deleted.discard(iid)

    @property
    def instance_count(self) -> int:
        return len(self._known)

    # -- commands -----------------------------------------------------------------------

    async def _consume(self) -> None:
        psub = self._psub
        assert psub is not None
        while not self._stopping:
            link = self._watch.current_link() if self._watch is not None else None
            fetch = await self._wait_on(
                psub.fetch(1, timeout=self._pull_expiry), is_fetch=True, link=link
            )
            if fetch.cancelled():
                continue  # repull() or stop: a fresh pull request, or the end
            exc = fetch.exception()
            if isinstance(exc, TimeoutError):
                continue  # the pull request expired with nothing for this host
            if exc is not None:
                if self._stopping:
                    return
                log.warning("fetch failed: %s", exc, extra={"host": self.host})
                await self._wait_on(asyncio.sleep(1.0), is_fetch=False, link=None)
                continue
            for msg in self._faults.apply("agent", fetch.result()):
                if self._stopping:
                    await self._hand_back(msg)
                    continue
                await self._handle_message(msg)

    async def _wait_on(
        self, work: Coroutine[Any, Any, T], *, is_fetch: bool, link: asyncio.Event | None
    ) -> asyncio.Task[T]:
        """Runs work as a task of its own and returns it once finished. repull() and stop
        end that task, not the loop; cancelling the loop cancels the task too (only at
        process exit: a command then in flight comes back after ack_wait)."""
        task = asyncio.create_task(work)
        self._waiting, self._waiting_is_fetch, self._waiting_link = task, is_fetch, link
        try:
            await asyncio.wait([task])
        finally:
            self._waiting, self._waiting_is_fetch, self._waiting_link = None, False, None
            if not task.done():
                task.cancel()
        return task

    async def _hand_back(self, msg: Msg) -> None:
        """Gives a command back to JetStream at once, for the next agent of this host."""
        with contextlib.suppress(Exception):
            await msg.nak()

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
        if verb == "port_security":
            driver = self.driver
            apply = driver.refresh_port_security if isinstance(driver, PortSecurityDriver) else None
            await self._refresh(msg, "port security", apply, list(command.ports))
            return
        if verb == "routers":
            driver = self.driver
            serve = driver.refresh_routers if isinstance(driver, RouterDriver) else None
            await self._refresh(msg, "routers", serve, list(command.routers))
            return
        iid = command.spec.instance_id if verb in ("build", "rebuild") else command.instance_id
        seq = _command_seq(msg)
        if seq is not None and seq < self._applied_seqs.get(iid, -1):
            log.warning(
                "stale %s skipped: a newer command for the instance was carried out",
                verb,
                extra={"host": self.host, "instance": iid, "seq": seq},
            )
            self._counters.stale_command()
            await msg.ack()
            return
        if verb in _ACTS_ON_DOMAIN and self._domain_may_come_back(iid):
            # Its domain died with the previous agent process; the first reconcile re-creates
            # it (nodeagent/reconcile.py). Acting now would find nothing and fail the task.
            await msg.nak(delay=1.0)
            return
        keepalive = None
        if not self.driver.runs_inline:
            keepalive = asyncio.create_task(self._report_progress(msg))
        traceparent = msg.headers.get(tracing.TRACEPARENT) if msg.headers else None
        try:
            # Traced: a child of the conductor's span that queued the command.
            with tracing.child_span(
                f"agent {verb}",
                traceparent,
                {"loom.host": self.host, "loom.instance_id": iid} if tracing.enabled() else None,
            ):
                async with self._lock:
                    event = await self._execute(verb, command)
                    if seq is not None:
                        self._note_applied(iid, seq)
                    with tracing.span("agent publish event"):
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

    async def _refresh(
        self,
        msg: Msg,
        what: str,
        apply: Callable[[list[Any]], int] | None,
        items: list[Any],
    ) -> None:
        """Applies newer network bindings (ports' security, routers) to this host; no
        instance event: nothing about an instance's state changed. Acked once the host
        and its records are written; a driver without that part acks at once."""
        try:
            if apply is not None:
                async with self._lock:
                    changed = await self.call_driver(apply, items)
                log.info(
                    "%s refreshed",
                    what,
                    extra={"host": self.host, "items": len(items), "changed": changed},
                )
        except Exception:
            log.exception("%s not refreshed; will be redelivered", what)
            with contextlib.suppress(Exception):
                await msg.nak(delay=2.0)
            return
        await msg.ack()

    def _note_applied(self, iid: str, seq: int) -> None:
        seqs = self._applied_seqs
        seqs.pop(iid, None)  # re-inserted last: the dict keeps recency order
        seqs[iid] = seq
        while len(seqs) > _APPLIED_SEQS_KEPT:
            del seqs[next(iter(seqs))]

    def _domain_may_come_back(self, iid: str) -> bool:
        """True until the first reconcile of a hypervisor whose domains die with the agent
        (test:///), for an instance this host has no domain of."""
        return (
            not self.driver.persistent and not self.reconciled.is_set() and iid not in self._known
        )

    async def _report_progress(self, msg: Msg) -> None:
        """Long real operations tell JetStream they are alive, so it does not redeliver."""
        while True:
            await asyncio.sleep(self._ack_wait / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _execute(self, verb: str, command: Any) -> agent_bus_pb2.InstanceEvent:
        if verb == "build":
            return await self._build(command)
        if verb == "delete":
            return await self._delete(command)
        if verb in moves.VERBS:
            return await moves.execute(self, verb, command)
        if verb == "shelve_offload":
            return await self._offload(command)
        if verb == "rebuild":
            return await self._rebuild(command)
        if verb == "snapshot":
            return await self._snapshot(command)
        if verb == "inject_network_info":
            return await self._inject_network_info(command)
        iid = command.instance_id
        action: Callable[[], PowerState]
        if verb in ("pause", "unpause", "suspend", "resume"):
            driver = self.driver
            if not isinstance(driver, PauseSuspendDriver):
                return m.instance_event(
                    host=self.host,
                    instance_id=iid,
                    kind=m.ACTION_FAILED,
                    power_state=self._known.get(iid, PowerState.NOSTATE),
                    request_id=command.request_id,
                    action=verb,
                    fault=m.fault(400, f"This host's hypervisor cannot {verb} instances."),
                )
            verb_fn: Callable[[str], PowerState] = getattr(driver, verb)

            def action() -> PowerState:
                return verb_fn(iid)
        elif verb in ("start", "unshelve"):

            def action() -> PowerState:
                return self.driver.start(iid)
        elif verb == "shelve":
            timeout = command.timeout_seconds or self.cfg.shutdown_timeout

            def action() -> PowerState:
                # Only a running guest can answer a shutdown request: waiting on a paused
                # or suspended one would only delay the forced stop.
                running = self.driver.describe(iid) == PowerState.RUNNING
                return self.driver.stop(iid, timeout if running else 0)
        elif verb == "stop":
            timeout = command.timeout_seconds or self.cfg.shutdown_timeout

            def action() -> PowerState:
                return self.driver.stop(iid, timeout)
        else:
            hard = command.reboot_type == agent_bus_pb2.REBOOT_TYPE_HARD

            def action() -> PowerState:
                return self.driver.reboot(iid, hard=hard)

        event = await self._power_action(verb, command.request_id, iid, action)
        if event.kind != m.ACTION_SUCCEEDED:
            return event
        if verb == "shelve" and command.image_id:
            return await self._shelve_snapshot(command, event)
        if verb == "unshelve" and command.drop_image_id:
            await self._drop_image(command.drop_image_id)
        return event

    async def _shelve_snapshot(
        self, cmd: agent_bus_pb2.ShelveInstanceCommand, stopped: agent_bus_pb2.InstanceEvent
    ) -> agent_bus_pb2.InstanceEvent:
        """The shut-off disk into the shelve's image; the shelve fails with the snapshot."""
        failed = await self._take_snapshot(cmd.instance_id, cmd.base_image, cmd.image_id)
        if failed is None:
            return stopped
        failed_event = agent_bus_pb2.InstanceEvent()
        failed_event.CopyFrom(stopped)
        failed_event.kind = m.ACTION_FAILED
        failed_event.fault.CopyFrom(failed)
        return failed_event

    async def _drop_image(self, image_id: str) -> None:
        """Deletes an image no longer needed (a shelve's snapshot once the server runs)."""
        if self._snapshots is not None:
            await asyncio.to_thread(self._snapshots.drop, image_id)

    async def _build(self, cmd: agent_bus_pb2.BuildInstanceCommand) -> agent_bus_pb2.InstanceEvent:
        spec = cmd.spec
        iid = spec.instance_id

        def answer(
            kind: m.Kind, state: PowerState, fault_msg: str = ""
        ) -> agent_bus_pb2.InstanceEvent:
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
        if cmd.request_id in self._deleted_builds:
            return answer(
                m.BUILD_FAILED,
                PowerState.NOSTATE,
                "The instance was deleted on this host after this build; it is not built again.",
            )
        self._deleted.discard(iid)
        try:
            state = await self.call_driver(self.driver.create, spec, dhcp=list(cmd.dhcp))
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
        self._built[iid] = cmd.request_id
        if cmd.drop_image_id:
            # Unshelved from the shelve's snapshot: the disk is here now.
            await self._drop_image(cmd.drop_image_id)
        return answer(m.BUILD_SUCCEEDED, state)

    async def _delete(
        self, cmd: agent_bus_pb2.DeleteInstanceCommand
    ) -> agent_bus_pb2.InstanceEvent:
        iid = cmd.instance_id
        if _valid_uuid(iid):
            await self.call_driver(self.driver.destroy, iid)
            self._deleted.add(iid)
            built = self._built.pop(iid, None)
            if built is not None:
                self._deleted_builds[built] = None
                while len(self._deleted_builds) > _DELETED_BUILDS_KEPT:
                    del self._deleted_builds[next(iter(self._deleted_builds))]
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

    async def _rebuild(
        self, cmd: agent_bus_pb2.RebuildInstanceCommand
    ) -> agent_bus_pb2.InstanceEvent:
        spec = cmd.spec
        iid = spec.instance_id

        answer = functools.partial(self._answer, iid, cmd.request_id, "rebuild")

        driver = self.driver
        if not isinstance(driver, RebuildDriver):
            state = self._known.get(iid, PowerState.NOSTATE)
            return answer(
                m.ACTION_FAILED, state, m.fault(400, "This host's hypervisor cannot rebuild.")
            )
        if not _valid_uuid(iid) or not spec.instance_name:
            return answer(
                m.ACTION_FAILED,
                PowerState.NOSTATE,
                m.fault(400, "The rebuild command lacks a valid instance UUID or name."),
            )
        # Progress, so the server shows rebuild_spawning while the disks are made.
        await self._publish_event(
            answer(m.REBUILD_SPAWNING, self._known.get(iid, PowerState.NOSTATE))
        )
        try:
            state = await self.call_driver(
                driver.rebuild, spec, power_on=cmd.power_on, rebuild_id=cmd.request_id
            )
        except BuildFailed as exc:
            self._forget(iid)
            return answer(m.ACTION_FAILED, PowerState.NOSTATE, m.fault(500, str(exc)))
        except Exception:
            log.exception("rebuild failed unexpectedly", extra={"host": self.host, "instance": iid})
            with contextlib.suppress(Exception):
                await self.call_driver(self.driver.destroy, iid)
            self._forget(iid)
            return answer(
                m.ACTION_FAILED,
                PowerState.NOSTATE,
                m.fault(500, "An internal error stopped the rebuild."),
            )
        self._set_known(iid, state)
        return answer(m.ACTION_SUCCEEDED, state)

    def _answer(
        self,
        iid: str,
        request_id: str,
        action: str,
        kind: m.Kind,
        state: PowerState,
        fault: common_pb2.Fault | None = None,
    ) -> agent_bus_pb2.InstanceEvent:
        """The event answering an action's command (bind the first three with a partial)."""
        return m.instance_event(
            host=self.host,
            instance_id=iid,
            kind=kind,
            power_state=state,
            request_id=request_id,
            action=action,
            fault=fault,
        )

    async def _inject_network_info(
        self, cmd: agent_bus_pb2.InjectNetworkInfoCommand
    ) -> agent_bus_pb2.InstanceEvent:
        """Wires the instance's ports again; the answer says whether it could."""
        iid = cmd.instance_id
        answer = functools.partial(self._answer, iid, cmd.request_id, "inject_network_info")
        driver = self.driver
        if not isinstance(driver, NetworkWiringDriver):
            fault = m.fault(400, "This host's hypervisor cannot wire an instance's ports again.")
            return answer(m.ACTION_FAILED, self._known.get(iid, PowerState.NOSTATE), fault)
        try:
            wired = await self.call_driver(driver.rewire, iid)
        except InstanceNotFound as exc:
            self._forget(iid)
            return answer(m.ACTION_FAILED, PowerState.NOSTATE, m.fault(404, str(exc)))
        except Exception:
            log.exception("network info not injected", extra={"host": self.host, "instance": iid})
            fault = m.fault(500, "The host could not wire the instance's ports again.")
            return answer(m.ACTION_FAILED, await self._state_of(iid), fault)
        log.info(
            "network info injected", extra={"host": self.host, "instance": iid, "ports": wired}
        )
        return answer(m.ACTION_SUCCEEDED, self._known.get(iid, PowerState.NOSTATE))

    async def _snapshot(
        self, cmd: agent_bus_pb2.SnapshotInstanceCommand
    ) -> agent_bus_pb2.InstanceEvent:
        iid = cmd.instance_id
        answer = functools.partial(self._answer, iid, cmd.request_id, "snapshot")
        failed = await self._take_snapshot(iid, cmd.base_image, cmd.image_id)
        if failed is None and cmd.HasField("backup") and self._snapshots is not None:
            # A backup: the older ones of its type go once the new one is uploaded.
            try:
                await asyncio.to_thread(self._snapshots.rotate, iid, cmd.backup)
            except RotationFailed as exc:
                failed = m.fault(500, str(exc))
        state = self._known.get(iid, PowerState.NOSTATE)
        if failed is not None:
            return answer(m.ACTION_FAILED, state, failed)
        return answer(m.ACTION_SUCCEEDED, state)

    async def _take_snapshot(
        self, iid: str, base: agent_bus_pb2.ImageRef, image_id: str
    ) -> common_pb2.Fault | None:
        """Snapshots the instance into `image_id`; None on success, else the fault (the
        image is then deleted). The instance's known power state is brought up to date."""
        if self._snapshots is None:
            return m.fault(501, "This host cannot upload images (agent.image_url is not set).")
        taker = self._snapshots
        try:
            # A worker thread whatever the driver: the copy and the upload are long I/O.
            state = await asyncio.to_thread(taker.take, self.driver, iid, base, image_id)
        except InstanceNotFound as exc:
            self._forget(iid)
            return m.fault(404, str(exc))
        except SnapshotFailed as exc:
            log.warning(
                "snapshot failed", extra={"host": self.host, "instance": iid, "error": str(exc)}
            )
            await self._state_of(iid)
            return m.fault(500, str(exc))
        except Exception:
            log.exception("snapshot failed", extra={"host": self.host, "instance": iid})
            await self._state_of(iid)
            return m.fault(500, "The hypervisor could not snapshot the instance.")
        self._set_known(iid, state)
        return None

    async def _state_of(self, iid: str) -> PowerState:
        """What the hypervisor says of the instance now (known from then on); NOSTATE when
        it cannot say."""
        try:
            state = await self.call_driver(self.driver.describe, iid)
        except Exception:
            return PowerState.NOSTATE
        self._set_known(iid, state)
        return state

    async def _offload(
        self, cmd: agent_bus_pb2.ShelveOffloadInstanceCommand
    ) -> agent_bus_pb2.InstanceEvent:
        """Removes a shelved instance from this host, as a delete does; reconcile must not
        bring it back."""
        iid = cmd.instance_id
        if _valid_uuid(iid):
            await self.call_driver(self.driver.destroy, iid)
            self._deleted.add(iid)
        self._forget(iid)
        return m.instance_event(
            host=self.host,
            instance_id=iid,
            kind=m.ACTION_SUCCEEDED,
            power_state=PowerState.NOSTATE,
            request_id=cmd.request_id,
            action="shelve_offload",
        )

    async def _power_action(
        self, verb: str, request_id: str, iid: str, action: Callable[[], PowerState]
    ) -> agent_bus_pb2.InstanceEvent:
        kind = m.ACTION_SUCCEEDED
        fault = None
        try:
            state = await self.call_driver(action)
            self._set_known(iid, state)
        except InstanceNotFound as exc:
            self._forget(iid)
            kind, state, fault = m.ACTION_FAILED, PowerState.NOSTATE, m.fault(404, str(exc))
        except ActionFailed as exc:
            kind, fault = m.ACTION_FAILED, m.fault(409, str(exc))
            state = await self._state_of(iid)
        except Exception:
            log.exception("%s failed", verb, extra={"host": self.host, "instance": iid})
            kind, fault = m.ACTION_FAILED, m.fault(500, f"The hypervisor could not {verb} it.")
            state = await self._state_of(iid)
        return m.instance_event(
            host=self.host,
            instance_id=iid,
            kind=kind,
            power_state=state,
            request_id=request_id,
            action=verb,
            fault=fault,
        )

    async def _publish_event(self, event: agent_bus_pb2.InstanceEvent) -> None:
        await self._js.publish(
            bus.instance_event_subject(self.host),
            event.SerializeToString(),
            stream=bus.EVENTS_STREAM,
            headers=tracing.headers_with_trace(
                {"Nats-Msg-Id": m.event_msg_id(event.request_id, event.kind)}
            ),
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
        self._counters.heartbeats_sent.inc()

    async def sync_power_states(self) -> int:
        """Reports power-state changes nobody commanded; returns how many it reported."""
        reported = 0
        async with self._lock:
            actual = await self.call_driver(self.driver.list_instances)
            for iid, state in actual.items():
                before = self._known.get(iid)
                if before is not None and before != state:
                    await self._spontaneous(iid, m.POWER_STATE_CHANGED, state)
                    self._counters.reconcile_action("power_sync", "report_power_state")
                    reported += 1
            for iid in self._known.keys() - actual.keys():
                await self._spontaneous(iid, m.MISSING, PowerState.NOSTATE)
                self._counters.reconcile_action("power_sync", "report_missing")
                reported += 1
            self._replace_known(actual)
        return reported

    async def _spontaneous(self, iid: str, kind: m.Kind, state: PowerState) -> None:
        await self._publish_event(
            m.instance_event(host=self.host, instance_id=iid, kind=kind, power_state=state)
        )

    async def _heartbeats(self) -> None:
        """Beats on a task of their own: the housekeeping below waits for the host's lock
        (which a build holds for as long as the hypervisor takes), a heartbeat never does."""
        loop = asyncio.get_running_loop()
        every = self.cfg.heartbeat_interval
        # Spread the first beats so a thousand simulated hosts do not beat in lockstep.
        next_hb = loop.time() + every * random.uniform(0.5, 1.0)
        while True:
            await asyncio.sleep(max(0.0, next_hb - loop.time()))
            next_hb = loop.time() + every
            await self._guarded(self.send_heartbeat, "heartbeat")

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        sync_every = self.cfg.power_sync_interval
        prune_every = self.cfg.image_cache_prune_interval_s
        prunes = isinstance(self.driver, ImageCacheDriver)
        # Spread the first ticks so a thousand simulated hosts do not sync in lockstep.
        now = loop.time()
        next_sync = now + sync_every * random.uniform(0.5, 1.0)
        next_prune = now + prune_every * random.uniform(0.5, 1.0) if prunes else float("inf")
        while True:
            await asyncio.sleep(max(0.0, min(next_sync, next_prune) - loop.time()))
            now = loop.time()
            if now >= next_prune:
                next_prune = now + prune_every
                await self._guarded(self.prune_image_cache, "image cache prune")
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
        expected = await self._expected_instances()
        if expected is None:
            return None
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

    async def _expected_instances(self) -> list[ExpectedInstance] | None:
        """What the conductor records for this host, asked again (0.2 s, doubling up to 30 s)
        for as long as gRPC fails: the agent may start before the conductor. None when the
        agent stops first."""
        fleet = self._fleet
        assert fleet is not None
        expected: list[ExpectedInstance] | None = None
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(grpc.aio.AioRpcError),
            wait=wait_exponential(multiplier=0.2, max=30.0),
            stop=lambda _: self._stopping,
            before_sleep=self._log_conductor_unreachable,
            retry_error_callback=lambda _: None,
        ):
            with attempt:
                expected = await fleet.expected_instances(self.host)
        return expected

    def _log_conductor_unreachable(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "?"
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        # One warning per host, then quiet: a fleet of simulated hosts would flood.
        log.log(
            logging.WARNING if state.attempt_number == 1 else logging.DEBUG,
            "conductor unreachable for reconcile; retrying in %.1fs (%s)",
            delay,
            code,
            extra={"host": self.host},
        )

    async def _apply(self, plan: ReconcilePlan) -> None:
        for iid in plan.orphans:
            await self.call_driver(self.driver.destroy, iid)
            self._counters.reconcile_action("start", "destroy_orphan")
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
                self._counters.reconcile_action("start", "report_missing")
                continue
            if exp.power_state == PowerState.PAUSED and isinstance(self.driver, PauseSuspendDriver):
                state = await self.call_driver(self.driver.pause, exp.instance_id)
            self._counters.reconcile_action("start", "recreate")
            log.info("re-created instance", extra={"host": self.host, "instance": exp.instance_id})
            if exp.power_state != PowerState.NOSTATE and state != exp.power_state:
                await self._spontaneous(exp.instance_id, m.POWER_STATE_CHANGED, state)
        for iid in plan.missing:
            await self._spontaneous(iid, m.MISSING, PowerState.NOSTATE)
            self._counters.reconcile_action("start", "report_missing")
        for iid, state in plan.drifted:
            await self._spontaneous(iid, m.POWER_STATE_CHANGED, state)
            self._counters.reconcile_action("start", "report_power_state")
