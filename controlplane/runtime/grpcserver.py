"""A gRPC aio server with health checking and reflection, as every Loom service offers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from controlplane.config import TlsConfig


@dataclass(frozen=True)
class Registration:
    """One servicer and how to add it: the generated add_*_to_server function and the
    full service name (for health and reflection)."""

    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    service_name: str


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


def insecure_or_secure_channel(target: str, tls: TlsConfig | None = None) -> grpc.aio.Channel:
    creds = channel_credentials(tls) if tls else None
    options: list[tuple[str, str | int]] = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        # A target naming several servers ("ipv4:a:1,b:2") spreads calls over all of them.
        ("grpc.lb_policy_name", "round_robin"),
    ]
    if creds is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, creds, options=options)


async def start_grpc_server(
    listen: str,
    registrations: Iterable[Registration],
    tls: TlsConfig | None = None,
) -> RunningServer:
    """Starts serving; returns the bound port (useful when listen ends in :0)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
    )
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    regs = list(registrations)
    for reg in regs:
        reg.add_to_server(reg.servicer, server)
        names.append(reg.service_name)
    reflection.enable_server_reflection(names, server)
    creds = server_credentials(tls) if tls else None
    port = server.add_secure_port(listen, creds) if creds else server.add_insecure_port(listen)
    await server.start()
    for reg in regs:
        await health_servicer.set(reg.service_name, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, port=port, health=health_servicer)
