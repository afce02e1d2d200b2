"""Reclaiming soft-deleted servers once reclaim_instance_interval has passed.

With reclaim_instance_interval > 0 a delete only powers a server off (SOFT_DELETED,
deleted_at set); every conductor's `Reclaimer` then deletes, for real, each one soft
deleted longer ago than the interval, through the same delete as the API's forceDelete.
That delete is idempotent per request id (`reclaim-<uuid>`), so several conductors
reclaiming the same server delete it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from controlplane.conductor.context import Conductor
from controlplane.conductor.servers import actions
from controlplane.conductor.states import VmState
from controlplane.db.models import Instance

log = logging.getLogger(__name__)


class Reclaimer:
    def __init__(self, conductor: Conductor, *, interval: float | None = None) -> None:
        self._c = conductor
        self._after = conductor.cfg.conductor.reclaim_instance_interval
        self._interval = interval if interval is not None else min(60.0, max(1.0, self._after / 4))

    async def run_once(self) -> int:
        """Deletes every server soft deleted longer than reclaim_instance_interval ago;
        returns how many it deleted."""
        if self._after <= 0:
            return 0
        due = datetime.now(UTC) - timedelta(seconds=self._after)
        async with self._c.sessions() as session:
            rows = (
                await session.execute(
                    select(Instance.uuid, Instance.user_id)
                    .where(
                        Instance.vm_state == VmState.SOFT_DELETED.value,
                        Instance.task_state.is_(None),
                        Instance.deleted.is_(False),
                        Instance.deleted_at <= due,
                    )
                    .limit(500)
                )
            ).all()
        reclaimed = 0
        for uuid, user_id in rows:
            try:
                await actions.delete_server(
                    self._c,
                    uuid,
                    "",
                    user_id,
                    f"reclaim-{uuid}",
                    override_lock=True,
                    force=True,
                )
                reclaimed += 1
            except Exception as exc:  # one server's failure must not stop the others
                log.warning("reclaim failed: %s", exc, extra={"instance": uuid})
        if reclaimed:
            log.info("reclaimed soft-deleted servers", extra={"count": reclaimed})
        return reclaimed

    async def run(self, stop: asyncio.Event) -> None:
        if self._after <= 0:
            await stop.wait()
            return
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception as exc:  # the database away: the next pass retries
                log.warning("reclaim pass failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
