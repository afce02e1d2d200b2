"""Timestamps as Nova prints them.

Formatted from the seconds with `time.strftime` over `time.gmtime`: a list of servers
formats several stamps per server, and going through `datetime` cost several times more.
"""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp


def iso_micro(ts: Timestamp) -> str | None:
    """Microseconds, no zone (launched_at, updated_at of services and actions)."""
    seconds, nanos = ts.seconds, ts.nanos
    if not seconds and not nanos:
        return None
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{nanos // 1000:06d}"


def iso_z(ts: Timestamp) -> str | None:
    """Seconds and a Z (created, updated of servers)."""
    seconds, nanos = ts.seconds, ts.nanos
    if not seconds and not nanos:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
