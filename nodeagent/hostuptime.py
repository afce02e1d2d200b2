"""The host's uptime, load averages and users, as `uptime` prints them: from /proc/uptime,
/proc/loadavg and utmp (the gateway formats the line)."""

from __future__ import annotations

import struct
from pathlib import Path

from nodeagent.driver.base import HostUptime

# glibc's struct utmp on Linux: 384 bytes, ut_type (a short, padded to 4) first.
_UTMP_RECORD = 384
_USER_PROCESS = 7


def read_host_uptime(proc: Path = Path("/proc"), utmp: Path = Path("/var/run/utmp")) -> HostUptime:
    """Seconds since boot, load averages and logged-in users (0 when utmp is absent)."""
    uptime_s = float((proc / "uptime").read_text().split()[0])
    load = (proc / "loadavg").read_text().split()
    return HostUptime(
        uptime_s=uptime_s,
        load_1=float(load[0]),
        load_5=float(load[1]),
        load_15=float(load[2]),
        users=_count_users(utmp),
    )


def _count_users(utmp: Path) -> int:
    try:
        data = utmp.read_bytes()
    except OSError:
        return 0
    count = 0
    for offset in range(0, len(data) - _UTMP_RECORD + 1, _UTMP_RECORD):
        (kind,) = struct.unpack_from("<h", data, offset)
        if kind == _USER_PROCESS:
            count += 1
    return count
