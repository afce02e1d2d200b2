"""The boot storm: N servers through the REST API with C concurrent clients, then deletes.

Two client models:

- ``wait`` (the default): each client boots one server and waits until it is ACTIVE (or
  ERROR) before it boots the next, as ``openstack server create --wait`` does; deletes the
  same way. At most C servers are in flight, so POST latency and time-to-ACTIVE are the
  system's own latencies at that load (Little's law: boots/s = C / (POST + time-to-ACTIVE)).
- ``fire``: each client POSTs as fast as the API answers and never waits; servers queue
  inside Loom, and POST latency is C / boots/s by construction.

Time-to-ACTIVE is measured from the start of each POST to the first poll that sees the
server ACTIVE. One poller reads ``GET /servers/detail?changes-since=…`` every 25 ms, so
the figures carry up to ~25 ms of poll resolution (said in the report). Each poll asks
only for what changed since shortly before the previous poll (``POLL_OVERLAP_S``), and a
full sweep from the start of the phase every ``FULL_SWEEP_S`` catches anything a late
commit could have slipped past the overlap, so the poller never misses a server and its
own cost does not grow with N.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bench.client import CloudEndpoint, ComputeClient

POLL_INTERVAL_S = 0.025
POLL_OVERLAP_S = 0.25
FULL_SWEEP_S = 10.0

ClientModel = Literal["wait", "fire"]
CLIENT_MODELS: tuple[ClientModel, ...] = ("wait", "fire")


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
    settled: asyncio.Event = field(default_factory=asyncio.Event, repr=False)


@dataclass
class StormResult:
    servers: int
    concurrency: int
    client_model: ClientModel = "wait"
    records: list[BootRecord] = field(default_factory=list)
    boot_started: float = 0.0
    boot_finished: float = 0.0
    delete_started: float = 0.0
    delete_finished: float = 0.0
    polls: int = 0
    polled_servers: int = 0

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
            "client_model": self.client_model,
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
            "polls": self.polls,
            "servers_per_poll": self.polled_servers / max(self.polls, 1),
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
    client_model: ClientModel = "wait",
    network_id: str = "",
    timeout_s: float = 600.0,
    progress: bool = True,
    on_boots_done: Callable[[], None] | None = None,
) -> StormResult:
    """Boots, then deletes. on_boots_done, when given, is called between the two phases
    (the benchmark reads its counters there to split boot and delete costs)."""
    run_id = uuid.uuid4().hex[:6]
    prefix = f"bench-{run_id}-"
    result = StormResult(servers=servers, concurrency=concurrency, client_model=client_model)
    records = [BootRecord(index=i) for i in range(servers)]
    result.records = records
    by_id: dict[str, BootRecord] = {}
    wait = client_model == "wait"

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        disable=not progress,
    )

    async def poll_until(
        done: Callable[[], bool], on_server: Callable[[dict[str, Any]], None], since: float
    ) -> None:
        deadline = time.time() + timeout_s
        last_sweep = time.time()
        last_poll = since
        while time.time() < deadline:
            started = time.time()
            if started - last_sweep >= FULL_SWEEP_S:
                window, last_sweep = since, started
            else:
                window = max(since, last_poll - POLL_OVERLAP_S)
            changed = await client.servers_changed_since(_iso(window - 1e-3), f"^{prefix}")
            last_poll = started
            result.polls += 1
            result.polled_servers += len(changed)
            for srv in changed:
                on_server(srv)
            if done():
                return
            await asyncio.sleep(POLL_INTERVAL_S)
        raise TimeoutError("servers did not settle within the timeout")

    async def run_phase(
        todo: list[BootRecord],
        act: Callable[[BootRecord], Any],
        on_server: Callable[[dict[str, Any]], None],
        done: Callable[[], bool],
        since: float,
    ) -> None:
        queue: asyncio.Queue[BootRecord] = asyncio.Queue()
        for rec in todo:
            queue.put_nowait(rec)

        async def worker() -> None:
            while not queue.empty():
                rec = queue.get_nowait()
                rec.settled.clear()
                ok = await act(rec)
                if wait and ok:
                    await rec.settled.wait()

        poller = asyncio.create_task(poll_until(done, on_server, since))
        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        try:
            # The poller ends the phase (or raises on the timeout); workers end before it.
            await poller
            await asyncio.gather(*workers)
        finally:
            for task in (poller, *workers):
                task.cancel()

    with bar:
        posted = bar.add_task("POST /servers", total=servers)
        activated = bar.add_task("ACTIVE", total=servers)

        async def boot(rec: BootRecord) -> bool:
            rec.post_start = time.time()
            try:
                rec.server_id = await client.create_server(
                    f"{prefix}{rec.index}", flavor, image, network_id
                )
                by_id[rec.server_id] = rec
            except Exception as exc:  # a failed request is counted, not fatal
                rec.error = str(exc)
                rec.status = "FAILED"
            rec.post_end = time.time()
            bar.advance(posted)
            return not rec.error

        def on_boot(srv: dict[str, Any]) -> None:
            rec = by_id.get(srv["id"])
            if rec is None or rec.status in ("ACTIVE", "ERROR"):
                return
            if srv["status"] in ("ACTIVE", "ERROR"):
                rec.status = srv["status"]
                rec.active_at = time.time()
                rec.settled.set()
                bar.advance(activated)

        result.boot_started = time.time()
        await run_phase(
            records,
            boot,
            on_boot,
            lambda: all(r.status in ("ACTIVE", "ERROR", "FAILED") for r in records),
            result.boot_started,
        )
        result.boot_finished = max((r.active_at for r in records), default=time.time())
        if on_boots_done is not None:
            on_boots_done()

        deleted = bar.add_task("DELETE", total=len(by_id))

        async def delete(rec: BootRecord) -> bool:
            rec.delete_start = time.time()
            await client.delete_server(rec.server_id)
            return True

        def on_delete(srv: dict[str, Any]) -> None:
            rec = by_id.get(srv["id"])
            if rec is not None and not rec.gone_at and srv["status"] == "DELETED":
                rec.gone_at = time.time()
                rec.settled.set()
                bar.advance(deleted)

        result.delete_started = time.time()
        await run_phase(
            list(by_id.values()),
            delete,
            on_delete,
            lambda: all(r.gone_at for r in by_id.values()),
            result.delete_started,
        )
        result.delete_finished = max((r.gone_at for r in by_id.values()), default=time.time())
    return result


def storm_against(
    endpoint: CloudEndpoint,
    *,
    flavor_name: str,
    image: str,
    servers: int,
    concurrency: int,
    client_model: ClientModel = "wait",
    network_id: str = "",
    progress: bool = True,
    on_boots_done: Callable[[], None] | None = None,
) -> StormResult:
    """One whole storm against the endpoint, with a client of its own (blocking); with
    `network_id`, each server has a port on that network."""

    async def storm() -> StormResult:
        client = ComputeClient(endpoint, max_connections=concurrency + 4)
        try:
            return await run_boot_storm(
                client,
                servers=servers,
                concurrency=concurrency,
                flavor=await client.find_flavor(flavor_name),
                image=image,
                client_model=client_model,
                network_id=network_id,
                progress=progress,
                on_boots_done=on_boots_done,
            )
        finally:
            await client.close()

    return asyncio.run(storm())
