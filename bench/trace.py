"""`python -m bench trace FILE [--server ID]`: one boot's spans as a tree, from a span file
that Loom's services wrote (`tracing.exporter = "file:FILE"`, `loom up --trace file:FILE`,
`python -m bench boot-storm --trace FILE`).

A boot is the trace holding the scheduling worker's span for the server ("conductor
schedule", attribute loom.instance_id); its length runs from its first span's start to its
last span's end. Without --server the slowest boot is shown. Each line gives the span's
start (ms after the boot's first span), its length, its name, and the process it ran in
(service and pid), so a gap (a message waiting in the outbox or in a stream) shows as a
jump in the start column.

Work done for several boots at once (the scheduling worker asks the scheduler for a whole
batch in one call) is a span in ONE boot's trace with links to the others; in the others
it is shown under the span it links to, marked "shared".
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BOOT_SPAN = "conductor schedule"


@dataclass
class Boot:
    server_id: str
    trace_id: str
    spans: list[dict[str, Any]] = field(default_factory=list)

    @property
    def start(self) -> int:
        return int(min(s["start"] for s in self.spans))

    @property
    def end(self) -> int:
        return int(max(s["end"] for s in self.spans))

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start) / 1e6

    @property
    def processes(self) -> set[tuple[str, int]]:
        return {(s["service"], s["pid"]) for s in self.spans}


def read_spans(path: Path) -> list[dict[str, Any]]:
    """Every span of the file; a line cut short (a process killed mid-write) is skipped."""
    spans = []
    with path.open() as f:
        for line in f:
            try:
                spans.append(json.loads(line))
            except ValueError:
                continue
    return spans


def boots(spans: Iterable[dict[str, Any]]) -> dict[str, Boot]:
    """Boots by server id (the first trace that scheduled each server: its build)."""
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in spans:
        by_trace[s["trace_id"]].append(s)
    found: dict[str, Boot] = {}
    for trace_id, members in by_trace.items():
        for s in members:
            server = s["attributes"].get("loom.instance_id")
            if s["name"] == BOOT_SPAN and server and s["attributes"].get("loom.attempt", 1) == 1:
                found.setdefault(server, Boot(server, trace_id, members))
    return found


def _shared_with(boot: Boot, spans: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Spans of other traces that link to a span of this boot, by the span they link to."""
    mine = {s["span_id"] for s in boot.spans}
    shared: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in spans:
        if s["trace_id"] == boot.trace_id:
            continue
        for link in s.get("links", ()):
            if link["span_id"] in mine:
                shared[link["span_id"]].append(s)
    return shared


def render(spans: list[dict[str, Any]], server: str | None = None) -> str:
    """The tree of one boot (the slowest, or `server`'s), as text."""
    found = boots(spans)
    if not found:
        return "no boot in these spans (no 'conductor schedule' span with loom.instance_id)"
    if server is not None:
        if server not in found:
            return f"no boot of server {server} in these spans"
        boot = found[server]
    else:
        boot = max(found.values(), key=lambda b: b.duration_ms)
    durations = sorted(b.duration_ms for b in found.values())
    lines = [
        f"{len(found)} boots traced; median {durations[len(durations) // 2]:.1f} ms, "
        f"slowest {durations[-1]:.1f} ms",
        f"boot of server {boot.server_id}: {boot.duration_ms:.1f} ms, trace {boot.trace_id}, "
        f"{len(boot.processes)} processes",
        f"{'start ms':>9} {'length ms':>10}  span  [process]",
    ]
    children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    all_children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for s in spans:
        if s["parent_id"] is not None:
            all_children[s["parent_id"]].append(s)
    ids = {s["span_id"] for s in boot.spans}
    for s in boot.spans:
        children[s["parent_id"] if s["parent_id"] in ids else None].append(s)
    shared = _shared_with(boot, spans)
    origin = boot.start

    Tree = dict[str | None, list[dict[str, Any]]]

    def emit(s: dict[str, Any], depth: int, mark: str, kids: Tree) -> None:
        start = (s["start"] - origin) / 1e6
        length = (s["end"] - s["start"]) / 1e6
        lines.append(
            f"{start:9.1f} {length:10.1f}  {'  ' * depth}{s['name']}{mark}"
            f"  [{str(s['service']).removeprefix('loom-')} {s['pid']}]"
        )
        for child in sorted(kids.get(s["span_id"], []), key=lambda c: c["start"]):
            emit(child, depth + 1, mark, kids)
        for other in sorted(shared.get(s["span_id"], []), key=lambda c: c["start"]):
            emit(other, depth + 1, " (shared)", all_children)

    for root in sorted(children[None], key=lambda c: c["start"]):
        emit(root, 0, "", children)
    return "\n".join(lines)
