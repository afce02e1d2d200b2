"""Every Network v2.0 route, in one table (also the source of /openapi.json). Policy: a
reader may look, a member may change its own project's resources, an admin sees and
changes all; another project's resource answers 404."""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute, Route

from gateway.network.common import API
from gateway.network.l3 import (
    add_router_interface,
    create_floating_ip,
    create_router,
    delete_floating_ip,
    delete_router,
    list_floating_ips,
    list_routers,
    remove_router_interface,
    show_floating_ip,
    show_router,
    update_floating_ip,
    update_router,
)
from gateway.network.networks import (
    create_network,
    create_subnet,
    delete_network,
    delete_subnet,
    list_networks,
    list_subnets,
    show_network,
    show_subnet,
    update_network,
    update_subnet,
)
from gateway.network.ports import create_port, delete_port, list_ports, show_port, update_port
from gateway.network.quotas import (
    delete_quota,
    list_quotas,
    show_quota,
    show_quota_defaults,
    show_quota_details,
    update_quota,
)
from gateway.network.security_groups import (
    create_rule,
    create_security_group,
    delete_rule,
    delete_security_group,
    list_rules,
    list_security_groups,
    show_rule,
    show_security_group,
    update_security_group,
)
from gateway.network.versions import (
    list_availability_zones,
    list_extensions,
    show_extension,
    tags_refused,
    v2_resources,
    versions,
)


def _crud(
    path: str, lister: Any, creator: Any, shower: Any, updater: Any, deleter: Any
) -> list[BaseRoute]:
    out: list[BaseRoute] = [
        Route(path, lister, methods=["GET"]),
        Route(path, creator, methods=["POST"]),
        Route(path + "/{id}", shower, methods=["GET"]),
    ]
    if updater is not None:
        out.append(Route(path + "/{id}", updater, methods=["PUT"]))
    out.append(Route(path + "/{id}", deleter, methods=["DELETE"]))
    return out


def routes() -> list[BaseRoute]:
    q = API + "/quotas"
    return [
        Route("/network", versions, methods=["GET"]),
        Route("/network/", versions, methods=["GET"]),
        Route(API, v2_resources, methods=["GET"]),
        Route(API + "/", v2_resources, methods=["GET"]),
        Route(API + "/extensions", list_extensions, methods=["GET"]),
        Route(API + "/extensions/{alias}", show_extension, methods=["GET"]),
        Route(API + "/availability_zones", list_availability_zones, methods=["GET"]),
        *_crud(
            API + "/networks",
            list_networks,
            create_network,
            show_network,
            update_network,
            delete_network,
        ),
        *_crud(
            API + "/subnets", list_subnets, create_subnet, show_subnet, update_subnet, delete_subnet
        ),
        *_crud(API + "/ports", list_ports, create_port, show_port, update_port, delete_port),
        *_crud(
            API + "/security-groups",
            list_security_groups,
            create_security_group,
            show_security_group,
            update_security_group,
            delete_security_group,
        ),
        *_crud(
            API + "/security-group-rules", list_rules, create_rule, show_rule, None, delete_rule
        ),
        *_crud(
            API + "/routers", list_routers, create_router, show_router, update_router, delete_router
        ),
        Route(API + "/routers/{id}/add_router_interface", add_router_interface, methods=["PUT"]),
        Route(
            API + "/routers/{id}/remove_router_interface", remove_router_interface, methods=["PUT"]
        ),
        *_crud(
            API + "/floatingips",
            list_floating_ips,
            create_floating_ip,
            show_floating_ip,
            update_floating_ip,
            delete_floating_ip,
        ),
        *(
            Route(f"{API}/{collection}/{{id}}/tags{tail}", tags_refused, methods=methods)
            for collection in (
                "networks",
                "subnets",
                "ports",
                "security-groups",
                "routers",
                "floatingips",
            )
            for tail, methods in (
                ("", ["GET", "PUT", "DELETE"]),
                ("/{tag}", ["GET", "PUT", "DELETE"]),
            )
        ),
        Route(q, list_quotas, methods=["GET"]),
        Route(q + "/{project_id}", show_quota, methods=["GET"]),
        Route(q + "/{project_id}", update_quota, methods=["PUT"]),
        Route(q + "/{project_id}", delete_quota, methods=["DELETE"]),
        Route(q + "/{project_id}/default", show_quota_defaults, methods=["GET"]),
        Route(q + "/{project_id}/details", show_quota_details, methods=["GET"]),
        Route(q + "/{project_id}/details.json", show_quota_details, methods=["GET"]),
    ]
