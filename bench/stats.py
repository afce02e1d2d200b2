"""Percentiles and process resource readings for the benchmark reports."""

from __future__ import annotations

import json
import math
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class ProcessReading:
    name: str
    pid: int
    cpu_s: float
    rss_mib: float
    peak_rss_mib: float


def _peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def read_process(name: str, pid: int) -> ProcessReading | None:
    try:
        proc = psutil.Process(pid)
        cpu = proc.cpu_times()
        return ProcessReading(
            name=name,
            pid=pid,
            cpu_s=cpu.user + cpu.system,
            rss_mib=proc.memory_info().rss / 2**20,
            peak_rss_mib=_peak_rss_mib(pid),
        )
    except psutil.Error:
        return None


def postgres_cpu_s() -> float:
    """CPU seconds of every postgres process on the machine (server and backends)."""
    total = 0.0
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"] and proc.info["name"].startswith("postgres"):
                cpu = proc.cpu_times()
                total += cpu.user + cpu.system
        except psutil.Error:
            continue
    return total


def nats_message_count(monitor_port: int) -> int:
    """Messages the nats-server received so far (in_msgs in /varz)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/varz", timeout=5) as resp:
        return int(json.load(resp)["in_msgs"])


def statement_count(stats_dir: Path) -> int:
    """SQL statements executed by every Loom process that wrote to stats_dir."""
    total = 0
    for path in stats_dir.glob("*.json"):
        try:
            total += int(json.loads(path.read_text())["statements"])
        except (OSError, ValueError, KeyError):
            continue
    return total
