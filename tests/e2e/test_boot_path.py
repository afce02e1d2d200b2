"""The boot path across separate processes: conductor, scheduler, a fleet of agents.

Every test runs the real services as processes on a real PostgreSQL database and a
nats-server of its own, with agents on libvirt's test:/// driver.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from tests.e2e.support import (
    OVERCOMMITTED_HOSTS_SQL,
    USAGE_MISMATCH_SQL,
    Client,
    Status,
    db_scalar,
    eventually,
    settle,
    start_boot_path,
    wait_for_hosts,
)
from tests.support.stack import Stack

pytestmark = pytest.mark.slow


async def _boot(
    client: Client, n: int, concurrency: int = 32
) -> tuple[list[str], dict[str, float]]:
    ids: list[str] = []
    started: dict[str, float] = {}
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            t = time.monotonic()
            (sid,) = await client.create(f"e2e-{i}")
            started[sid] = t
            ids.append(sid)

    await asyncio.gather(*(one(i) for i in range(n)))
    return ids, started


async def test_two_hundred_servers_on_twenty_hosts_all_become_active_and_delete_to_zero(
    stack: Stack, client: Client, pg_url: str
) -> None:
    await start_boot_path(stack, client, 20, "e2e")

    t0 = time.monotonic()
    ids, started = await _boot(client, 200)
    active_at: dict[str, float] = {}

    async def all_active() -> bool:
        now = time.monotonic()
        for s in await client.all_servers():
            if s.status == Status.SERVER_STATUS_ACTIVE and s.id not in active_at:
                active_at[s.id] = now
            assert s.status != Status.SERVER_STATUS_ERROR, s.fault.message
        return len(active_at) == 200

    await eventually(all_active, 120, "200 servers ACTIVE", every=0.05)
    elapsed = max(active_at.values()) - t0
    servers = await client.all_servers()
    assert len({s.host for s in servers}) == 20, "the spread weigher uses every host"
    assert db_scalar(pg_url, "SELECT count(*) FROM allocations") == 200
    tta = [active_at[i] - started[i] for i in ids]
    print(
        f"\n200 boots on 20 hosts: {200 / elapsed:.1f} boots/s, "
        f"time-to-ACTIVE p50 {statistics.median(tta) * 1000:.0f} ms"
    )

    await asyncio.gather(*(client.delete(i) for i in ids))

    async def all_gone() -> bool:
        return not await client.all_servers()

    await eventually(all_gone, 120, "every server deleted")
    assert db_scalar(pg_url, "SELECT count(*) FROM allocations") == 0
    used = "SELECT coalesce(sum(vcpu_used + memory_mb_used + disk_gb_used + allocation_count), 0)"
    assert db_scalar(pg_url, f"{used} FROM resource_providers") == 0
    deleted = await client.all_servers(include_deleted=True)
    assert {s.status for s in deleted} == {Status.SERVER_STATUS_DELETED}


async def test_a_claim_storm_on_two_schedulers_places_exactly_what_fits(
    stack: Stack, pg_url: str
) -> None:
    from controlplane.runtime.natsserver import free_port

    # Six hosts of 34,816 MiB hold exactly 50 servers of 1,024 MiB each at ratio 1.5 with
    # 512 MiB reserved: (34816 * 1.5 - 512) / 1024 = 50.5.
    db_flavor = "UPDATE flavors SET memory_mb = 1024 WHERE flavorid = '1'"
    from sqlalchemy import create_engine, text

    from controlplane.config import sync_database_url

    engine = create_engine(sync_database_url(pg_url))
    with engine.begin() as conn:
        conn.execute(text(db_flavor))
    engine.dispose()
    stack.extra_env["LOOM_AGENT__SIM_MEMORY_MB"] = "34816"

    second_scheduler = f"127.0.0.1:{free_port()}"
    second_conductor = f"127.0.0.1:{free_port()}"
    stack.start("scheduler")
    stack.start("conductor")
    stack.extra_env["LOOM_SCHEDULER__LISTEN"] = second_scheduler
    stack.start("scheduler#2")
    stack.extra_env["LOOM_CONDUCTOR__LISTEN"] = second_conductor
    stack.start("conductor#2")
    stack.extra_env.pop("LOOM_SCHEDULER__LISTEN")
    stack.extra_env.pop("LOOM_CONDUCTOR__LISTEN")
    stack.start("agent", "--simulate", "6", "--host-prefix", "storm")
    await wait_for_hosts(stack, 6)

    clients = [Client.connect(stack.conductor_target), Client.connect(second_conductor)]
    try:
        await clients[0].unlimited_quota()
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> str:
            async with sem:
                (sid,) = await clients[i % 2].create(f"storm-{i}")
                return sid

        ids = set(await asyncio.gather(*(one(i) for i in range(500))))
        servers = await settle(clients[0], ids, within=240)
    finally:
        for c in clients:
            await c.close()

    by_status = [s.status for s in servers.values()]
    assert by_status.count(Status.SERVER_STATUS_ACTIVE) == 300
    errors = [s for s in servers.values() if s.status == Status.SERVER_STATUS_ERROR]
    assert len(errors) == 200
    assert all("No valid host" in s.fault.message for s in errors)
    assert db_scalar(pg_url, OVERCOMMITTED_HOSTS_SQL) == 0
    assert db_scalar(pg_url, USAGE_MISMATCH_SQL) == 0
    assert db_scalar(pg_url, "SELECT count(*) FROM allocations") == 300
