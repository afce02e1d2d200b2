"""The conductor replicas' shared consumers (scheduling, instance events): a message a
conductor took and then died holding goes to another replica soon, not after a minute."""

from __future__ import annotations

import time

from nats.js.api import AckPolicy, ConsumerConfig

from controlplane.conductor import commands, events, scheduling
from controlplane.config import NatsConfig
from controlplane.runtime import bus
from controlplane.runtime.natsserver import NatsServerProcess

CFG = NatsConfig(duplicate_window_s=120)
WITHIN_S = 15.0


async def test_a_schedule_message_held_by_a_conductor_that_died_goes_to_another_one_soon(
    fresh_nats: NatsServerProcess,
) -> None:
    dying = await bus.connect(fresh_nats.url, CFG, "conductor-that-dies")
    survivor = await bus.connect(fresh_nats.url, CFG, "conductor-that-lives")
    try:
        await bus.ensure_streams(survivor.jetstream(), CFG)
        held = await scheduling.subscribe_shared(
            dying.jetstream(), commands.SCHEDULE_SUBJECT, scheduling.DURABLE, bus.CONDUCTOR_STREAM
        )
        other = await scheduling.subscribe_shared(
            survivor.jetstream(),
            commands.SCHEDULE_SUBJECT,
            scheduling.DURABLE,
            bus.CONDUCTOR_STREAM,
        )
        await survivor.jetstream().publish(commands.SCHEDULE_SUBJECT, b"work")
        taken = await held.fetch(1, timeout=5)
        assert taken[0].data == b"work"
        await dying.close()  # the conductor dies holding it, unacked
        died = time.monotonic()
        # Within 15 s (it was a minute: boots stalled that long when a conductor died).
        again = await other.fetch(1, timeout=WITHIN_S)
        assert again[0].data == b"work"
        assert time.monotonic() - died <= WITHIN_S
    finally:
        await survivor.close()
        if not dying.is_closed:
            await dying.close()


async def test_a_consumer_made_by_an_older_conductor_takes_the_shorter_ack_wait(
    fresh_nats: NatsServerProcess,
) -> None:
    nc = await bus.connect(fresh_nats.url, CFG, "conductor-upgraded")
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js, CFG)
        # As conductors made it before: ack_wait 60 s.
        await js.pull_subscribe(
            bus.INSTANCE_EVENT_WILDCARD,
            durable=events.DURABLE,
            stream=bus.EVENTS_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=60.0, max_ack_pending=-1),
        )
        await scheduling.subscribe_shared(
            js, bus.INSTANCE_EVENT_WILDCARD, events.DURABLE, bus.EVENTS_STREAM
        )
        info = await js.consumer_info(bus.EVENTS_STREAM, events.DURABLE)
        assert info.config.ack_wait == scheduling.SHARED_ACK_WAIT_S
        assert info.config.max_ack_pending == -1
    finally:
        await nc.close()
