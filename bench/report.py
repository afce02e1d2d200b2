"""Writing benchmark results: JSON, a readable table, and PNG charts."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import psutil


def machine() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": psutil.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:,.3f}"
    return str(v)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines.append("  ".join("-" * widths[c] for c in columns))
    for r in rows:
        lines.append("  ".join(_fmt(r.get(c, "")).rjust(widths[c]) for c in columns))
    return "\n".join(lines)


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def boot_storm_chart(path: Path, records: list[Any], title: str) -> None:
    """Latency distributions (POST and time-to-ACTIVE) and throughput over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    post = sorted((r.post_end - r.post_start) * 1000 for r in records if r.server_id)
    tta = sorted((r.active_at - r.post_start) * 1000 for r in records if r.status == "ACTIVE")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for values, label in ((post, "POST /servers"), (tta, "time to ACTIVE")):
        if values:
            ax1.plot(values, [i / len(values) for i in range(1, len(values) + 1)], label=label)
    ax1.set_xscale("log")
    ax1.set_xlabel("milliseconds (log)")
    ax1.set_ylabel("fraction of requests")
    ax1.set_title("latency distribution (CDF)")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend()
    if tta:
        t0 = min(r.post_start for r in records if r.server_id)
        active_times = sorted(r.active_at - t0 for r in records if r.status == "ACTIVE")
        gone = sorted(r.gone_at - t0 for r in records if getattr(r, "gone_at", 0) and r.gone_at > 0)
        bin_s = 0.25
        end = max(active_times + gone) if gone else max(active_times)
        bins = [i * bin_s for i in range(int(end / bin_s) + 2)]
        ax2.hist(active_times, bins=bins, label="became ACTIVE", alpha=0.7)
        if gone:
            ax2.hist(gone, bins=bins, label="deleted", alpha=0.7)
        ax2.set_xlabel("seconds since the first POST")
        ax2.set_ylabel(f"servers per {bin_s}s")
        ax2.set_title("throughput over time")
        ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_chart(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for n in sorted({r["servers"] for r in rows}):
        pts = sorted((r["hosts"], r) for r in rows if r["servers"] == n)
        xs = [h for h, _ in pts]
        ax1.plot(xs, [r["cpu_ms_per_boot"] for _, r in pts], marker="o", label=f"N={n}")
        ax2.plot(xs, [r["fleet_peak_rss_mib"] for _, r in pts], marker="o", label=f"N={n}")
    for ax, ylabel in ((ax1, "CPU ms per boot (all processes)"), (ax2, "fleet peak RSS MiB")):
        ax.set_xscale("log")
        ax.set_xlabel("hosts H (log)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
