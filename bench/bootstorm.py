"""The boot storm: N servers through the REST API with C concurrent clients, then deletes.

Time-to-ACTIVE is measured from the start of each POST to the first poll that sees the
server ACTIVE; one poller reads `GET /servers/detail?changes-since=…` every 25 ms, so the
figures carry up to ~25 ms of poll resolution (said in the report).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bench.client import ComputeClient

POLL_INTERVAL_S = 0.025


@dataclass
class BootRecord:
    index: int
    post_start: float = 0.0
    post_end: float = 0.0
    server_id: str = ""
    active_at: float = 0.0
    status: str = ""
    delete_start: float = 0.0
    gone_at: float = 0.0
    error: str = ""


@dataclass
class StormResult:
    servers: int
    concurrency: int
    records: list[BootRecord] = field(default_factory=list)
    boot_started: float = 0.0
    boot_finished: float = 0.0
    delete_started: float = 0.0
    delete_finished: float = 0.0

    def summary(self) -> dict[str, Any]:
        from bench.stats import percentile

        ok = [r for r in self.records if r.status == "ACTIVE"]
        post_ms = [(r.post_end - r.post_start) * 1000 for r in self.records if r.server_id]
        tta_ms = [(r.active_at - r.post_start) * 1000 for r in ok]
        gone = [r for r in self.records if r.gone_at]
        boot_span = max(self.boot_finished - self.boot_started, 1e-9)
        delete_span = max(self.delete_finished - self.delete_started, 1e-9)
        return {
            "servers": self.servers,
            "concurrency": self.concurrency,
            "active": len(ok),
            "error": sum(1 for r in self.records if r.status == "ERROR"),
            "failed_requests": sum(1 for r in self.records if r.error),
            "boots_per_s": len(ok) / boot_span,
            "deletes_per_s": len(gone) / delete_span,
            "post_ms_p50": percentile(post_ms, 50),
            "post_ms_p99": percentile(post_ms, 99),
            "tta_ms_p50": percentile(tta_ms, 50),
            "tta_ms_p99": percentile(tta_ms, 99),
            "boot_wall_s": boot_span,
            "delete_wall_s": delete_span,
            "poll_resolution_ms": POLL_INTERVAL_S * 1000,
        }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def run_boot_storm(
    client: ComputeClient,
    *,
    servers: int,
    concurrency: int,
    flavor: str,
    image: str,
    timeout_s: float = 600.0,
    progress: bool = True,
) -> StormResult:
    run_id = uuid.uuid4().hex[:6]
    prefix = f"bench-{run_id}-"
    result = StormResult(servers=servers, concurrency=concurrency)
    records = [BootRecord(index=i) for i in range(servers)]
    result.records = records
    by_id: dict[str, BootRecord] = {}
    queue: asyncio.Queue[BootRecord] = asyncio.Queue()
    for r in records:
        queue.put_nowait(r)

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        disable=not progress,
    )
    with bar:
        posted = bar.add_task("POST /servers", total=servers)
        activated = bar.add_task("ACTIVE", total=servers)

        async def boot_worker() -> None:
            while True:
                try:
                    rec = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                rec.post_start = time.time()
                try:
                    rec.server_id = await client.create_server(
                        f"{prefix}{rec.index}", flavor, image
                    )
                    by_id[rec.server_id] = rec
                except Exception as exc:  # a failed request is counted, not fatal
                    rec.error = str(exc)
                    rec.status = "FAILED"
                rec.post_end = time.time()
                bar.advance(posted)

        async def poll_until(predicate_done: Any, on_server: Any, since: float) -> None:
            deadline = time.time() + timeout_s
            while time.time() < deadline:
                for srv in await client.servers_changed_since(_iso(since - 1), f"^{prefix}"):
                    on_server(srv)
                if predicate_done():
                    return
                await asyncio.sleep(POLL_INTERVAL_S)
            raise TimeoutError("servers did not settle within the timeout")

        def on_boot(srv: dict[str, Any]) -> None:
            rec = by_id.get(srv["id"])
            if rec is None or rec.status in ("ACTIVE", "ERROR"):
                return
            if srv["status"] in ("ACTIVE", "ERROR"):
                rec.status = srv["status"]
                rec.active_at = time.time()
                bar.advance(activated)

        def boots_done() -> bool:
            return all(r.status in ("ACTIVE", "ERROR", "FAILED") for r in records)

        result.boot_started = time.time()
        workers = [asyncio.create_task(boot_worker()) for _ in range(concurrency)]
        await poll_until(boots_done, on_boot, result.boot_started)
        await asyncio.gather(*workers)
        result.boot_finished = max((r.active_at for r in records), default=time.time())

        deleted = bar.add_task("DELETE", total=len(by_id))
        del_queue: asyncio.Queue[BootRecord] = asyncio.Queue()
        for rec in by_id.values():
            del_queue.put_nowait(rec)

        async def delete_worker() -> None:
            while True:
                try:
                    rec = del_queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                rec.delete_start = time.time()
                await client.delete_server(rec.server_id)

        def on_delete(srv: dict[str, Any]) -> None:
            rec = by_id.get(srv["id"])
            if rec is not None and not rec.gone_at and srv["status"] == "DELETED":
                rec.gone_at = time.time()
                bar.advance(deleted)

        result.delete_started = time.time()
        del_workers = [asyncio.create_task(delete_worker()) for _ in range(concurrency)]
        await poll_until(
            lambda: all(r.gone_at for r in by_id.values()), on_delete, result.delete_started
        )
        await asyncio.gather(*del_workers)
        result.delete_finished = max((r.gone_at for r in by_id.values()), default=time.time())
    return result
