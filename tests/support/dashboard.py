"""The Grafana dashboard in docs/ and the metric names its queries use."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-loom.json"
# Loom's own metrics, and the process ones prometheus-client exports in every service.
METRIC_PREFIXES = ("loom_", "process_", "python_")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# A selector: a name followed by {matchers} or [range].
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]")
_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def expressions(dashboard: dict[str, Any] | None = None) -> Iterator[str]:
    """Every PromQL expression of every panel, rows' nested panels included."""
    dash = dashboard if dashboard is not None else json.loads(DASHBOARD.read_text())

    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield str(target["expr"])
            yield from walk(panel.get("panels", []))

    yield from walk(dash["panels"])


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads. Raises ValueError on a selector whose metric
    is not one of Loom's prefixes (a name this check could not vouch for)."""
    for name in _SELECTOR.findall(expr):
        if not name.startswith(METRIC_PREFIXES):
            raise ValueError(f"{expr!r} selects {name!r}, which no Loom service exports")
    return {n for n in _NAME.findall(expr) if n.startswith(METRIC_PREFIXES)}


def dashboard_metric_names() -> set[str]:
    return {name for expr in expressions() for name in metric_names(expr)}


def exported(name: str, families: set[str]) -> bool:
    """Whether a sample name (loom_boots_total, loom_x_seconds_bucket) belongs to one of the
    metric families (as prometheus-client names them: counters without _total)."""
    if name in families:
        return True
    return any(name.endswith(s) and name[: -len(s)] in families for s in _SUFFIXES)
