"""The host uptime an agent reports, formatted as `uptime` prints it."""

from __future__ import annotations

from pathlib import Path

from nodeagent.driver.base import HostUptime
from nodeagent.hostuptime import read_host_uptime


def test_uptime_is_read_from_proc_and_counts_no_users_without_utmp(tmp_path: Path) -> None:
    (tmp_path / "uptime").write_text("350735.47 234388.90\n")
    (tmp_path / "loadavg").write_text("0.20 0.12 0.14 1/385 4242\n")
    up = read_host_uptime(tmp_path, tmp_path / "no-utmp")
    assert up == HostUptime(350735.47, 0.20, 0.12, 0.14, 0)
