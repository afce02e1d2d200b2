"""A host's uptime as procps' `uptime` prints it, the string Nova's uptime API returns."""

from __future__ import annotations

from datetime import datetime


def uptime_text(
    now: datetime, uptime_s: float, users: int, load: tuple[float, float, float]
) -> str:
    """E.g. " 08:32:11 up 93 days, 18:25,  1 user,  load average: 0.20, 0.12, 0.14"."""
    total_min = int(uptime_s) // 60
    days, rest = divmod(total_min, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = []
    if days:
        parts.append(f"{days} day{'s' if days != 1 else ''}")
    parts.append(f"{hours:2d}:{minutes:02d}" if hours else f"{minutes} min")
    who = f"{users} user{'s' if users != 1 else ''}"
    averages = ", ".join(f"{x:.2f}" for x in load)
    return f" {now:%H:%M:%S} up {', '.join(parts)},  {who},  load average: {averages}"
