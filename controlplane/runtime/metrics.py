"""Prometheus metrics every Loom service shares: the `/metrics` endpoint and readings taken
at scrape time.

`serve_metrics` (called once per process by `loom <service>`) serves prometheus-client's
default registry over HTTP from a daemon thread. Counters and histograms are updated where
the work happens (prometheus-client objects, safe from any thread). Values that cost a
query to know (outbox depth, JetStream consumer lag, hosts down) are read only when scraped:
`on_scrape` registers a coroutine that the scraping thread runs on the service's own event
loop, with a deadline, so nothing is read while nobody scrapes and a slow read never blocks
the service (a reading that misses its deadline is left out of that scrape).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import REGISTRY, disable_created_metrics, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# The *_created series would double every counter's and histogram's series; no Loom panel
# or alert reads them (rate() over a counter needs no start time).
disable_created_metrics()  # type: ignore[no-untyped-call]

# Latency buckets (seconds) for every Loom histogram: 1 ms to 10 s, thirteen bounds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# How long one scrape waits for the readings taken on the service's loop.
READ_DEADLINE_S = 3.0


class MetricsListenError(Exception):
    """The metrics endpoint could not listen where it was told to."""


@dataclass(frozen=True)
class MetricsEndpoint:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"


def split_listen(listen: str) -> tuple[str, int]:
    """("127.0.0.1", 9181) from "127.0.0.1:9181" ("[::1]:9181" for IPv6)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{listen!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve_metrics(service: str, listen: str) -> MetricsEndpoint | None:
    """Serves /metrics at `listen` (port 0 picks a free one) from a daemon thread; None when
    `listen` is empty (turned off). Logs where it listens. Raises MetricsListenError when
    the address is taken or invalid."""
    if not listen:
        log.info("metrics endpoint off", extra={"service": service})
        return None
    try:
        host, port = split_listen(listen)
        server, _thread = start_http_server(port, addr=host)
    except (OSError, ValueError) as exc:
        raise MetricsListenError(f"metrics endpoint of {service} at {listen}: {exc}") from exc
    endpoint = MetricsEndpoint(host, int(server.server_port))
    log.info("metrics", extra={"service": service, "url": endpoint.url})
    return endpoint


# ---------------------------------------------------------------------- scrape-time readings

Reading = Callable[[], Awaitable[Iterable[Metric]]]


@dataclass(frozen=True)
class _Registered:
    loop: asyncio.AbstractEventLoop
    loop_thread: int
    read: Reading
    # The families this reading yields, without samples: described at registration and
    # announced on every scrape, so a family is listed even while its reading fails.
    families: tuple[Metric, ...]


class ScrapeReadings(Collector):
    """Metric families read by coroutines on their service's event loop, once per scrape."""

    def __init__(self) -> None:
        self._readings: dict[str, _Registered] = {}
        self._lock = threading.Lock()

    def add(self, name: str, families: Sequence[Metric], read: Reading) -> Callable[[], None]:
        """Registers (or replaces) the reading `name`; call from the service's event loop.
        Returns a function that removes it again."""
        entry = _Registered(
            asyncio.get_running_loop(), threading.get_ident(), read, tuple(families)
        )
        with self._lock:
            self._readings[name] = entry

        def remove() -> None:
            with self._lock:
                if self._readings.get(name) is entry:
                    del self._readings[name]

        return remove

    def describe(self) -> Iterable[Metric]:
        with self._lock:
            entries = list(self._readings.values())
        return [family for entry in entries for family in entry.families]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            entries = list(self._readings.values())
        out: list[Metric] = []
        for entry in entries:
            read = self._read(entry)
            if read is None:
                out.extend(entry.families)
                continue
            got = {m.name for m in read}
            out.extend(read)
            out.extend(f for f in entry.families if f.name not in got)
        return out

    @staticmethod
    def _read(entry: _Registered) -> list[Metric] | None:
        # From the loop's own thread (an in-process test calling generate_latest) waiting
        # would deadlock: such a scrape gets the families without samples.
        if entry.loop.is_closed() or threading.get_ident() == entry.loop_thread:
            return None

        async def read() -> list[Metric]:
            return list(await entry.read())

        try:
            future = asyncio.run_coroutine_threadsafe(read(), entry.loop)
        except RuntimeError:  # the loop closed meanwhile
            return None
        try:
            return future.result(READ_DEADLINE_S)
        except TimeoutError:
            future.cancel()
            log.warning("a metrics reading missed its deadline; left out of this scrape")
        except Exception as exc:
            log.warning("a metrics reading failed: %s", exc)
        return None


READINGS = ScrapeReadings()
REGISTRY.register(READINGS)


def on_scrape(name: str, families: Sequence[Metric], read: Reading) -> Callable[[], None]:
    """`READINGS.add`: `read` runs on the calling service's loop at each scrape and returns
    the families, filled; `families` are the same ones, empty (their names, help and type)."""
    return READINGS.add(name, families, read)


# ---------------------------------------------------------------------- JetStream consumer lag

CONSUMER_PENDING = "loom_jetstream_consumer_pending_messages"
CONSUMER_ACK_PENDING = "loom_jetstream_consumer_ack_pending_messages"


def consumer_lag_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    labels = ["stream", "consumer"]
    return (
        GaugeMetricFamily(
            CONSUMER_PENDING,
            "Messages in the stream not yet delivered to the durable consumer (num_pending).",
            labels=labels,
        ),
        GaugeMetricFamily(
            CONSUMER_ACK_PENDING,
            "Messages delivered to the consumer and not yet acknowledged (num_ack_pending).",
            labels=labels,
        ),
    )


def consumer_lag_families_of(
    lags: Iterable[tuple[str, str, int, int]],
) -> list[Metric]:
    """The two gauge families from (stream, consumer, num_pending, num_ack_pending) rows."""
    pending, ack_pending = consumer_lag_families()
    for stream, consumer, num_pending, num_ack_pending in lags:
        pending.add_metric([stream, consumer], num_pending)
        ack_pending.add_metric([stream, consumer], num_ack_pending)
    return [pending, ack_pending]
