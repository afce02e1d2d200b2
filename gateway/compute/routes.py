"""Every compute route, in one table (also the source of /openapi.json)."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from gateway.compute import (
    aggregates,
    audit_log,
    consoles,
    diagnostics,
    extensions,
    flavors,
    fleet,
    floating_ips,
    hosts,
    images,
    interfaces,
    keypairs,
    migrations,
    networks,
    quotas,
    security_groups,
    server_groups,
    server_password,
    server_tags,
    servers,
    shares,
    usage,
    versions,
)


def routes() -> list[BaseRoute]:
    return [
        Route("/compute", versions.list_versions, methods=["GET"]),
        Route("/compute/", versions.list_versions, methods=["GET"]),
        Route("/compute/v2", versions.show_v20, methods=["GET"]),
        Route("/compute/v2/", versions.show_v20, methods=["GET"]),
        Route("/compute/v2.1", versions.show_v21, methods=["GET"]),
        Route("/compute/v2.1/", versions.show_v21, methods=["GET"]),
        *flavors.routes(),
        *images.routes(),
        *keypairs.routes(),
        *servers.routes(),
        *interfaces.routes(),
        *quotas.routes(),
        *fleet.routes(),
        *server_groups.routes(),
        *consoles.routes(),
        *usage.routes(),
        *shares.routes(),
        *aggregates.routes(),
        *migrations.routes(),
        *extensions.routes(),
        *diagnostics.routes(),
        *hosts.routes(),
        *audit_log.routes(),
        *networks.routes(),
        *security_groups.routes(),
        *floating_ips.routes(),
        *server_tags.routes(),
        *server_password.routes(),
    ]
