"""The NATS subject bus: subject names, JetStream streams and connecting.

Streams (all file-backed, deduplicated by Nats-Msg-Id):
  LOOM_COMPUTE    loom.compute.<host>.<verb>   commands to agents (one consumer per host)
  LOOM_CONDUCTOR  loom.conductor.<verb>        the conductor's own durable work (scheduling)
  LOOM_EVENTS     loom.events.instance.<host>  instance events from agents (work queue)
  LOOM_INVENTORY  loom.events.inventory.<host> host inventories (last value per host)
Heartbeats are plain NATS (loom.events.heartbeat.<host>): losing one only delays liveness.

Every message the conductor's outbox relays carries its outbox row id as the
Loom-Command-Seq header. Commands for one instance are queued in transactions that follow
one another (each takes the instance's row), so their ids grow in the order they were
decided; an agent skips a command older than one it has already carried out for the same
instance (a stale redelivery, whose first delivery's effect and event already happened).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from controlplane.config import NatsConfig

log = logging.getLogger(__name__)

COMPUTE_STREAM = "LOOM_COMPUTE"
CONDUCTOR_STREAM = "LOOM_CONDUCTOR"
EVENTS_STREAM = "LOOM_EVENTS"
INVENTORY_STREAM = "LOOM_INVENTORY"

# The outbox row id of a relayed message (see above).
COMMAND_SEQ_HEADER = "Loom-Command-Seq"

# Command verbs an agent accepts on loom.compute.<host>.<verb>.
VERBS = (
    "build",
    "delete",
    "start",
    "stop",
    "reboot",
    # The steps of a move between hosts (loom.compute.v1.MoveInstanceCommand).
    "move_stop_source",
    "move_finish_dest",
    "move_drop",
    "move_restore_source",
    "pause",
    "unpause",
    "suspend",
    "resume",
    "shelve",
    "shelve_offload",
    "unshelve",
    "rebuild",
    # A copy of the root disk into an image (loom.compute.v1.SnapshotInstanceCommand).
    "snapshot",
    # An instance's ports wired again (loom.compute.v1.InjectNetworkInfoCommand).
    "inject_network_info",
    # The current security of the host's ports (loom.compute.v1.RefreshPortSecurityCommand).
    "port_security",
    # The current state of the routers the host serves (loom.compute.v1.RefreshRoutersCommand).
    "routers",
)


def compute_subject(host: str, verb: str) -> str:
    if verb not in VERBS:
        raise ValueError(f"unknown compute verb {verb!r}")
    return f"loom.compute.{host}.{verb}"


def compute_host_filter(host: str) -> str:
    return f"loom.compute.{host}.>"


def conductor_subject(verb: str) -> str:
    return f"loom.conductor.{verb}"


def instance_event_subject(host: str) -> str:
    return f"loom.events.instance.{host}"


def inventory_subject(host: str) -> str:
    return f"loom.events.inventory.{host}"


def heartbeat_subject(host: str) -> str:
    return f"loom.events.heartbeat.{host}"


def consumer_leader_elected_subject(stream: str, consumer: str) -> str:
    """The JetStream advisory a cluster publishes when a consumer gets a new leader. Pull
    requests waiting at the old leader die with it, unanswered."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{stream}.{consumer}"


HEARTBEAT_WILDCARD = "loom.events.heartbeat.*"
INSTANCE_EVENT_WILDCARD = "loom.events.instance.*"
INVENTORY_WILDCARD = "loom.events.inventory.*"


def valid_host_name(host: str) -> bool:
    """Host names become subject tokens: no dots, spaces or wildcards."""
    return bool(host) and not any(c in host for c in ". *>\t\r\n")


def stream_configs(cfg: NatsConfig) -> list[StreamConfig]:
    dup = float(cfg.duplicate_window_s)
    common: dict[str, Any] = {
        "storage": StorageType.FILE,
        "duplicate_window": dup,
        "num_replicas": cfg.stream_replicas,
    }
    return [
        StreamConfig(
            name=COMPUTE_STREAM,
            subjects=["loom.compute.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            **common,
        ),
        StreamConfig(
            name=CONDUCTOR_STREAM,
            subjects=["loom.conductor.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            **common,
        ),
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=["loom.events.instance.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            **common,
        ),
        StreamConfig(
            name=INVENTORY_STREAM,
            subjects=["loom.events.inventory.>"],
            retention=RetentionPolicy.LIMITS,
            max_msgs_per_subject=1,
            discard=DiscardPolicy.OLD,
            **common,
        ),
    ]


# How long a process starting keeps asking a cluster that has no JetStream leader yet (a
# node restarting, an election under way) before it gives up.
_STREAMS_READY_S = 60.0


async def ensure_streams(
    js: JetStreamContext, cfg: NatsConfig, timeout_s: float = _STREAMS_READY_S
) -> None:
    """Creates or updates Loom's streams; safe to call from every process at start. A
    cluster that cannot answer yet (no meta leader: 503, no reply, a stream it answered
    for but cannot show) is asked again until timeout_s has passed."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    for sc in stream_configs(cfg):
        while True:
            try:
                try:
                    await js.add_stream(sc)
                except BadRequestError:
                    await js.update_stream(sc)
                # A cluster still forming may answer a create and then lose it with its
                # first meta leader: the stream is there only once it can be read back.
                await js.stream_info(str(sc.name))
                break
            except (
                ServiceUnavailableError,
                NatsTimeoutError,
                NoRespondersError,
                NotFoundError,
            ) as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                log.warning("JetStream not ready for stream %s: %r", sc.name, exc)
                await asyncio.sleep(0.5)


async def wait_for_streams(js: JetStreamContext, timeout_s: float = 60.0) -> None:
    """Waits until Loom's streams exist, for a process whose NATS user may read streams but
    not create them (an agent: the control plane creates them), or until a cluster without a
    JetStream leader yet can answer."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    for name in (COMPUTE_STREAM, CONDUCTOR_STREAM, EVENTS_STREAM, INVENTORY_STREAM):
        while True:
            try:
                await js.stream_info(name)
                break
            except (NotFoundError, ServiceUnavailableError, NatsTimeoutError, NoRespondersError):
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)


ErrorCallback = Callable[[Exception], Awaitable[None]]


class ConnectionWatch:
    """Tells waiting work that the NATS connection dropped or came back.

    A request in flight when the connection drops (a JetStream publish waiting for its ack)
    never gets an answer: the server that would give it is gone or has forgotten the inbox.
    Without this, such a request waits out its whole timeout after the reconnect.
    """

    def __init__(self) -> None:
        self._lost = asyncio.Event()
        self._restored: list[Callable[[], None]] = []

    def current_link(self) -> asyncio.Event:
        """An event set once the connection as it is now drops (one per connection)."""
        return self._lost

    def on_restored(self, callback: Callable[[], None]) -> None:
        """Calls callback (synchronously, on the loop) after every reconnect."""
        self._restored.append(callback)

    def lost(self) -> None:
        lost, self._lost = self._lost, asyncio.Event()
        lost.set()

    def restored(self) -> None:
        for callback in self._restored:
            callback()


async def connect(
    url: str,
    cfg: NatsConfig,
    name: str,
    *,
    max_reconnect_attempts: int = -1,
    watch: ConnectionWatch | None = None,
) -> NATS:
    """Connects with endless reconnects (a NATS restart must not end a Loom process).
    `url` may name several servers, comma-separated (the nodes of a cluster): the client
    picks one at random and, when it goes, reconnects to another of them or of the nodes
    the cluster announced. With watch, disconnects and reconnects are reported to it."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc, extra={"client": name})

    async def on_disconnect() -> None:
        log.warning("nats disconnected", extra={"client": name})
        if watch is not None:
            watch.lost()

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"client": name})
        if watch is not None:
            watch.restored()

    kwargs: dict[str, Any] = {
        "servers": [u.strip() for u in url.split(",") if u.strip()],
        "name": name,
        "max_reconnect_attempts": max_reconnect_attempts,
        "reconnect_time_wait": 0.5,
        "allow_reconnect": True,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        "connect_timeout": 5,
        "ping_interval": cfg.ping_interval_s,
        "max_outstanding_pings": cfg.max_outstanding_pings,
    }
    if cfg.user:
        kwargs["user"] = cfg.user
        kwargs["password"] = cfg.password
        # A user with permissions may receive replies on its own inbox prefix only.
        kwargs["inbox_prefix"] = f"_INBOX_{cfg.user}"
    if cfg.tls_ca or cfg.tls_cert:
        ctx = ssl.create_default_context(cafile=cfg.tls_ca or None)
        if cfg.tls_cert:
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key or None)
        kwargs["tls"] = ctx
    return await nats.connect(**kwargs)


# Up to this many consumers are asked for one by one; more are read from the stream's
# consumer list, 256 a page (a fleet process of 1,000 hosts: 4 requests, not 1,000).
_LAG_ONE_BY_ONE = 16
_LAG_MAX_PAGES = 64
_LAG_REQUEST_TIMEOUT_S = 2.0


async def consumer_lags(
    js: JetStreamContext, stream: str, durables: Iterable[str]
) -> list[tuple[str, str, int, int]]:
    """(stream, consumer, num_pending, num_ack_pending) of each named durable consumer that
    exists, by name. For metrics: a consumer not created yet is left out."""
    wanted = set(durables)
    infos: list[Any] = []
    if len(wanted) <= _LAG_ONE_BY_ONE:
        answers = await asyncio.gather(
            *(
                js.consumer_info(stream, name, timeout=_LAG_REQUEST_TIMEOUT_S)
                for name in sorted(wanted)
            ),
            return_exceptions=True,
        )
        for answer in answers:
            if isinstance(answer, NotFoundError):
                continue
            if isinstance(answer, BaseException):
                raise answer
            infos.append(answer)
    else:
        offset = 0
        for _ in range(_LAG_MAX_PAGES):
            page = await js.consumers_info(stream, offset=offset)
            infos.extend(i for i in page if i.name in wanted)
            offset += len(page)
            if not page:
                break
    return sorted(
        (stream, i.name, int(i.num_pending or 0), int(i.num_ack_pending or 0)) for i in infos
    )
