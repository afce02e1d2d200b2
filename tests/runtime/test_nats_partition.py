"""A client cut off from NATS behind a silent partition (packets dropped both ways, no
connection closed) notices within a few pings, and is back within seconds of the link's
return instead of waiting out TCP's retransmission backoff."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from controlplane.config import NatsConfig
from controlplane.runtime import bus
from controlplane.runtime.natsserver import start_nats_server
from tests.support.partition import Partition
from tests.support.stack import ROOT

pytestmark = pytest.mark.slow

PARTITION_S = 30.0
# After the link returns: a reconnect attempt is due every reconnect_time_wait (0.5 s) and
# gives up after its connect_timeout (5 s), so one gets through within about 6 s.
BACK_WITHIN_S = 12.0

_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from controlplane.config import NatsConfig
    from controlplane.runtime import bus

    async def main() -> None:
        nc = await bus.connect(sys.argv[1], NatsConfig(), "partitioned")
        async def seen(msg) -> None:
            print(msg.data.decode(), flush=True)
        await nc.subscribe("probe", cb=seen)
        await nc.flush()
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_a_client_behind_a_silent_partition_is_back_soon_after_the_link_returns(
    tmp_path: Path,
) -> None:
    server = start_nats_server(tmp_path / "nats")
    partition = Partition(f"loom-probe-{tmp_path.name}")
    child = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-c", _CHILD, server.url],
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'generated'}", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=partition.enter,
    )
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append((time.monotonic(), line.strip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    nc = await bus.connect(server.url, NatsConfig(), "sender")
    try:
        deadline = time.monotonic() + 30
        while not any(text == "ready" for _, text in lines):
            assert time.monotonic() < deadline, "the child never subscribed"
            await asyncio.sleep(0.1)
        assert partition.cut(child.pid, [server.port]) == 1
        cut_at = time.monotonic()
        i = 0
        while time.monotonic() - cut_at < PARTITION_S:
            await nc.publish("probe", f"during-{i}".encode())
            i += 1
            await asyncio.sleep(1.0)
        partition.heal()
        healed_at = time.monotonic()
        back_at = None
        while time.monotonic() - healed_at < 60:
            await nc.publish("probe", b"after")
            await asyncio.sleep(0.25)
            back_at = next((t for t, text in lines if text == "after"), None)
            if back_at is not None:
                break
    finally:
        await nc.close()
        child.kill()
        child.wait()
        reader.join(5)
        if child.stdout is not None:
            child.stdout.close()
        partition.remove()
        server.stop()
    assert back_at is not None, "the client never got a message published after the partition"
    assert back_at - healed_at < BACK_WITHIN_S, f"back {back_at - healed_at:.1f} s after the heal"
