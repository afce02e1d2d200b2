"""Builds stranded on a host that went down.

A build whose host stops beating never gets an answer: no BUILD_SUCCEEDED, no BUILD_FAILED.
Every conductor runs `StrandedBuilds`, which now and then treats such a build as failed on
that host: the claim there is released, the host joins failed_hosts, and the server is
rescheduled (within max_build_attempts) or put in ERROR with a fault naming the host.

Taking it over is ONE conditional UPDATE (spawning → scheduling, on the same host and
attempt), so with several conductors exactly one acts, and a BUILD_SUCCEEDED arriving later
from the host matches nothing (the event consumer then sends that host a delete). The rest
— release, then reschedule or ERROR plus a delete for the host — is safe to repeat: a
conductor that died half-way leaves the server "scheduling with a host", which the next
pass finishes, whether or not the host is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, or_, select, update

from controlplane.conductor import commands, outbox
from controlplane.conductor.context import Conductor
from controlplane.conductor.convert import make_fault
from controlplane.conductor.scheduling import record_event
from controlplane.conductor.states import TaskState, VmState
from controlplane.db.models import Instance

log = logging.getLogger(__name__)

# Builds: of a new server, and of an offloaded one being unshelved.
_BUILDS = (VmState.BUILDING.value, VmState.SHELVED_OFFLOADED.value)


@dataclass(frozen=True)
class StrandedBuild:
    """A build attempt that waits on a host that will not answer."""

    instance_id: int
    uuid: str
    host: str
    attempt: int
    taken_over: bool  # already moved to scheduling by a conductor that did not finish


class StrandedBuilds:
    def __init__(self, conductor: Conductor, *, interval: float | None = None) -> None:
        self._c = conductor
        down_after = conductor.cfg.scheduler.service_down_time
        # Often enough that a stranded build waits little beyond service_down_time itself.
        self._interval = interval if interval is not None else min(10.0, down_after / 3)

    async def find(self) -> list[StrandedBuild]:
        """Spawning on a host that is down, or half taken over (scheduling with a host) for
        longer than one pass."""
        now = datetime.now(UTC)
        # Which hosts are down is the scheduler's to say (it owns host liveness); when it
        # cannot be asked, no build counts as stranded on a down host this pass.
        down = await self._c.scheduler.down_hosts() or set()
        spawning_on_down_host = and_(
            Instance.task_state == TaskState.SPAWNING.value,
            Instance.host.in_(sorted(down)),
        )
        half_taken_over = and_(
            Instance.task_state == TaskState.SCHEDULING.value,
            Instance.updated_at < now - timedelta(seconds=self._interval),
        )
        async with self._c.sessions() as session:
            rows = await session.execute(
                select(
                    Instance.id,
                    Instance.uuid,
                    Instance.host,
                    Instance.attempts,
                    Instance.task_state,
                ).where(
                    Instance.deleted.is_(False),
                    Instance.vm_state.in_(_BUILDS),
                    Instance.host.is_not(None),
                    or_(spawning_on_down_host, half_taken_over),
                )
            )
            return [
                StrandedBuild(
                    r.id, r.uuid, str(r.host), r.attempts, r.task_state == TaskState.SCHEDULING
                )
                for r in rows
            ]

    async def fail_build(self, build: StrandedBuild) -> bool:
        """Settles one stranded build as failed on its host. False when another conductor,
        a late event or a delete got there first (nothing done)."""
        c = self._c
        guard = (
            Instance.id == build.instance_id,
            Instance.deleted.is_(False),
            Instance.vm_state.in_(_BUILDS),
            Instance.host == build.host,
            Instance.attempts == build.attempt,
        )
        async with c.sessions() as session:
            if not build.taken_over:
                taken = await session.execute(
                    update(Instance)
                    .where(*guard, Instance.task_state == TaskState.SPAWNING.value)
                    .values(task_state=TaskState.SCHEDULING.value, updated_at=datetime.now(UTC))
                )
                if taken.rowcount != 1:  # type: ignore[attr-defined]
                    await session.rollback()
                    return False
                await session.commit()
            # Before the reschedule is queued: a claim still held on the dead host would be
            # handed back by SelectDestinations (claims are keyed by consumer). The scheduler
            # releases exactly once; a repeat answers "nothing held".
            await c.scheduler.release(
                f"hostdown-{build.uuid}-{build.attempt}-release", build.uuid, build.host
            )
            inst = (await session.execute(select(Instance).where(*guard))).scalar_one_or_none()
            if inst is None or inst.task_state != TaskState.SCHEDULING:
                await session.rollback()
                return False
            failed = [*(str(h) for h in inst.failed_hosts or []), build.host]
            reason = (
                f"Compute host {build.host} went down (no heartbeat for "
                f"{c.cfg.scheduler.service_down_time} s, or forced down) while building "
                f"instance {build.uuid}."
            )
            now = datetime.now(UTC)
            if build.attempt < c.cfg.conductor.max_build_attempts:
                values: dict[str, object] = {"host": None, "node": None}
                follow_up = [commands.schedule(build.uuid, build.attempt + 1)]
            else:
                text = (
                    f"Build of instance {build.uuid} aborted: exceeded maximum number of build "
                    f"attempts ({c.cfg.conductor.max_build_attempts}). Last failure: {reason}"
                )
                values = {
                    "host": None,
                    "node": None,
                    "vm_state": VmState.ERROR.value,
                    "task_state": None,
                    "fault": make_fault(500, text),
                }
                follow_up = []
            settled = await session.execute(
                update(Instance)
                .where(*guard, Instance.task_state == TaskState.SCHEDULING.value)
                .values(failed_hosts=failed, alternates=[], updated_at=now, **values)
            )
            if settled.rowcount != 1:  # type: ignore[attr-defined]
                await session.rollback()
                return False
            unshelving = inst.vm_state == VmState.SHELVED_OFFLOADED
            await record_event(
                session,
                build.uuid,
                "unshelve" if unshelving else "create",
                "compute_unshelve_instance" if unshelving else "compute_build_and_run_instance",
                "Error",
                host=build.host,
                details=reason,
            )
            # Whatever the host built before it went quiet must not run when it returns.
            await outbox.add(session, commands.delete(build.host, build.uuid), *follow_up)
            await session.commit()
        c.wakeup.set()
        log.warning(
            "build stranded on a down host %s",
            "rescheduled" if follow_up else "put in ERROR",
            extra={"instance": build.uuid, "host": build.host, "attempt": build.attempt},
        )
        return True

    async def run_once(self) -> int:
        """One pass; returns how many builds it settled."""
        settled = 0
        for build in await self.find():
            try:
                settled += await self.fail_build(build)
            except Exception as exc:  # scheduler or database away: the next pass retries
                log.warning(
                    "stranded build not settled yet: %s", exc, extra={"instance": build.uuid}
                )
        return settled

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception as exc:
                log.warning("stranded-build pass failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
