"""Faults injected at Loom's JetStream consumers, for chaos scenarios (docs/reliability.md,
R3), and the redelivery count every consumer keeps.

Each consumer (the conductor's scheduling and instance-event consumers, each agent's
command consumer) passes what a fetch returned through `BusFaults.apply` before handling
it. With the faults off (the default) that only counts redeliveries. With them on:

- `nats.fault_duplicate`: each fetched message is handled twice in a row, as a second
  delivery of the same message would be (its own ack state, the same reply subject, so a
  second ack or nak reaches JetStream too);
- `nats.fault_drop_before_ack`: that fraction of the fetched messages is handled but its
  acks never reach JetStream (naks and terms do), as if the process had died between the
  effect and the ack; JetStream redelivers it after the consumer's ack_wait
  (`nats.ack_wait_s`, short in the scenario).

The faults sit above the client and below Loom's handlers: every handler, its ack and its
idempotency are exercised as they run in production.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from nats.aio.msg import Msg
from prometheus_client import Counter

from controlplane.config import NatsConfig

REDELIVERED = Counter(
    "loom_bus_redelivered",
    "JetStream messages a consumer fetched that had been delivered before (not acked in "
    "time, or naked), by consumer.",
    ["consumer"],
)
FAULT_DUPLICATED = Counter(
    "loom_bus_fault_duplicated",
    "Messages handled a second time by fault injection (nats.fault_duplicate), by consumer.",
    ["consumer"],
)
FAULT_ACK_DROPPED = Counter(
    "loom_bus_fault_ack_dropped",
    "Messages whose ack fault injection withheld (nats.fault_drop_before_ack), by consumer.",
    ["consumer"],
)


class _AckWithheld(Msg):
    """A delivery whose ack is never sent: JetStream redelivers it after ack_wait."""

    async def ack(self) -> None:
        self._ackd = True


def _copy(msg: Msg, *, withhold_ack: bool) -> Msg:
    fields = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg) if f.name != "_ackd"}
    return (_AckWithheld if withhold_ack else Msg)(**fields)


@dataclass(frozen=True)
class BusFaults:
    """The faults one consumer injects (none by default)."""

    duplicate: bool = False
    drop_before_ack: float = 0.0

    @classmethod
    def from_config(cls, cfg: NatsConfig) -> BusFaults:
        return cls(duplicate=cfg.fault_duplicate, drop_before_ack=cfg.fault_drop_before_ack)

    @property
    def active(self) -> bool:
        return self.duplicate or self.drop_before_ack > 0

    def apply(self, consumer: str, msgs: list[Msg]) -> list[Msg]:
        """What the consumer handles for the messages a fetch returned: the messages
        themselves with the faults off; with them on, each one's copies, in order."""
        redelivered = sum(1 for msg in msgs if _delivered_before(msg))
        if redelivered:
            REDELIVERED.labels(consumer).inc(redelivered)
        if not self.active:
            return msgs
        handled: list[Msg] = []
        for msg in msgs:
            withhold = self.drop_before_ack > 0 and random.random() < self.drop_before_ack
            if withhold:
                FAULT_ACK_DROPPED.labels(consumer).inc()
            handled.append(_copy(msg, withhold_ack=withhold) if withhold else msg)
            if self.duplicate:
                FAULT_DUPLICATED.labels(consumer).inc()
                handled.append(_copy(msg, withhold_ack=withhold))
        return handled


def _delivered_before(msg: Msg) -> bool:
    try:
        return msg.metadata.num_delivered > 1
    except Exception:  # not a JetStream delivery (no metadata in its reply subject)
        return False
