"""Batched handling gives exactly what one-at-a-time handling gave.

Each test builds the same set of instances twice: one copy goes through the one-at-a-time
handlers, the other through the batch path the workers use, and the two end states
(instance rows and queued commands) must be the same, including redelivered, stale and
out-of-order messages.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import conductor_bus_pb2
from nats.aio.msg import Msg
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select

from controlplane.conductor import commands
from controlplane.conductor.events import EventConsumer
from controlplane.conductor.scheduling import SchedulingWorker
from controlplane.db.models import Instance, InstanceAction, OutboxMessage
from controlplane.runtime import tracing
from tests.conductor.conftest import IMAGE_ID, Harness, harness
from tests.conductor.factories import add, make_instance
from tests.support.scheduler import BATCH_METHOD

K = agent_bus_pb2.InstanceEventKind


@pytest.fixture(params=["pg_url", "sqlite_url"])
async def db(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """PostgreSQL (batched statements) and SQLite (the same work, one statement each)."""
    async with harness(request.getfixturevalue(request.param)) as h:
        yield h


WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass
class FakeMsg:
    """What the workers use of a JetStream message: its data, its headers (None when it
    has none, as a real message) and the ack verbs."""

    data: bytes
    outcome: str = ""
    headers: dict[str, str] | None = None

    async def ack(self) -> None:
        self.outcome += "ack"

    async def nak(self, delay: float | None = None) -> None:
        self.outcome += "nak"

    async def term(self) -> None:
        self.outcome += "term"


def test_the_message_stand_in_offers_exactly_what_the_workers_use_of_a_jetstream_message() -> None:
    """FakeMsg stands in for nats-py's Msg so a batch can be handed to the workers directly;
    its verbs must keep the real message's names, parameters and async-ness."""
    assert "data" in {f.name for f in dataclasses.fields(Msg)}
    for verb in ("ack", "nak", "term"):
        real, stand_in = getattr(Msg, verb), getattr(FakeMsg, verb)
        assert inspect.iscoroutinefunction(real)
        assert inspect.iscoroutinefunction(stand_in)
        assert list(inspect.signature(stand_in).parameters) == list(
            inspect.signature(real).parameters
        ), verb


# name → the instance's columns before the events
EVENT_CASES: dict[str, dict[str, Any]] = {
    "spawning": {"vm_state": "building", "task_state": "spawning"},
    "spawning-attempt-2": {"vm_state": "building", "task_state": "spawning", "attempts": 2},
    "deleted": {"vm_state": "deleted", "task_state": None, "deleted": True},
    "deleting": {"vm_state": "building", "task_state": "deleting"},
    "elsewhere": {"vm_state": "building", "task_state": "spawning", "host": "host-2"},
    "active": {"vm_state": "active", "task_state": None},
    "abandoned": {"vm_state": "building", "task_state": "scheduling"},
    "redelivered": {"vm_state": "building", "task_state": "spawning"},
    "power-first": {"vm_state": "building", "task_state": "spawning"},
    "then-deleted": {"vm_state": "building", "task_state": "spawning"},
    "gone": {"vm_state": "active", "task_state": "deleting"},
    "gone-twice": {"vm_state": "active", "task_state": "deleting"},
    "gone-elsewhere": {"vm_state": "active", "task_state": "deleting", "host": "host-2"},
    "gone-already": {"vm_state": "deleted", "task_state": None, "deleted": True},
}


def _event(
    uuid_: str, kind: agent_bus_pb2.InstanceEventKind.ValueType, **kw: Any
) -> agent_bus_pb2.InstanceEvent:
    stamp = Timestamp()
    stamp.FromDatetime(WHEN)
    fields: dict[str, Any] = {"host": "host-1", "attempt": 1, "occurred_at": stamp}
    fields.update(kw)
    return agent_bus_pb2.InstanceEvent(
        request_id=str(uuid.uuid4()), instance_id=uuid_, kind=kind, **fields
    )


def _events(ids: dict[str, str]) -> list[agent_bus_pb2.InstanceEvent]:
    """One storm's worth of events, in arrival order."""
    ok = K.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED
    running = agent_bus_pb2.POWER_STATE_RUNNING
    return [
        _event(ids["spawning"], ok, power_state=running),
        _event(ids["spawning-attempt-2"], ok, attempt=1),  # stale attempt
        _event(ids["deleted"], ok),
        _event(ids["deleting"], ok),
        _event(ids["elsewhere"], ok),
        _event(ids["active"], ok),
        _event(ids["abandoned"], ok),
        _event(ids["redelivered"], ok),
        # out of order: the power state arrives before the build's success
        _event(
            ids["power-first"],
            K.INSTANCE_EVENT_KIND_POWER_STATE_CHANGED,
            power_state=agent_bus_pb2.POWER_STATE_SHUTDOWN,
        ),
        _event(ids["power-first"], ok),
        _event(ids["redelivered"], ok),  # the same success again
        _event(ids["then-deleted"], ok),
        _event(ids["then-deleted"], K.INSTANCE_EVENT_KIND_DELETED),
        _event(ids["gone"], K.INSTANCE_EVENT_KIND_DELETED),
        _event(ids["gone-twice"], K.INSTANCE_EVENT_KIND_DELETED),
        _event(ids["gone-elsewhere"], K.INSTANCE_EVENT_KIND_DELETED),
        _event(ids["gone-already"], K.INSTANCE_EVENT_KIND_DELETED),
        _event(ids["gone-twice"], K.INSTANCE_EVENT_KIND_DELETED),  # redelivered
    ]


async def _instances(h: Harness, cases: dict[str, dict[str, Any]], **common: Any) -> dict[str, str]:
    ids = {name: str(uuid.uuid4()) for name in cases}
    await add(
        h.sessions,
        *(
            make_instance(uuid=ids[name], image_id=IMAGE_ID, **{**common, **over})
            for name, over in cases.items()
        ),
    )
    now = datetime.now(UTC)
    await add(
        h.sessions,
        *(
            InstanceAction(
                instance_uuid=u,
                action="delete",
                request_id=f"req-{u}",
                user_id="user-a",
                project_id="project-a",
                start_time=now,
            )
            for u in ids.values()
        ),
    )
    return ids


async def _state(h: Harness, ids: dict[str, str]) -> dict[str, Any]:
    """Each instance's state and the commands queued, with the uuids replaced by names."""
    names = {v: k for k, v in ids.items()}
    async with h.sessions() as session:
        rows = (
            await session.execute(select(Instance).where(Instance.uuid.in_(list(ids.values()))))
        ).scalars()
        out: dict[str, Any] = {
            names[r.uuid]: (
                r.vm_state,
                r.task_state,
                r.power_state,
                r.deleted,
                r.host,
                r.attempts,
                r.launched_at,
                r.availability_zone,
                r.alternates,
            )
            for r in rows
        }
        queued = (await session.execute(select(OutboxMessage.subject, OutboxMessage.msg_id))).all()
        finished = (
            await session.execute(
                select(InstanceAction.instance_uuid).where(
                    InstanceAction.instance_uuid.in_(list(ids.values())),
                    InstanceAction.finish_time.is_not(None),
                )
            )
        ).scalars()
        out["delete finished"] = sorted(names[u] for u in finished)
    # A clean-up delete is keyed by the event that asked for it: random in each run.
    commands_for_these = sorted(
        (subject, re.sub(r"-after-[0-9a-f-]{36}$", "-after-<event>", msg_id.replace(u, names[u])))
        for subject, msg_id in queued
        for u in ids.values()
        if u in msg_id
    )
    out["queued"] = commands_for_these
    return out


async def test_batched_build_events_apply_what_one_at_a_time_handling_did(db: Harness) -> None:
    pg = db
    consumer = EventConsumer(pg.conductor, None)  # type: ignore[arg-type]
    one_by_one = await _instances(pg, EVENT_CASES, host="host-1", attempts=1)
    for event in _events(one_by_one):
        await consumer.handle(event)

    batched = await _instances(pg, EVENT_CASES, host="host-1", attempts=1)
    msgs = [FakeMsg(e.SerializeToString()) for e in _events(batched)]
    await consumer._handle_batch(msgs)  # type: ignore[arg-type]

    assert [m.outcome for m in msgs] == ["ack"] * len(msgs)
    expected, got = await _state(pg, one_by_one), await _state(pg, batched)
    assert got == expected
    assert got["spawning"][:3] == ("active", None, 1)
    assert got["then-deleted"][3] is True
    assert ("loom.compute.host-1.delete", "delete-deleted-host-1-after-<event>") in got["queued"]
    assert got["gone"][3] is True
    assert got["gone-elsewhere"][3] is False
    assert got["delete finished"] == ["gone", "gone-twice", "then-deleted"]


async def test_the_batched_update_changes_only_rows_its_guard_matches(pg: Harness) -> None:
    consumer = EventConsumer(pg.conductor, None)  # type: ignore[arg-type]
    ids = await _instances(pg, EVENT_CASES, host="host-1", attempts=1)
    ok = K.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED
    applied = await consumer.builds_succeeded(
        [_event(ids[name], ok) for name in EVENT_CASES if name != "redelivered"]
    )
    assert applied == {ids[n] for n in ("spawning", "power-first", "then-deleted")}
    # Applying the same events again (a redelivery) changes nothing more.
    assert await consumer.builds_succeeded([_event(ids["spawning"], ok)]) == set()


SCHEDULE_CASES: dict[str, dict[str, Any]] = {
    "new": {},
    "new-2": {},
    "deleted": {"vm_state": "deleted", "deleted": True},
    "placed": {"task_state": "spawning", "attempts": 1, "host": "host-a", "node": "host-a"},
    "moved-on": {"vm_state": "active", "task_state": None, "attempts": 1, "host": "host-a"},
    "too-big": {"memory_mb": 2_000_000},
    "twice": {},
    "retry": {"attempts": 1, "failed_hosts": ["host-x"]},
}


def _schedule_messages(ids: dict[str, str]) -> list[conductor_bus_pb2.ScheduleInstanceMessage]:
    def msg(name: str, attempt: int = 1) -> conductor_bus_pb2.ScheduleInstanceMessage:
        payload = commands.schedule(ids[name], attempt).payload
        assert isinstance(payload, conductor_bus_pb2.ScheduleInstanceMessage)
        return payload

    return [
        msg("new"),
        msg("deleted"),
        msg("placed"),
        msg("moved-on"),
        msg("too-big"),
        msg("twice"),
        msg("new-2"),
        msg("twice"),  # redelivered while the first is in the same batch
        msg("retry", 2),
    ]


async def test_batched_scheduling_records_what_one_at_a_time_scheduling_did(
    db: Harness,
) -> None:
    pg = db
    await pg.scheduler.add_host("host-a", zone="zone-1", memory_mb=1 << 20)
    worker = SchedulingWorker(pg.conductor, None)  # type: ignore[arg-type]
    common = {"vm_state": "building", "task_state": "scheduling", "attempts": 0, "host": None}
    common["node"] = None
    one_by_one = await _instances(pg, SCHEDULE_CASES, **common)
    for message in _schedule_messages(one_by_one):
        await worker.schedule(message)

    batched = await _instances(pg, SCHEDULE_CASES, **common)
    msgs = [FakeMsg(m.SerializeToString()) for m in _schedule_messages(batched)]
    await worker._handle_batch(msgs)  # type: ignore[arg-type]

    assert [m.outcome for m in msgs] == ["ack"] * len(msgs)
    expected, got = await _state(pg, one_by_one), await _state(pg, batched)
    assert got == expected
    assert got["new"][:2] == ("building", "spawning")
    assert got["new"][4:6] == ("host-a", 1)
    assert got["new"][7] == "zone-1"
    assert got["too-big"][:2] == ("error", None)
    assert got["retry"][4:6] == ("host-a", 2)
    assert ("loom.compute.host-a.build", "build-placed-1") in got["queued"]
    # Each instance was chosen for once per copy: the second "twice" found it placed.
    assert sum(1 for c in got["queued"] if c[1] == "build-twice-1") == 1


async def _schedule_one_batch(
    pg: Harness, names: list[str], headers: list[dict[str, str]] | None = None
) -> tuple[list[FakeMsg], dict[str, str]]:
    """Instances waiting to be scheduled, one schedule message each, handled as one batch."""
    worker = SchedulingWorker(pg.conductor, None)  # type: ignore[arg-type]
    ids = await _instances(
        pg, {n: {} for n in names}, vm_state="building", task_state="scheduling", attempts=0
    )
    msgs = [
        FakeMsg(
            commands.schedule(ids[n], 1).payload.SerializeToString(),
            headers=headers[i] if headers else None,
        )
        for i, n in enumerate(names)
    ]
    await worker._handle_batch(msgs)  # type: ignore[arg-type]
    return msgs, ids


async def test_a_batch_of_schedule_messages_asks_the_scheduler_in_one_call(pg: Harness) -> None:
    await pg.scheduler.add_host("host-a")
    names = [f"vm-{i}" for i in range(5)]
    msgs, ids = await _schedule_one_batch(pg, names)
    assert [m.outcome for m in msgs] == ["ack"] * 5
    assert (pg.scheduler.calls[BATCH_METHOD], pg.scheduler.decisions) == (1, 5)
    state = await _state(pg, ids)
    assert {state[n][4] for n in names} == {"host-a"}


async def test_a_scheduler_without_batches_is_asked_once_per_message(pg_url: str) -> None:
    async with harness(pg_url, older_scheduler=True) as pg:
        await pg.scheduler.add_host("host-a")
        msgs, ids = await _schedule_one_batch(pg, ["a", "b"])
        assert [m.outcome for m in msgs] == ["ack", "ack"]
        assert (pg.scheduler.calls["SelectDestinations"], pg.scheduler.decisions) == (2, 2)
        state = await _state(pg, ids)
        assert (state["a"][4], state["b"][4]) == ("host-a", "host-a")


async def test_each_build_command_of_a_traced_batch_continues_its_own_messages_trace(
    pg: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(recorded))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    await pg.scheduler.add_host("host-a")
    names = ["a", "b", "c"]
    senders = [tracing.start_span(f"create {n}") for n in names]
    headers = [{"traceparent": tracing.traceparent_of(s) or ""} for s in senders]
    msgs, ids = await _schedule_one_batch(pg, names, headers)
    tracing.end(senders)
    assert [m.outcome for m in msgs] == ["ack"] * 3
    assert pg.scheduler.calls[BATCH_METHOD] == 1

    spans = recorded.get_finished_spans()
    schedule = {
        s.attributes["loom.instance_id"]: s
        for s in spans
        if s.name == "conductor schedule" and s.attributes
    }
    async with pg.sessions() as session:
        sent = dict(
            (await session.execute(select(OutboxMessage.msg_id, OutboxMessage.traceparent))).all()
        )
    for name, sender in zip(names, senders, strict=True):
        mine = schedule[ids[name]]
        assert mine.parent is not None
        assert mine.parent.span_id == sender.get_span_context().span_id
        # The build command queued for it carries its own schedule span, not the batch's.
        ctx = mine.get_span_context()
        assert sent[f"build-{ids[name]}-1"].startswith(
            f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-"
        )
    (batch,) = [s for s in spans if s.name == "conductor select destinations"]
    assert batch.parent is not None
    assert batch.parent.span_id == schedule[ids["a"]].get_span_context().span_id
    assert {link.context.span_id for link in batch.links} == {
        schedule[ids[n]].get_span_context().span_id for n in ("b", "c")
    }


async def test_a_scheduler_outage_naks_the_batch_and_records_nothing(pg: Harness) -> None:
    await pg.scheduler.add_host("host-a")
    await pg.scheduler.stop()
    msgs, ids = await _schedule_one_batch(pg, ["a", "b"])
    assert [m.outcome for m in msgs] == ["nak", "nak"]
    state = await _state(pg, ids)
    assert state["a"][:2] == ("building", "scheduling")
    assert state["queued"] == []


async def test_deleted_events_whose_claim_cannot_be_released_are_retried(pg: Harness) -> None:
    await pg.scheduler.stop()
    consumer = EventConsumer(pg.conductor, None)  # type: ignore[arg-type]
    ids = await _instances(pg, {"a": {}, "b": {}}, task_state="deleting", host="host-1")
    msgs = [
        FakeMsg(_event(ids[n], K.INSTANCE_EVENT_KIND_DELETED).SerializeToString())
        for n in ("a", "b")
    ]
    await consumer._handle_batch(msgs)  # type: ignore[arg-type]
    assert [m.outcome for m in msgs] == ["nak", "nak"]
    state = await _state(pg, ids)
    assert state["a"][3] is False
    assert state["delete finished"] == []
