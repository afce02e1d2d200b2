"""The transactional outbox: messages committed with the change that implies them.

`add()` writes a row in the caller's transaction. The `Relay` publishes rows in id order
through JetStream with Nats-Msg-Id = msg_id, waits for the acks, then deletes them. A crash
after commit only delays a message; a crash after publish and before delete sends it again,
which JetStream's duplicate window turns into a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf.message import Message
from nats.js import JetStreamContext
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from controlplane.db.dialect import upsert_insert
from controlplane.db.models import OutboxMessage
from controlplane.runtime import bus, tracing

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: the subject, its dedup id and the protobuf payload; with
    tracing on, the trace context it continues (None: the span current when queued)."""

    subject: str
    msg_id: str
    payload: Message
    traceparent: str | None = None


def rows_of(messages: Iterable[Outgoing]) -> list[dict[str, object]]:
    """The outbox rows for the messages (for callers that write them in a statement of
    their own, still in their transaction)."""
    return _rows(messages)


def _rows(messages: Iterable[Outgoing]) -> list[dict[str, object]]:
    now = datetime.now(UTC)
    here = tracing.current_traceparent()  # None when tracing is off
    return [
        {
            "subject": m.subject,
            "msg_id": m.msg_id,
            "payload": m.payload.SerializeToString(),
            "created_at": now,
            "traceparent": m.traceparent or here,
        }
        for m in messages
    ]


async def add(session: AsyncSession, *messages: Outgoing) -> None:
    """Queues the messages in the session's transaction (one INSERT for all of them).

    Idempotent per msg_id: a message whose id is still queued is not queued twice.
    """
    rows = _rows(messages)
    if not rows:
        return
    stmt = upsert_insert(session, OutboxMessage).on_conflict_do_nothing(index_elements=["msg_id"])
    await session.execute(stmt.values(rows))


class PublishFailed(Exception):
    """Part of a batch could not be published; those rows stay queued."""


class Wakeup:
    """Set by writers after a commit that queued messages, so the relay runs at once."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> None:
        """Returns when set (then clears it) or after `seconds`, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)
        self._event.clear()


async def _unless_lost(work: asyncio.Future[list[T]], link: asyncio.Event | None) -> list[T] | None:
    """The work's result, or None (the work cancelled) if the link drops first."""
    if link is None:
        return await work
    dropped: asyncio.Future[bool] = asyncio.ensure_future(link.wait())
    try:
        either: list[asyncio.Future[Any]] = [work, dropped]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        dropped.cancel()
    if work.done():
        return work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    return None


def _headers(msg_id: str, seq: int, traceparent: str | None) -> dict[str, str]:
    headers = {"Nats-Msg-Id": msg_id, bus.COMMAND_SEQ_HEADER: str(seq)}
    if traceparent is not None:
        headers[tracing.TRACEPARENT] = traceparent
    return headers


def _log_relay_failed(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning("outbox relay failed, retrying in %.1fs: %s", delay, exc)


class Relay:
    """Publishes queued outbox rows. Several relays (conductors) may run against one database:
    on PostgreSQL each batch is locked with FOR UPDATE SKIP LOCKED; SQLite has one conductor."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        js: JetStreamContext,
        wakeup: Wakeup,
        *,
        batch: int = 256,
        poll_interval: float = 1.0,
        publish_timeout: float = 5.0,
        watch: bus.ConnectionWatch | None = None,
    ) -> None:
        self._sessions = sessions
        self._js = js
        self._wakeup = wakeup
        self._batch = batch
        self._poll = poll_interval
        self._timeout = publish_timeout
        self._watch = watch
        if watch is not None:
            # Rows left by a failed batch go out as soon as NATS is back, not after the
            # backoff (which grows to seconds during an outage).
            watch.on_restored(wakeup.set)

    async def relay_once(self) -> int:
        """Publishes one batch; returns how many rows were published and removed.

        The batch is taken with ONE statement (DELETE ... RETURNING of the oldest rows, locked
        with SKIP LOCKED on PostgreSQL so other relays take other rows) in a transaction that
        stays open while JetStream acks. Every ack in → commit. Any publish failed → rollback:
        all rows of the batch are queued again (the ones already published will be sent
        again and dropped by JetStream as duplicates) and PublishFailed is raised.
        """
        async with self._sessions() as session, session.begin():
            oldest = select(OutboxMessage.id).order_by(OutboxMessage.id).limit(self._batch)
            if session.get_bind().dialect.name == "postgresql":
                oldest = oldest.with_for_update(skip_locked=True)
            taken = await session.execute(
                delete(OutboxMessage)
                .where(OutboxMessage.id.in_(oldest.scalar_subquery()))
                .returning(
                    OutboxMessage.id,
                    OutboxMessage.subject,
                    OutboxMessage.msg_id,
                    OutboxMessage.payload,
                    OutboxMessage.traceparent,
                )
            )
            rows = sorted(taken.all(), key=lambda r: r.id)  # RETURNING has no order
            if not rows:
                return 0
            link = self._watch.current_link() if self._watch is not None else None
            # Pipelined: every publish is sent before any ack is awaited; tasks start in
            # creation order, so JetStream receives them in id order.
            publishing = asyncio.gather(
                *(
                    self._js.publish(
                        r.subject,
                        r.payload,
                        timeout=self._timeout,
                        headers=_headers(r.msg_id, r.id, r.traceparent),
                    )
                    for r in rows
                ),
                return_exceptions=True,
            )
            results = await _unless_lost(publishing, link)
            if results is None:
                # Acks for publishes sent on the dropped connection never come; give the
                # batch back now instead of waiting out the publish timeout. Whatever did
                # reach the stream is dropped as a duplicate when the batch is sent again.
                raise PublishFailed(f"NATS connection lost with {len(rows)} publishes in flight")
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                raise PublishFailed(
                    f"{len(failures)} of {len(rows)} publishes failed: {failures[0]!r}"
                )
            return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        """Relays until stop is set: at once after a local commit, else every poll interval
        (for rows a crashed or another conductor left). NATS outages are retried forever."""
        while not stop.is_set():
            n = await self._relay_until_done(stop)
            if n is not None and n < self._batch:  # else more are likely waiting: go on
                await self._wakeup.wait(self._poll)

    async def _relay_until_done(self, stop: asyncio.Event) -> int | None:
        """relay_once, run again after a failure (a database or NATS outage: the rows stay
        queued) with a backoff from 0.2 s doubling up to 5 s that a commit or a restored
        NATS connection cuts short (Wakeup). None if stop is set during an outage."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_exponential(multiplier=0.2, max=5.0),
            sleep=self._wakeup.wait,
            stop=lambda _: stop.is_set(),
            before_sleep=_log_relay_failed,
            retry_error_callback=lambda _: None,
        ):
            with attempt:
                if stop.is_set():  # set during the backoff: no attempt more
                    return None
                return await self.relay_once()
        return None
