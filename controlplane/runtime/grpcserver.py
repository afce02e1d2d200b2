"""A gRPC aio server with health checking and reflection, as every Loom service offers,
and the latency histograms of every gRPC call Loom serves or makes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import Histogram

from controlplane.config import TlsConfig
from controlplane.runtime import tracing
from controlplane.runtime.callers import CallerAuthorisation
from controlplane.runtime.interceptors import Behavior, UnaryWrapper
from controlplane.runtime.metrics import LATENCY_BUCKETS

log = logging.getLogger(__name__)

_LABELS = ("grpc_service", "grpc_method", "grpc_code")
SERVER_HANDLING = Histogram(
    "loom_grpc_server_handling_seconds",
    "Time a unary gRPC call took this server, from its arrival to its answer, by status code.",
    _LABELS,
    buckets=LATENCY_BUCKETS,
)
CLIENT_HANDLING = Histogram(
    "loom_grpc_client_handling_seconds",
    "Time a unary gRPC call Loom made took, from sending to the answer, by status code.",
    _LABELS,
    buckets=LATENCY_BUCKETS,
)


def _service_and_method(full: str) -> tuple[str, str]:
    # "/loom.conductor.v1.ServersService/GetServer" -> ("loom.conductor.v1.ServersService", …)
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


class _Observers:
    """Histogram children by (method path, code), looked up without a lock once seen (labels()
    locks on every call; a plain dict read does not)."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._children: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, code: str, seconds: float) -> None:
        child = self._children.get((method, code))
        if child is None:
            child = self._histogram.labels(*_service_and_method(method), code)
            self._children[(method, code)] = child
        child.observe(seconds)


class ServerMetricsInterceptor(UnaryWrapper):
    """Times every unary-unary call by service, method and status code. Streaming calls (the
    health Watch, reflection) pass untouched: their length says nothing about latency.
    A call costs one timing and one observe."""

    def __init__(self) -> None:
        super().__init__()
        self._observers = _Observers(SERVER_HANDLING)

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        return self._timed(method, behavior)

    def _timed(
        self, method: str, behavior: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        observe = self._observers.observe

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = "OK"
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception:
                code = "UNKNOWN"
                raise
            finally:
                status = context.code()
                if status is not None:
                    code = status.name
                observe(method, code, time.perf_counter() - start)

        return timed


class ClientMetricsInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Times every unary-unary call a Loom channel makes, by service, method and code."""

    def __init__(self) -> None:
        self._observers = _Observers(CLIENT_HANDLING)

    async def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        start = time.perf_counter()
        method = client_call_details.method
        if isinstance(method, bytes):
            method = method.decode()
        code = "OK"
        try:
            call = await continuation(client_call_details, request)
            await call
            return call
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "UNKNOWN"
            raise
        finally:
            self._observers.observe(method, code, time.perf_counter() - start)


# What a call made without its own timeout gets: no Loom call waits forever on a peer.
DEFAULT_DEADLINE_S = 30.0


class DefaultDeadline(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Gives every unary call without a timeout the default deadline."""

    def __init__(self, seconds: float = DEFAULT_DEADLINE_S) -> None:
        self._seconds = seconds

    async def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        if client_call_details.timeout is None:
            client_call_details = client_call_details._replace(timeout=self._seconds)
        return await continuation(client_call_details, request)


_DEFAULT_DEADLINE = DefaultDeadline()

# One per process: its histogram children are shared by every channel.
_CLIENT_INTERCEPTOR = ClientMetricsInterceptor()
_client_metrics = True


def time_client_calls(enabled: bool) -> None:
    """Whether channels made from now on time their calls (loom_grpc_client_handling_seconds)."""
    global _client_metrics
    _client_metrics = enabled


@dataclass(frozen=True)
class Registration:
    """One servicer and how to add it: the generated add_*_to_server function and the
    full service name (for health and reflection)."""

    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    service_name: str

    @classmethod
    def of(cls, servicer: Any, pb2: ModuleType, pb2_grpc: ModuleType, service: str) -> Registration:
        """The registration of `service` (e.g. "FlavorsService") from its generated modules:
        the add function and the full name come from what protoc generated for it."""
        return cls(
            servicer,
            getattr(pb2_grpc, f"add_{service}Servicer_to_server"),
            str(pb2.DESCRIPTOR.services_by_name[service].full_name),
        )


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: HealthServicer

    async def stop(self, grace: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials | None:
    if not tls.cert:
        return None
    root = Path(tls.ca).read_bytes() if tls.ca else None
    return grpc.ssl_server_credentials(
        [(Path(tls.key).read_bytes(), Path(tls.cert).read_bytes())],
        root_certificates=root,
        require_client_auth=tls.require_client_auth and root is not None,
    )


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials | None:
    if not tls.cert and not tls.ca:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=Path(tls.ca).read_bytes() if tls.ca else None,
        private_key=Path(tls.key).read_bytes() if tls.key else None,
        certificate_chain=Path(tls.cert).read_bytes() if tls.cert else None,
    )


# The longest a client waits between tries to reach a server it lost. gRPC's default
# grows to 120 s, so a service restarted after a minute's outage would go unseen by its
# callers for up to two more minutes; a restarted replica is found within this instead.
MAX_RECONNECT_BACKOFF_S = 2.0


# A call that fails UNAVAILABLE before the server answered (the replica it went to died or
# went away) is tried again, on another replica when the target names several: at most
# three tries in all, 0.1 s and then 0.2 s apart.
RETRY_UNAVAILABLE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "0.2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def insecure_or_secure_channel(
    target: str, tls: TlsConfig | None = None, *, retry_unavailable: bool = False
) -> grpc.aio.Channel:
    """A client channel. `retry_unavailable`: for callers whose every mutating call is
    idempotent (it carries a request_id), so a retry after a replica died cannot act twice
    (RETRY_UNAVAILABLE_CONFIG)."""
    creds = channel_credentials(tls) if tls else None
    options: list[tuple[str, str | int]] = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        # A target naming several servers ("ipv4:a:1,b:2") spreads calls over all of them.
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.max_reconnect_backoff_ms", int(MAX_RECONNECT_BACKOFF_S * 1000)),
    ]
    if retry_unavailable:
        options += [("grpc.enable_retries", 1), ("grpc.service_config", RETRY_UNAVAILABLE_CONFIG)]
    interceptors: list[grpc.aio.ClientInterceptor] = [_DEFAULT_DEADLINE]
    if _client_metrics:
        interceptors.append(_CLIENT_INTERCEPTOR)
    if tracing.enabled():
        # opentelemetry-instrumentation-grpc's aio interceptors: a CLIENT span per call,
        # its context sent in the call's metadata.
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        interceptors += aio_client_interceptors()  # type: ignore[no-untyped-call]
    if creds is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(target, creds, options=options, interceptors=interceptors)


async def start_grpc_server(
    listen: str,
    registrations: Iterable[Registration],
    tls: TlsConfig | None = None,
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
) -> RunningServer:
    """Starts serving; returns the bound port (useful when listen ends in :0). With mutual
    TLS every call is authorised by its caller's certificate (controlplane/runtime/callers)."""
    creds = server_credentials(tls) if tls else None
    chain: list[grpc.aio.ServerInterceptor] = [ServerMetricsInterceptor()]
    if tracing.enabled():
        # A SERVER span per call, a child of the caller's span (from the call's metadata).
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        chain.insert(0, aio_server_interceptor())  # type: ignore[no-untyped-call]
    if creds is not None and tls is not None and tls.ca and tls.require_client_auth:
        chain.append(CallerAuthorisation())
    else:
        log.warning(
            "gRPC callers are not authenticated",
            extra={
                "listen": listen,
                "hint": "set tls.ca, tls.cert and tls.key (see `loom certs`) for mutual TLS",
            },
        )
    chain.extend(interceptors)
    server = grpc.aio.server(
        interceptors=chain,
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    regs = list(registrations)
    for reg in regs:
        reg.add_to_server(reg.servicer, server)
        names.append(reg.service_name)
    reflection.enable_server_reflection(names, server)
    port = server.add_secure_port(listen, creds) if creds else server.add_insecure_port(listen)
    await server.start()
    for reg in regs:
        await health_servicer.set(reg.service_name, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, port=port, health=health_servicer)
