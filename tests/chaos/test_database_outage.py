"""R5: PostgreSQL goes away while Loom works. During the outage the API answers 503 with
Retry-After, never another 5xx; every server accepted (202) before it is ACTIVE after it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from bench.client import CloudEndpoint, resolve_cloud
from tests.chaos.conftest import Report, scale
from tests.chaos.support import lift_quotas, public_image
from tests.e2e.support import wait_for_hosts
from tests.support.private_postgres import PrivatePostgres
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

HOSTS = 3


def _h(cloud: CloudEndpoint) -> dict[str, str]:
    return {"X-Auth-Token": cloud.token, "OpenStack-API-Version": "compute 2.37"}


async def _server_status(http: httpx.AsyncClient, member: CloudEndpoint, sid: str) -> str:
    r = await http.get(f"{member.compute_url}/servers/{sid}", headers=_h(member))
    return str(r.json()["server"]["status"]) if r.status_code == 200 else f"HTTP {r.status_code}"


async def test_r5_a_database_outage_answers_503_with_retry_after_and_loses_no_accepted_boot(
    chaos_stack: Stack, private_pg: PrivatePostgres, chaos_report: Report
) -> None:
    stack = chaos_stack
    stack.start("scheduler")
    stack.start("conductor")
    stack.start("agent", "--simulate", str(HOSTS), "--host-prefix", "chaos")
    stack.start("gateway")
    await wait_for_hosts(stack, HOSTS)
    clouds = stack.data_dir / "clouds.yaml"
    member = resolve_cloud("loom", clouds)
    admin = resolve_cloud("loom-admin", clouds)
    boots = scale(12, 200)
    outage_s = scale(6, 20)

    async with httpx.AsyncClient(timeout=60) as http:
        image = await public_image(http, stack, admin, "chaos")
        await lift_quotas(http, admin, member.project_id)
        body: dict[str, Any] = {
            "server": {"name": "r5", "imageRef": image, "flavorRef": "1", "networks": "none"}
        }

        async def create() -> httpx.Response:
            return await http.post(f"{member.compute_url}/servers", json=body, headers=_h(member))

        accepted: list[str] = []
        for start in range(0, boots, 16):
            replies = await asyncio.gather(*(create() for _ in range(min(16, boots - start))))
            assert [r.status_code for r in replies] == [202] * len(replies)
            accepted += [r.json()["server"]["id"] for r in replies]

        # The outage starts while most of those builds are still on their way.
        private_pg.stop("immediate")
        began = time.monotonic()
        codes: Counter[int] = Counter()
        without_retry_after = 0
        probes = 0
        while time.monotonic() - began < outage_s:
            for request in (
                http.get(f"{member.compute_url}/servers/detail", headers=_h(member)),
                http.get(f"{member.compute_url}/servers/{accepted[0]}", headers=_h(member)),
                create(),
            ):
                r = await request
                probes += 1
                codes[r.status_code] += 1
                if r.status_code == 503 and "retry-after" not in r.headers:
                    without_retry_after += 1
            await asyncio.sleep(0.2)
        private_pg.start()
        back = time.monotonic()

        settled: dict[str, str] = {}
        while time.monotonic() - back < 180 and len(settled) < len(accepted):
            for sid in accepted:
                if sid not in settled:
                    status = await _server_status(http, member, sid)
                    if status in ("ACTIVE", "ERROR"):
                        settled[sid] = status
            await asyncio.sleep(1)
        recovered_s = time.monotonic() - back
        final = Counter(settled.values())
        unsettled = Counter(
            [await _server_status(http, member, sid) for sid in accepted if sid not in settled]
        )
        # Creates that got a 202 during the outage (if any did) must build too.
        late = codes[202]

    other_5xx = sum(n for code, n in codes.items() if code >= 500 and code != 503)
    figures = {
        "hosts": HOSTS,
        "accepted_before_outage": len(accepted),
        "outage_s": outage_s,
        "requests_during_outage": probes,
        "status_during_outage": {str(k): v for k, v in sorted(codes.items())},
        "answers_503_without_retry_after": without_retry_after,
        "other_5xx_during_outage": other_5xx,
        "active_after": final["ACTIVE"],
        "error_after": final["ERROR"],
        "lost": len(accepted) - len(settled),
        "unsettled_by_status": dict(unsettled),
        "accepted_during_outage": late,
        "settled_within_s_of_restart": round(recovered_s, 1),
    }
    chaos_report.add("R5", figures)
    assert other_5xx == 0, figures
    assert without_retry_after == 0, figures
    assert codes[503] > 0, figures  # the outage was seen, not slept through
    assert figures["lost"] == 0, figures["unsettled_by_status"]
    assert final["ACTIVE"] == len(accepted), figures
