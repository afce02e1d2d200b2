"""Network v2.0 versions, the extensions served, availability zones and the refused tag paths."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.compute.common import ok
from gateway.network.common import (
    API,
    TAG,
    NeutronError,
    context,
)
from gateway.routing import PUBLIC, READER, documented
from gateway.state import base_url

# ------------------------------------------------------------------ versions, extensions

# (alias, name, description) of every extension this cloud serves, and nothing more.
EXTENSIONS = (
    ("security-group", "security-group", "The security groups extension."),
    ("quotas", "Quota management support", "Expose functions for quotas management per project"),
    (
        "quota_details",
        "Quota details management support",
        "Expose functions for quotas usage statistics per project",
    ),
    ("binding", "Port Binding", "Expose port bindings of a virtual port to external application"),
    (
        "external-net",
        "Neutron external network",
        "Adds external network attribute to network resource.",
    ),
    ("port-security", "Port Security", "Provides port security"),
    (
        "allowed-address-pairs",
        "Allowed Address Pairs",
        "Provides allowed address pairs (IPv4, with the port's own MAC)",
    ),
    ("net-mtu", "Network MTU", "Provides MTU attribute for a network resource."),
    (
        "standard-attr-description",
        "standard-attr-description",
        "Extension to add descriptions to standard attributes",
    ),
    (
        "standard-attr-revisions",
        "Resource revision numbers",
        "This extension will display the revision number of neutron resources.",
    ),
    (
        "standard-attr-timestamp",
        "Resource timestamps",
        "Adds created_at and updated_at fields to all resources that have standard attributes.",
    ),
    (
        "project-id",
        "project_id field enabled",
        "Extension that indicates that project_id field is enabled.",
    ),
    ("pagination", "Pagination support", "Extension that indicates that pagination is enabled."),
    ("sorting", "Sorting support", "Extension that indicates that sorting is enabled."),
    (
        "filter-validation",
        "Filter parameters validation",
        "Provides validation on filter parameters.",
    ),
    ("availability_zone", "Availability Zone", "The availability zone extension."),
    (
        "router",
        "Neutron L3 Router",
        "Router abstraction for basic L3 forwarding between L2"
        " networks and gateway to external networks; floating IPs.",
    ),
    (
        "ext-gw-mode",
        "Neutron L3 Configurable external gateway mode",
        "Extension of the router abstraction for specifying whether SNAT should occur on the"
        " external gateway",
    ),
    (
        "subnet-external-network",
        "Subnet external network",
        "Subnets show whether their network is external (router:external); the subnets of"
        " an external network are seen by every project.",
    ),
)
_COLLECTIONS = (
    ("network", "networks"),
    ("subnet", "subnets"),
    ("port", "ports"),
    ("security_group", "security-groups"),
    ("security_group_rule", "security-group-rules"),
    ("router", "routers"),
    ("floatingip", "floatingips"),
    ("quota", "quotas"),
    ("extension", "extensions"),
    ("availability_zone", "availability_zones"),
)


def _version(request: Request) -> dict[str, Any]:
    return {
        "id": "v2.0",
        "status": "CURRENT",
        "links": [{"href": f"{base_url(request)}{API}/", "rel": "self"}],
    }


@documented(policy=PUBLIC)
async def versions(request: Request) -> Response:
    """Network API versions."""
    return ok({"versions": [_version(request)]})


@documented(policy=PUBLIC)
async def v2_resources(request: Request) -> Response:
    """Network v2.0 resources."""
    base = f"{base_url(request)}{API}"
    return ok(
        {
            "resources": [
                {
                    "name": name,
                    "collection": coll,
                    "links": [{"href": f"{base}/{coll}", "rel": "self"}],
                }
                for name, coll in _COLLECTIONS
            ]
        }
    )


def _extension(alias: str, name: str, description: str) -> dict[str, Any]:
    return {
        "alias": alias,
        "name": name,
        "description": description,
        "links": [],
        "updated": "2013-01-01T10:00:00-00:00",
    }


@documented(tag=TAG, policy=READER)
async def list_extensions(request: Request) -> Response:
    """The extensions this cloud serves."""
    context(request).require_read("get_extension")
    return ok({"extensions": [_extension(*e) for e in EXTENSIONS]})


@documented(tag=TAG, policy=READER)
async def show_extension(request: Request) -> Response:
    """One extension."""
    context(request).require_read("get_extension")
    alias = request.path_params["alias"]
    for e in EXTENSIONS:
        if e[0] == alias:
            return ok({"extension": _extension(*e)})
    raise NeutronError(404, f"Extension with alias {alias[:64]} does not exist", "HTTPNotFound")


@documented(tag=TAG, policy=READER)
async def list_availability_zones(request: Request) -> Response:
    """Availability zones of network resources: none (every network spans every host)."""
    context(request).require_read("get_availability_zone")
    return ok({"availability_zones": []})


@documented(tag=TAG, policy=READER)
async def tags_refused(request: Request) -> Response:
    """Resource tags: not served (the standard-attr-tag extension is not listed)."""
    context(request).require_read("get_tags")
    raise NeutronError(
        404,
        "Tags are not supported by this cloud (the standard-attr-tag extension is not served).",
        "HTTPNotFound",
    )
