"""The conductor's metrics: how boots end, the outbox backlog, its consumers' lag.

Boots are counted where their outcome is committed (events.py, scheduling.py). The outbox
and the consumer lag are read when /metrics is scraped (controlplane.runtime.metrics): one
short query and two JetStream requests per scrape, whatever the boot rate, and nothing at
all while nobody scrapes. The relay could not give the depth for free: it only sees the
batch it takes, and with several conductors not even every batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from nats.js import JetStreamContext
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.dialect import as_utc as aware
from controlplane.db.models import OutboxMessage
from controlplane.runtime import bus, metrics

BOOTS = Counter(
    "loom_boots",
    "Builds settled by the conductor, by outcome: active (the server runs), rescheduled (a "
    "failed build sent to another host), error (build attempts used up), no_valid_host "
    "(the scheduler found no host).",
    ["outcome"],
)
BOOTS_ACTIVE = BOOTS.labels("active")
BOOTS_RESCHEDULED = BOOTS.labels("rescheduled")
BOOTS_ERROR = BOOTS.labels("error")
BOOTS_NO_VALID_HOST = BOOTS.labels("no_valid_host")

OUTBOX_MESSAGES = "loom_outbox_messages"
OUTBOX_OLDEST_AGE = "loom_outbox_oldest_age_seconds"


def _outbox_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily(OUTBOX_MESSAGES, "Messages committed to the outbox, not yet published."),
        GaugeMetricFamily(
            OUTBOX_OLDEST_AGE,
            "Age of the oldest message in the outbox (0 when it is empty).",
        ),
    )


async def read_outbox(sessions: async_sessionmaker[AsyncSession]) -> list[Metric]:
    """The outbox's depth and the age of its oldest row, in one statement: a count, and the
    oldest row found by its primary key."""
    oldest = select(OutboxMessage.created_at).order_by(OutboxMessage.id).limit(1)
    async with sessions() as session:
        row = (
            await session.execute(select(func.count(OutboxMessage.id), oldest.scalar_subquery()))
        ).one()
    depth, created_at = int(row[0]), row[1]
    age = (datetime.now(UTC) - aware(created_at)).total_seconds() if created_at else 0.0
    messages, oldest_age = _outbox_families()
    messages.add_metric([], depth)
    oldest_age.add_metric([], max(age, 0.0))
    return [messages, oldest_age]


def watch(
    sessions: async_sessionmaker[AsyncSession],
    js: JetStreamContext,
    consumers: Iterable[tuple[str, str]],
) -> Callable[[], None]:
    """Registers the conductor's scrape-time readings: the outbox, and the lag of its durable
    consumers ((stream, durable) pairs). Call on the service's loop; returns the undo."""
    wanted = list(consumers)

    async def outbox() -> list[Metric]:
        return await read_outbox(sessions)

    async def lag() -> list[Metric]:
        rows: list[tuple[str, str, int, int]] = []
        for stream, durable in wanted:
            rows.extend(await bus.consumer_lags(js, stream, [durable]))
        return metrics.consumer_lag_families_of(rows)

    undo = [
        metrics.on_scrape("conductor-outbox", _outbox_families(), outbox),
        metrics.on_scrape("conductor-consumers", metrics.consumer_lag_families(), lag),
    ]

    def remove() -> None:
        for u in undo:
            u()

    return remove
