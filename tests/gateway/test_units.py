"""Pure pieces of the gateway: roles and microversions (tokens: test_tokens.py; validation:
test_validation.py)."""

from __future__ import annotations

import pytest

from gateway.auth.context import expand_roles
from gateway.microversion import Microversion, VersionNotAcceptable, negotiate


def test_admin_implies_member_and_reader() -> None:
    roles = expand_roles([("a", "admin")], {"admin": "a", "member": "m", "reader": "r"})
    assert roles == (("a", "admin"), ("m", "member"), ("r", "reader"))


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({"openstack-api-version": "compute 2.101"}, VersionNotAcceptable),
        ({"x-openstack-nova-api-version": "2.x"}, ValueError),
        ({"openstack-api-version": "compute 02.1"}, ValueError),
    ],
)
def test_bad_microversions_raise(headers: dict[str, str], error: type[Exception]) -> None:
    with pytest.raises(error):
        negotiate(headers)


def test_microversions_compare_numerically_not_as_text() -> None:
    assert Microversion.parse("2.10") > Microversion.parse("2.9")
    assert negotiate({"openstack-api-version": "compute 2.9"}).at_least("2.9")


@pytest.mark.parametrize(
    ("launched", "terminated", "hours"),
    [
        (10, None, 10.0),  # launched inside the period, still running: up to its end
        (-5, None, 20.0),  # launched before the period: counted from its start
        (-5, 4, 4.0),  # terminated inside the period: counted up to then
        (2, 7, 5.0),  # both inside
    ],
    ids=["running", "launched before", "terminated inside", "both inside"],
)
def test_usage_hours_count_only_the_part_of_a_server_s_life_inside_the_period(
    launched: int, terminated: int | None, hours: float
) -> None:
    from datetime import UTC, datetime, timedelta

    from google.protobuf.timestamp_pb2 import Timestamp
    from loom.conductor.v1 import servers_pb2

    from gateway.compute.usage import _server_usage

    start = datetime(2026, 1, 1, tzinfo=UTC)
    stop = start + timedelta(hours=20)

    def stamp(h: int) -> Timestamp:
        ts = Timestamp()
        ts.FromDatetime(start + timedelta(hours=h))
        return ts

    server = servers_pb2.Server(
        id="s1",
        vm_state=servers_pb2.VM_STATE_ACTIVE,
        launched_at=stamp(launched),
        flavor=servers_pb2.FlavorSnapshot(vcpus=2, memory_mb=512, root_gb=1, ephemeral_gb=1),
    )
    if terminated is not None:
        server.terminated_at.CopyFrom(stamp(terminated))
    usage = _server_usage(server, start, stop)
    assert usage["hours"] == hours
    assert usage["local_gb"] == 2
    assert usage["state"] == ("terminated" if terminated is not None else "active")


def test_uptime_text_reads_as_procps_prints_it() -> None:
    from datetime import datetime

    from gateway.compute.uptime_view import uptime_text

    now = datetime(2026, 12, 7, 8, 32, 11)
    up = 93 * 86400 + 18 * 3600 + 25 * 60 + 7
    assert (
        uptime_text(now, up, 1, (0.2, 0.12, 0.14))
        == " 08:32:11 up 93 days, 18:25,  1 user,  load average: 0.20, 0.12, 0.14"
    )
    assert (
        uptime_text(now, 600, 2, (0, 0, 0))
        == " 08:32:11 up 10 min,  2 users,  load average: 0.00, 0.00, 0.00"
    )
