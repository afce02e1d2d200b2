"""What every long-running service process sets up before its serve(), in one place:
its /metrics endpoint and, for benchmarks, the SQL statement file."""

from __future__ import annotations

from controlplane.config import LoomConfig
from controlplane.runtime import grpcserver
from controlplane.runtime.metrics import MetricsEndpoint, serve_metrics
from controlplane.runtime.stats import start_stats_writer


def start_process_metrics(cfg: LoomConfig, service: str) -> MetricsEndpoint | None:
    """Serves /metrics where `metrics.listen` says for `service` (None when turned off),
    starts the stats file writer when `stats_dir` is set, and makes the gRPC channels of
    this process time their calls unless `metrics.grpc_client_latency` is off.
    Raises MetricsListenError when the endpoint cannot listen."""
    grpcserver.time_client_calls(cfg.metrics.grpc_client_latency)
    endpoint = serve_metrics(service, cfg.metrics.listen_for(service))
    start_stats_writer(service, cfg.stats_dir)
    return endpoint
