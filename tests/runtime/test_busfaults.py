"""Fault injection at the bus consumers (R3) over a real nats-server: duplicates carry their
own ack state, and a withheld ack makes JetStream deliver the message again."""

from __future__ import annotations

from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from controlplane.config import NatsConfig
from controlplane.runtime import bus
from controlplane.runtime.busfaults import BusFaults
from controlplane.runtime.natsserver import NatsServerProcess
from tests.support.polling import eventually


async def test_faults_handle_each_message_twice_and_a_withheld_ack_brings_it_back(
    fresh_nats: NatsServerProcess,
) -> None:
    nc = await bus.connect(fresh_nats.url, NatsConfig(), "busfaults-test")
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
        await js.publish("t.one", b"1", stream="T")
        sub = await js.pull_subscribe(
            "t.>",
            durable="c",
            stream="T",
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=1.0),
        )
        faults = BusFaults(duplicate=True, drop_before_ack=1.0)
        assert (
            BusFaults.from_config(NatsConfig(fault_duplicate=True, fault_drop_before_ack=1.0))
            == faults
        )

        first = faults.apply("c", await sub.fetch(1, timeout=5))
        assert [m.data for m in first] == [b"1", b"1"]
        assert first[0] is not first[1]
        for m in first:
            await m.ack()  # withheld: nothing reaches JetStream
            assert m.is_acked

        again = await sub.fetch(1, timeout=5)
        assert again[0].data == b"1"
        assert again[0].metadata.num_delivered == 2

        # With the faults off, a message is handled once and its ack is sent.
        clean = BusFaults().apply("c", again)
        assert clean == again
        await clean[0].ack()
        await nc.flush()

        # An ack is a plain publish: the server applies it to the consumer after it has
        # read it, so the consumer's state is polled rather than read once.
        async def settled() -> bool:
            info = await js.consumer_info("T", "c")
            return (info.num_pending, info.num_ack_pending) == (0, 0)

        await eventually(settled, within=5.0, what="the clean ack reaches JetStream")
    finally:
        await nc.close()
