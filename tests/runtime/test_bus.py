"""The NATS bus: streams exist, and a resent message id is a no-op."""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.js.api import StorageType

from controlplane.runtime import bus


async def test_jetstream_drops_a_resend_with_the_same_message_id(nc: NATS) -> None:
    js = nc.jetstream()
    subject = bus.compute_subject("dedup-host", "build")
    first = await js.publish(subject, b"x", headers={"Nats-Msg-Id": "cmd-1"})
    again = await js.publish(subject, b"x", headers={"Nats-Msg-Id": "cmd-1"})
    assert not first.duplicate
    assert again.duplicate
    assert again.seq == first.seq


async def test_every_loom_stream_exists_and_is_file_backed(nc: NATS) -> None:
    js = nc.jetstream()
    for name in (bus.COMPUTE_STREAM, bus.CONDUCTOR_STREAM, bus.EVENTS_STREAM, bus.INVENTORY_STREAM):
        info = await js.stream_info(name)
        assert info.config.storage == StorageType.FILE


def test_host_names_that_would_break_subjects_are_refused() -> None:
    assert bus.valid_host_name("compute-01")
    for bad in ("", "a.b", "a b", "a*", "a>"):
        assert not bus.valid_host_name(bad)
