"""Timestamps as Nova prints them."""

from __future__ import annotations

from datetime import UTC

from google.protobuf.timestamp_pb2 import Timestamp


def iso_micro(ts: Timestamp) -> str | None:
    """Microseconds, no zone (launched_at, updated_at of services and actions)."""
    if not ts.seconds and not ts.nanos:
        return None
    return str(ts.ToDatetime(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f"))


def iso_z(ts: Timestamp) -> str | None:
    """Seconds and a Z (created, updated of servers)."""
    if not ts.seconds and not ts.nanos:
        return None
    return str(ts.ToDatetime(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
