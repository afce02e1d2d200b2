"""Offloading shelved servers once shelved_offload_time has passed.

With shelved_offload_time 0 the offload follows the shelve at once (the event consumer
queues it); -1 never offloads; a positive value lets a shelved server keep its host that
many seconds, after which every conductor's `ShelvedOffloader` offloads it. Taking one over
is ONE guarded UPDATE (shelved, no task → shelving_offloading) committed with the offload
command, so with several conductors exactly one acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from controlplane.conductor import commands, outbox
from controlplane.conductor.context import Conductor
from controlplane.conductor.events import AUTO_OFFLOAD
from controlplane.conductor.states import TaskState, VmState
from controlplane.db.models import Instance

log = logging.getLogger(__name__)


class ShelvedOffloader:
    def __init__(self, conductor: Conductor, *, interval: float | None = None) -> None:
        self._c = conductor
        self._after = conductor.cfg.conductor.shelved_offload_time
        self._interval = interval if interval is not None else min(60.0, max(1.0, self._after / 4))

    async def run_once(self) -> int:
        """Queues the offload of every server shelved for longer than shelved_offload_time;
        returns how many it took over."""
        if self._after <= 0:
            return 0
        due = datetime.now(UTC) - timedelta(seconds=self._after)
        taken = 0
        async with self._c.sessions() as session:
            rows = (
                await session.execute(
                    select(Instance.id, Instance.uuid, Instance.host, Instance.shelved_at)
                    .where(
                        Instance.vm_state == VmState.SHELVED.value,
                        Instance.task_state.is_(None),
                        Instance.deleted.is_(False),
                        Instance.host.is_not(None),
                        Instance.shelved_at <= due,
                    )
                    .limit(500)
                )
            ).all()
            for row in rows:
                result = await session.execute(
                    update(Instance)
                    .where(
                        Instance.id == row.id,
                        Instance.vm_state == VmState.SHELVED.value,
                        Instance.task_state.is_(None),
                        Instance.host == row.host,
                    )
                    .values(
                        task_state=TaskState.SHELVING_OFFLOADING.value,
                        updated_at=datetime.now(UTC),
                    )
                )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                stamp = int(row.shelved_at.timestamp()) if row.shelved_at else 0
                await outbox.add(
                    session,
                    commands.simple(
                        "shelve_offload", str(row.host), row.uuid, f"{AUTO_OFFLOAD}timer-{stamp}"
                    ),
                )
                taken += 1
            await session.commit()
        if taken:
            self._c.wakeup.set()
            log.info("offloading shelved servers", extra={"count": taken})
        return taken

    async def run(self, stop: asyncio.Event) -> None:
        if self._after <= 0:
            # Nothing to time; still a worker that ends only with the others.
            await stop.wait()
            return
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception as exc:  # the database away: the next pass retries
                log.warning("shelved-offload pass failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
