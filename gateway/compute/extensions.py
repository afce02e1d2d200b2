"""/extensions: the v2 extension list, as Nova still serves it, naming only what Loom serves.

Nova's list is fixed since v2.1 made every extension part of the core API; clients and
Tempest look an extension up by its alias or name. Loom lists the ones whose API it serves
(an extension whose requests Loom would refuse is left out).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.compute.common import context, ok
from gateway.errors import NotFound
from gateway.routing import READER, documented

# (alias, name, description): Nova's alias and name, Loom's own description.
_SERVED: tuple[tuple[str, str, str], ...] = (
    ("OS-EXT-AZ", "ExtendedAvailabilityZone", "A server's availability zone in its body."),
    ("OS-EXT-IPS", "ExtendedIps", "The type (fixed) of each address of a server."),
    ("OS-EXT-IPS-MAC", "ExtendedIpsMac", "The MAC address of each address of a server."),
    ("OS-EXT-SRV-ATTR", "ExtendedServerAttributes", "A server's host and hypervisor (admin)."),
    ("OS-EXT-STS", "ExtendedStatus", "A server's vm_state, task_state and power_state."),
    ("OS-FLV-DISABLED", "FlavorDisabled", "Whether a flavor is disabled."),
    ("OS-FLV-EXT-DATA", "FlavorExtraData", "A flavor's ephemeral disk size."),
    ("OS-SRV-USG", "ServerUsage", "When a server was launched and terminated."),
    ("os-admin-actions", "AdminActions", "Resetting a server's state (admin)."),
    ("os-aggregates", "Aggregates", "Host aggregates (admin)."),
    ("os-availability-zone", "AvailabilityZone", "Availability zones and their hosts."),
    ("os-console-output", "ConsoleOutput", "A server's serial console output."),
    ("os-consoles", "Consoles", "Interactive (VNC) consoles of servers."),
    (
        "os-deferred-delete",
        "DeferredDelete",
        "restore and forceDelete of soft-deleted servers (reclaim_instance_interval).",
    ),
    ("os-extended-quotas", "ExtendedQuotas", "Deleting a project's quotas (admin)."),
    ("os-flavor-access", "FlavorAccess", "Private flavors and the projects that may use them."),
    ("os-flavor-extra-specs", "FlavorExtraSpecs", "A flavor's extra specs."),
    ("os-flavor-manage", "FlavorManage", "Creating and deleting flavors (admin)."),
    ("os-hosts", "Hosts", "The hosts of the fleet (deprecated; up to 2.42)."),
    ("os-hypervisors", "Hypervisors", "Hypervisors, their resources and uptime (admin)."),
    ("os-instance-actions", "InstanceActions", "The actions taken on a server and their events."),
    (
        "os-instance_usage_audit_log",
        "OSInstanceUsageAuditLog",
        "Servers active in a period, per host (Loom runs no audit task: see the docs).",
    ),
    ("os-keypairs", "Keypairs", "SSH keypairs."),
    ("os-lock-server", "LockServer", "Locking a server against changes."),
    ("os-migrate-server", "MigrateServer", "Cold and live migration (admin)."),
    ("os-migrations", "Migrations", "Moves of servers (admin)."),
    ("os-networks", "Networks", "The network service's networks (a proxy, up to 2.35)."),
    ("os-pause-server", "PauseServer", "Pausing and unpausing a server."),
    ("os-quota-class-sets", "QuotaClasses", "The default quotas (admin)."),
    ("os-quota-sets", "Quotas", "Quotas of projects."),
    ("os-server-diagnostics", "ServerDiagnostics", "A server's hypervisor counters (admin)."),
    ("os-server-groups", "ServerGroups", "Server groups and their policies."),
    ("os-server-group-quotas", "ServerGroupQuotas", "Quotas on server groups."),
    ("os-server-start-stop", "ServerStartStop", "Starting and stopping a server."),
    ("os-services", "Services", "The compute services of the fleet (admin)."),
    ("os-shelve", "Shelve", "Shelving and unshelving a server."),
    ("os-simple-tenant-usage", "SimpleTenantUsage", "Usage of servers over a period."),
    ("os-suspend-server", "SuspendServer", "Suspending and resuming a server."),
    ("os-user-quotas", "UserQuotas", "Quotas read per user (the project's limits)."),
)

_NAMESPACE = "http://docs.openstack.org/compute/ext/fake_xml"
_UPDATED = "2014-12-03T00:00:00Z"


def _extension(alias: str, name: str, description: str) -> dict[str, Any]:
    return {
        "alias": alias,
        "description": description,
        "links": [],
        "name": name,
        "namespace": _NAMESPACE,
        "updated": _UPDATED,
    }


EXTENSIONS: dict[str, dict[str, Any]] = {
    alias: _extension(alias, name, description) for alias, name, description in _SERVED
}


@documented(tag="compute", policy=READER)
async def list_extensions(request: Request) -> Response:
    """The extensions Loom serves, sorted by alias."""
    context(request).require_read("os_compute_api:extensions")
    return ok({"extensions": [EXTENSIONS[a] for a in sorted(EXTENSIONS)]})


@documented(tag="compute", policy=READER)
async def show_extension(request: Request) -> Response:
    """One extension by its alias; 404 for one Loom does not serve."""
    context(request).require_read("os_compute_api:extensions")
    alias = request.path_params["alias"]
    found = EXTENSIONS.get(alias)
    if found is None:
        raise NotFound("Extension could not be found.")
    return ok({"extension": found})


def routes() -> list[BaseRoute]:
    return [
        Route("/compute/v2.1/extensions", list_extensions, methods=["GET"]),
        Route("/compute/v2.1/extensions/{alias}", show_extension, methods=["GET"]),
    ]
