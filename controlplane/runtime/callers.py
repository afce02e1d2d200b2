"""Who may call which gRPC service: the callee authorises each caller by the identity in its
client certificate (the common name `loom certs` gives it), before any servicer runs.

Only with mutual TLS: a server without certificates cannot know its caller and runs
without this check (it logs so at start). A service named nowhere below refuses every
caller, so a new service is closed until it is given its callers here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from controlplane.runtime.interceptors import Behavior, UnaryWrapper, service_of

# Every identity a Loom process or its operator can hold (the common name of its
# certificate); `operator` is for people and tools (grpcurl, `loom up`'s own health checks)
# and may call every service.
IDENTITIES = (
    "gateway",
    "conductor",
    "scheduler",
    "agent",
    "identity",
    "image",
    "catalog",
    "network",
    "operator",
)

# Anyone holding a certificate of Loom's CA may ask for health and reflection.
ANY_LOOM_PART = frozenset({"*"})

# Service full name -> the identities allowed to call it. `operator` is people and tools.
CALLERS: Mapping[str, frozenset[str]] = {
    "grpc.health.v1.Health": ANY_LOOM_PART,
    "grpc.reflection.v1alpha.ServerReflection": ANY_LOOM_PART,
    "grpc.reflection.v1.ServerReflection": ANY_LOOM_PART,
    # The REST gateway translates tenants' requests; it alone acts for a project (or, for
    # an admin it authenticated, for all projects).
    "loom.identity.v1.IdentityService": frozenset({"gateway", "operator"}),
    "loom.image.v1.ImagesService": frozenset({"gateway", "operator"}),
    "loom.catalog.v1.FlavorsService": frozenset({"gateway", "operator"}),
    "loom.catalog.v1.KeypairsService": frozenset({"gateway", "operator"}),
    "loom.catalog.v1.QuotasService": frozenset({"gateway", "operator"}),
    "loom.conductor.v1.ServersService": frozenset({"gateway", "operator"}),
    "loom.conductor.v1.ServerGroupsService": frozenset({"gateway", "operator"}),
    "loom.conductor.v1.ConsolesService": frozenset({"gateway", "operator"}),
    "loom.conductor.v1.MigrationsService": frozenset({"gateway", "operator"}),
    # Server diagnostics and hypervisor uptime, read from the agents for admins' requests.
    "loom.conductor.v1.DiagnosticsService": frozenset({"gateway", "operator"}),
    # Tenants' Network v2 requests come through the gateway; the compute service creates,
    # binds and deletes its servers' ports.
    "loom.network.v1.NetworkService": frozenset({"gateway", "conductor", "operator"}),
    # Agents read which instances the control plane places on their host.
    "loom.conductor.v1.FleetService": frozenset({"gateway", "agent", "operator"}),
    # Only the compute service asks for placements and claims.
    "loom.scheduler.v1.SchedulerService": frozenset({"conductor", "operator"}),
    # Host aggregates are an admin's REST API (os-aggregates), translated by the gateway.
    "loom.scheduler.v1.AggregatesService": frozenset({"gateway", "operator"}),
    # The Placement API's reads (resource providers, usages, allocations), for the gateway.
    "loom.scheduler.v1.ResourceProvidersService": frozenset({"gateway", "operator"}),
    # The conductor asks agents for console endpoints; the gateway's console proxy connects.
    "loom.compute.v1.ComputeService": frozenset({"conductor", "gateway", "operator"}),
}


# Methods a narrower set may call than their service's callers (full method name).
METHOD_CALLERS: Mapping[str, frozenset[str]] = {
    # The compute service carries security and router changes to the hosts; no tenant's
    # path does.
    "/loom.network.v1.NetworkService/TakePortSecurityChanges": frozenset({"conductor", "operator"}),
    "/loom.network.v1.NetworkService/AckPortSecurityChanges": frozenset({"conductor", "operator"}),
    "/loom.network.v1.NetworkService/TakeRouterChanges": frozenset({"conductor", "operator"}),
    "/loom.network.v1.NetworkService/AckRouterChanges": frozenset({"conductor", "operator"}),
}


def caller_identity(context: grpc.aio.ServicerContext) -> str | None:
    """The common name of the caller's verified client certificate, or None."""
    names = context.auth_context().get("x509_common_name")
    if not names:
        return None
    name = names[0]
    return name.decode() if isinstance(name, bytes) else str(name)


def allowed(service: str, identity: str | None) -> bool:
    callers = CALLERS.get(service)
    if callers is None or identity is None:
        return False
    return callers is ANY_LOOM_PART or identity in callers


class CallerAuthorisation(UnaryWrapper):
    """Refuses a call with PERMISSION_DENIED unless CALLERS lets its certificate's identity
    call that service."""

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        service = service_of(method)
        if CALLERS.get(service) is ANY_LOOM_PART:
            # Health: the TLS handshake already proved a certificate of Loom's CA.
            return behavior

        narrower = METHOD_CALLERS.get(method)

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            identity = caller_identity(context)
            if not allowed(service, identity):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, _deny(service, identity))
            if narrower is not None and identity not in narrower:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, _deny(method, identity))
            return await behavior(request, context)

        return unary

    def wrap_streaming(self, method: str, handler: Any) -> Any:
        service = service_of(method)
        if CALLERS.get(service) is ANY_LOOM_PART:
            # Health Watch and reflection: any certificate of Loom's CA.
            return handler
        # Loom's own services are all unary; a streaming method elsewhere stays closed
        # until this interceptor learns to check it.
        return _refusing(handler, f"streaming calls to {service} are not authorised")


def _deny(service: str, identity: str | None) -> str:
    who = f"caller {identity!r}" if identity else "a caller without a Loom certificate"
    return f"{who} may not call {service}"


def _refusing(handler: Any, message: str) -> Any:
    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

    make = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream is not None
        else grpc.stream_stream_rpc_method_handler
        if handler.stream_stream is not None
        else grpc.stream_unary_rpc_method_handler
    )
    return make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
