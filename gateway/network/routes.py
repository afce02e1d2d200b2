"""Network v2.0 routes: versions, extensions, networks, subnets, ports, security groups,
rules, quotas. Policy: a reader may look, a member may change its own project's
resources, an admin sees and changes all; another project's resource answers 404."""

from __future__ import annotations

from typing import Any

from loom.network.v1 import network_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.compute.common import empty, ok
from gateway.errors import BadRequest
from gateway.network import schemas, views
from gateway.network.common import (
    API,
    call,
    context,
    encodable,
    listing,
    one,
    resource_body,
    scope,
)
from gateway.routing import documented
from gateway.state import base_url, gateway_of, json_body, request_id
from gateway.validation import ValidationFailed

TAG = "network"


def _stub(request: Request) -> Any:
    return gateway_of(request).conductor.network


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


async def versions(request: Request) -> Response:
    """Network API versions."""
    return ok({"versions": [_version(request)]})


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


@documented(tag=TAG)
async def list_extensions(request: Request) -> Response:
    """The extensions this cloud serves."""
    context(request).require_read("get_extension")
    return ok({"extensions": [_extension(*e) for e in EXTENSIONS]})


@documented(tag=TAG)
async def show_extension(request: Request) -> Response:
    """One extension."""
    context(request).require_read("get_extension")
    alias = request.path_params["alias"]
    for e in EXTENSIONS:
        if e[0] == alias:
            return ok({"extension": _extension(*e)})
    from gateway.network.common import NeutronError

    raise NeutronError(404, f"Extension with alias {alias[:64]} does not exist", "HTTPNotFound")


@documented(tag=TAG)
async def list_availability_zones(request: Request) -> Response:
    """Availability zones of network resources: none (every network spans every host)."""
    context(request).require_read("get_availability_zone")
    return ok({"availability_zones": []})


@documented(tag=TAG)
async def tags_refused(request: Request) -> Response:
    """Resource tags: not served (the standard-attr-tag extension is not listed)."""
    context(request).require_read("get_tags")
    from gateway.network.common import NeutronError

    raise NeutronError(
        404,
        "Tags are not supported by this cloud (the standard-attr-tag extension is not served).",
        "HTTPNotFound",
    )


# ------------------------------------------------------------------ networks


def _set_network_fields(net: pb.Network, body: dict[str, Any]) -> None:
    for key in ("name", "description", "admin_state_up", "shared", "mtu", "port_security_enabled"):
        if key in body:
            setattr(net, key, body[key])
    if "router:external" in body:
        net.router_external = body["router:external"]
    if "project_id" in body:
        net.project_id = body["project_id"]


@documented(tag=TAG)
async def list_networks(request: Request) -> Response:
    """Networks the caller sees: its own, shared ones (and all, for an admin)."""
    ctx = context(request)
    ctx.require_read("get_network")

    async def fetch(limit: int, marker: str) -> list[dict[str, Any]]:
        reply = await call(
            _stub(request).ListNetworks,
            pb.ListNetworksRequest(scope=scope(ctx), limit=limit, marker=marker),
        )
        return [views.network(n) for n in reply.networks]

    return await listing(request, "networks", fetch, attrs=views.NETWORK_ATTRS)


@documented(body=schemas.wrapped("network", schemas.NETWORK_CREATE), tag=TAG)
async def create_network(request: Request) -> Response:
    """Create a network (shared and router:external: admin only)."""
    ctx = context(request)
    ctx.require_write("create_network")
    body = await resource_body(request, "network", schemas.NETWORK_CREATE)
    net = pb.Network()
    _set_network_fields(net, body)
    reply = await call(
        _stub(request).CreateNetwork,
        pb.CreateNetworkRequest(
            request_id=request_id(request),
            scope=scope(ctx),
            network=net,
            admin_state_up_set="admin_state_up" in body,
            port_security_enabled_set="port_security_enabled" in body,
        ),
    )
    return ok({"network": views.network(reply.network)}, 201)


@documented(tag=TAG)
async def show_network(request: Request) -> Response:
    """One network."""
    ctx = context(request)
    ctx.require_read("get_network")
    reply = await call(
        _stub(request).GetNetwork,
        pb.GetNetworkRequest(scope=scope(ctx), id=request.path_params["id"]),
    )
    return one(request, "network", views.network(reply.network))


@documented(body=schemas.wrapped("network", schemas.NETWORK_UPDATE), tag=TAG)
async def update_network(request: Request) -> Response:
    """Change a network."""
    ctx = context(request)
    ctx.require_write("update_network")
    body = await resource_body(request, "network", schemas.NETWORK_UPDATE)
    req = pb.UpdateNetworkRequest(
        request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
    )
    for key in ("name", "description", "admin_state_up", "shared", "mtu", "port_security_enabled"):
        if key in body:
            setattr(req, key, body[key])
    if "router:external" in body:
        req.router_external = body["router:external"]
    reply = await call(_stub(request).UpdateNetwork, req)
    return ok({"network": views.network(reply.network)})


@documented(tag=TAG)
async def delete_network(request: Request) -> Response:
    """Delete a network and its subnets (409 NetworkInUse while ports remain)."""
    ctx = context(request)
    ctx.require_write("delete_network")
    await call(
        _stub(request).DeleteNetwork,
        pb.DeleteNetworkRequest(
            request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
        ),
    )
    return empty(204)


# ------------------------------------------------------------------ subnets


@documented(tag=TAG)
async def list_subnets(request: Request) -> Response:
    """Subnets the caller sees."""
    ctx = context(request)
    ctx.require_read("get_subnet")
    networks = request.query_params.getlist("network_id")

    async def fetch(limit: int, marker: str) -> list[dict[str, Any]]:
        reply = await call(
            _stub(request).ListSubnets,
            pb.ListSubnetsRequest(
                scope=scope(ctx),
                network_id=networks[0] if len(networks) == 1 else "",
                limit=limit,
                marker=marker,
            ),
        )
        return [views.subnet(s) for s in reply.subnets]

    return await listing(
        request, "subnets", fetch, attrs=views.SUBNET_ATTRS, in_service=("network_id",)
    )


@documented(body=schemas.wrapped("subnet", schemas.SUBNET_CREATE), tag=TAG)
async def create_subnet(request: Request) -> Response:
    """Create an IPv4 subnet: gateway the first address and the rest one pool unless given."""
    ctx = context(request)
    ctx.require_write("create_subnet")
    body = await resource_body(request, "subnet", schemas.SUBNET_CREATE)
    if body.get("ip_version", 4) != 4:
        raise BadRequest(
            "Invalid input for operation: IPv6 subnets are not supported by this cloud."
        )
    if "cidr" not in body:
        raise BadRequest(
            "Invalid input for operation: a cidr is required (subnet pools are not supported"
            " by this cloud)."
        )
    sub = pb.Subnet(
        network_id=body["network_id"],
        project_id=body.get("project_id", ""),
        name=body.get("name", ""),
        description=body.get("description", ""),
        ip_version=4,
        cidr=body["cidr"],
        gateway_ip=body.get("gateway_ip") or "",
        enable_dhcp=body.get("enable_dhcp", True),
        allocation_pools=[pb.AllocationPool(**p) for p in body.get("allocation_pools", [])],
        dns_nameservers=body.get("dns_nameservers", []),
        host_routes=[pb.HostRoute(**r) for r in body.get("host_routes", [])],
    )
    reply = await call(
        _stub(request).CreateSubnet,
        pb.CreateSubnetRequest(
            request_id=request_id(request),
            scope=scope(ctx),
            subnet=sub,
            gateway_ip_set="gateway_ip" in body,
            enable_dhcp_set="enable_dhcp" in body,
        ),
    )
    return ok({"subnet": views.subnet(reply.subnet)}, 201)


@documented(tag=TAG)
async def show_subnet(request: Request) -> Response:
    """One subnet."""
    ctx = context(request)
    ctx.require_read("get_subnet")
    reply = await call(
        _stub(request).GetSubnet,
        pb.GetSubnetRequest(scope=scope(ctx), id=request.path_params["id"]),
    )
    return one(request, "subnet", views.subnet(reply.subnet))


@documented(body=schemas.wrapped("subnet", schemas.SUBNET_UPDATE), tag=TAG)
async def update_subnet(request: Request) -> Response:
    """Change a subnet: name, gateway, DHCP, DNS servers, host routes, pools."""
    ctx = context(request)
    ctx.require_write("update_subnet")
    body = await resource_body(request, "subnet", schemas.SUBNET_UPDATE)
    req = pb.UpdateSubnetRequest(
        request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
    )
    for key in ("name", "description", "enable_dhcp"):
        if key in body:
            setattr(req, key, body[key])
    if "gateway_ip" in body:
        req.gateway_ip = body["gateway_ip"] or ""
    if "dns_nameservers" in body:
        req.dns_nameservers.values.extend(body["dns_nameservers"])
        req.dns_nameservers.SetInParent()
    if "host_routes" in body:
        req.host_routes.routes.extend(pb.HostRoute(**r) for r in body["host_routes"])
        req.host_routes.SetInParent()
    if "allocation_pools" in body:
        req.allocation_pools.pools.extend(pb.AllocationPool(**p) for p in body["allocation_pools"])
        req.allocation_pools.SetInParent()
    reply = await call(_stub(request).UpdateSubnet, req)
    return ok({"subnet": views.subnet(reply.subnet)})


@documented(tag=TAG)
async def delete_subnet(request: Request) -> Response:
    """Delete a subnet (409 SubnetInUse while a port holds one of its addresses)."""
    ctx = context(request)
    ctx.require_write("delete_subnet")
    await call(
        _stub(request).DeleteSubnet,
        pb.DeleteSubnetRequest(
            request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
        ),
    )
    return empty(204)


# ------------------------------------------------------------------ ports


def _fixed_ips(values: list[dict[str, str]]) -> list[pb.FixedIp]:
    return [
        pb.FixedIp(subnet_id=f.get("subnet_id", ""), ip_address=f.get("ip_address", ""))
        for f in values
    ]


@documented(tag=TAG)
async def list_ports(request: Request) -> Response:
    """Ports the caller sees."""
    ctx = context(request)
    ctx.require_read("get_port")
    q = request.query_params
    networks, devices = q.getlist("network_id"), q.getlist("device_id")
    # Only an admin sees (and so may filter on) a port's binding.
    hosts = q.getlist("binding:host_id") if ctx.is_admin else []

    async def fetch(limit: int, marker: str) -> list[dict[str, Any]]:
        reply = await call(
            _stub(request).ListPorts,
            pb.ListPortsRequest(
                scope=scope(ctx),
                network_id=networks[0] if len(networks) == 1 else "",
                device_id=devices[0] if len(devices) == 1 else "",
                binding_host_id=hosts[0] if len(hosts) == 1 else "",
                limit=limit,
                marker=marker,
            ),
        )
        return [views.port(p, admin=ctx.is_admin) for p in reply.ports]

    return await listing(
        request,
        "ports",
        fetch,
        attrs=views.PORT_ATTRS,
        in_service=("network_id", "device_id", *(("binding:host_id",) if ctx.is_admin else ())),
    )


@documented(body=schemas.wrapped("port", schemas.PORT_CREATE), tag=TAG)
async def create_port(request: Request) -> Response:
    """Create a port: a MAC, addresses from the network's subnets, the default group."""
    ctx = context(request)
    ctx.require_write("create_port")
    body = await resource_body(request, "port", schemas.PORT_CREATE)
    groups = body.get("security_groups")
    port = pb.Port(
        network_id=body["network_id"],
        project_id=body.get("project_id", ""),
        name=body.get("name", ""),
        description=body.get("description", ""),
        admin_state_up=body.get("admin_state_up", True),
        mac_address=body.get("mac_address", ""),
        fixed_ips=_fixed_ips(body.get("fixed_ips", [])),
        device_id=body.get("device_id", ""),
        device_owner=body.get("device_owner", ""),
        security_group_ids=groups or [],
        binding_host_id=body.get("binding:host_id", ""),
        port_security_enabled=body.get("port_security_enabled", True),
    )
    reply = await call(
        _stub(request).CreatePort,
        pb.CreatePortRequest(
            request_id=request_id(request),
            scope=scope(ctx),
            port=port,
            fixed_ips_set="fixed_ips" in body,
            security_groups_set="security_groups" in body,
            admin_state_up_set="admin_state_up" in body,
            port_security_enabled_set="port_security_enabled" in body,
        ),
    )
    return ok({"port": views.port(reply.port, admin=ctx.is_admin)}, 201)


@documented(tag=TAG)
async def show_port(request: Request) -> Response:
    """One port."""
    ctx = context(request)
    ctx.require_read("get_port")
    reply = await call(
        _stub(request).GetPort, pb.GetPortRequest(scope=scope(ctx), id=request.path_params["id"])
    )
    return one(request, "port", views.port(reply.port, admin=ctx.is_admin))


@documented(body=schemas.wrapped("port", schemas.PORT_UPDATE), tag=TAG)
async def update_port(request: Request) -> Response:
    """Change a port (binding:host_id: admin only)."""
    ctx = context(request)
    ctx.require_write("update_port")
    body = await resource_body(request, "port", schemas.PORT_UPDATE)
    req = pb.UpdatePortRequest(
        request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
    )
    for key in (
        "name",
        "description",
        "admin_state_up",
        "device_id",
        "device_owner",
        "port_security_enabled",
    ):
        if key in body:
            setattr(req, key, body[key])
    if "binding:host_id" in body:
        req.binding_host_id = body["binding:host_id"]
    if "security_groups" in body:
        req.security_group_ids.values.extend(body["security_groups"] or [])
        req.security_group_ids.SetInParent()
    if "fixed_ips" in body:
        req.fixed_ips.fixed_ips.extend(_fixed_ips(body["fixed_ips"]))
        req.fixed_ips.SetInParent()
    reply = await call(_stub(request).UpdatePort, req)
    return ok({"port": views.port(reply.port, admin=ctx.is_admin)})


@documented(tag=TAG)
async def delete_port(request: Request) -> Response:
    """Delete a port and free its addresses."""
    ctx = context(request)
    ctx.require_write("delete_port")
    await call(
        _stub(request).DeletePort,
        pb.DeletePortRequest(
            request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
        ),
    )
    return empty(204)


# ------------------------------------------------------------------ security groups


@documented(tag=TAG)
async def list_security_groups(request: Request) -> Response:
    """Security groups the caller sees (its project's default made on first use)."""
    ctx = context(request)
    ctx.require_read("get_security_group")

    async def fetch(limit: int, marker: str) -> list[dict[str, Any]]:
        reply = await call(
            _stub(request).ListSecurityGroups,
            pb.ListSecurityGroupsRequest(scope=scope(ctx), limit=limit, marker=marker),
        )
        return [views.security_group(g) for g in reply.security_groups]

    return await listing(request, "security_groups", fetch, attrs=views.SECURITY_GROUP_ATTRS)


@documented(body=schemas.wrapped("security_group", schemas.SECURITY_GROUP_CREATE), tag=TAG)
async def create_security_group(request: Request) -> Response:
    """Create a security group (with egress rules for IPv4 and IPv6)."""
    ctx = context(request)
    ctx.require_write("create_security_group")
    body = await resource_body(request, "security_group", schemas.SECURITY_GROUP_CREATE)
    group = pb.SecurityGroup(
        project_id=body.get("project_id", ""),
        name=body.get("name", ""),
        description=body.get("description", ""),
    )
    reply = await call(
        _stub(request).CreateSecurityGroup,
        pb.CreateSecurityGroupRequest(
            request_id=request_id(request), scope=scope(ctx), security_group=group
        ),
    )
    return ok({"security_group": views.security_group(reply.security_group)}, 201)


@documented(tag=TAG)
async def show_security_group(request: Request) -> Response:
    """One security group with its rules."""
    ctx = context(request)
    ctx.require_read("get_security_group")
    reply = await call(
        _stub(request).GetSecurityGroup,
        pb.GetSecurityGroupRequest(scope=scope(ctx), id=request.path_params["id"]),
    )
    return one(request, "security_group", views.security_group(reply.security_group))


@documented(body=schemas.wrapped("security_group", schemas.SECURITY_GROUP_UPDATE), tag=TAG)
async def update_security_group(request: Request) -> Response:
    """Rename or describe a security group."""
    ctx = context(request)
    ctx.require_write("update_security_group")
    body = await resource_body(request, "security_group", schemas.SECURITY_GROUP_UPDATE)
    req = pb.UpdateSecurityGroupRequest(
        request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
    )
    for key in ("name", "description"):
        if key in body:
            setattr(req, key, body[key])
    reply = await call(_stub(request).UpdateSecurityGroup, req)
    return ok({"security_group": views.security_group(reply.security_group)})


@documented(tag=TAG)
async def delete_security_group(request: Request) -> Response:
    """Delete a security group (409 SecurityGroupInUse while a port uses it)."""
    ctx = context(request)
    ctx.require_write("delete_security_group")
    await call(
        _stub(request).DeleteSecurityGroup,
        pb.DeleteSecurityGroupRequest(
            request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
        ),
    )
    return empty(204)


@documented(tag=TAG)
async def list_rules(request: Request) -> Response:
    """Security group rules the caller sees."""
    ctx = context(request)
    ctx.require_read("get_security_group_rule")

    async def fetch(limit: int, marker: str) -> list[dict[str, Any]]:
        reply = await call(
            _stub(request).ListSecurityGroupRules,
            pb.ListSecurityGroupRulesRequest(scope=scope(ctx), limit=limit, marker=marker),
        )
        return [views.rule(r) for r in reply.rules]

    return await listing(request, "security_group_rules", fetch, attrs=views.RULE_ATTRS)


@documented(body=schemas.wrapped("security_group_rule", schemas.RULE_CREATE), tag=TAG)
async def create_rule(request: Request) -> Response:
    """Create a rule (409 SecurityGroupRuleExists for a duplicate)."""
    ctx = context(request)
    ctx.require_write("create_security_group_rule")
    body = await resource_body(request, "security_group_rule", schemas.RULE_CREATE)
    rule = pb.SecurityGroupRule(
        project_id=body.get("project_id", ""),
        security_group_id=body["security_group_id"],
        direction=body["direction"],
        ethertype=body.get("ethertype", "IPv4"),
        protocol="" if body.get("protocol") is None else str(body["protocol"]),
        remote_ip_prefix=body.get("remote_ip_prefix") or "",
        remote_group_id=body.get("remote_group_id") or "",
        description=body.get("description", ""),
    )
    if body.get("port_range_min") is not None:
        rule.port_range_min = body["port_range_min"]
    if body.get("port_range_max") is not None:
        rule.port_range_max = body["port_range_max"]
    reply = await call(
        _stub(request).CreateSecurityGroupRule,
        pb.CreateSecurityGroupRuleRequest(
            request_id=request_id(request), scope=scope(ctx), rule=rule
        ),
    )
    return ok({"security_group_rule": views.rule(reply.rule)}, 201)


@documented(tag=TAG)
async def show_rule(request: Request) -> Response:
    """One security group rule."""
    ctx = context(request)
    ctx.require_read("get_security_group_rule")
    reply = await call(
        _stub(request).GetSecurityGroupRule,
        pb.GetSecurityGroupRuleRequest(scope=scope(ctx), id=request.path_params["id"]),
    )
    return one(request, "security_group_rule", views.rule(reply.rule))


@documented(tag=TAG)
async def delete_rule(request: Request) -> Response:
    """Delete a security group rule."""
    ctx = context(request)
    ctx.require_write("delete_security_group_rule")
    await call(
        _stub(request).DeleteSecurityGroupRule,
        pb.DeleteSecurityGroupRuleRequest(
            request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
        ),
    )
    return empty(204)


# ------------------------------------------------------------------ routers


def _gateway(info: dict[str, Any] | None) -> pb.GatewayRequest:
    """`external_gateway_info`: null or {} clears the gateway."""
    gw = pb.GatewayRequest()
    if info:
        if "network_id" not in info:
            raise BadRequest("Invalid input for external_gateway_info: network_id is required.")
        gw.network_id = info["network_id"]
        if "enable_snat" in info:
            gw.enable_snat = info["enable_snat"]
        gw.external_fixed_ips.extend(_fixed_ips(info.get("external_fixed_ips", [])))
    return gw


@documented(tag=TAG)
async def list_routers(request: Request) -> Response:
    """Routers the caller sees."""
    ctx = context(request)
    ctx.require_read("get_router")

    async def fetch(limit: int, marker: str) -> list[dict[str, Any]]:
        reply = await call(
            _stub(request).ListRouters,
            pb.ListRoutersRequest(scope=scope(ctx), limit=limit, marker=marker),
        )
        return [views.router(r) for r in reply.routers]

    return await listing(request, "routers", fetch, attrs=views.ROUTER_ATTRS)


@documented(body=schemas.wrapped("router", schemas.ROUTER_CREATE), tag=TAG)
async def create_router(request: Request) -> Response:
    """Create a router, with a gateway on an external network when asked."""
    ctx = context(request)
    ctx.require_write("create_router")
    body = await resource_body(request, "router", schemas.ROUTER_CREATE)
    req = pb.CreateRouterRequest(
        request_id=request_id(request),
        scope=scope(ctx),
        router=pb.Router(
            project_id=body.get("project_id", ""),
            name=body.get("name", ""),
            description=body.get("description", ""),
            admin_state_up=body.get("admin_state_up", True),
        ),
        admin_state_up_set="admin_state_up" in body,
    )
    if body.get("external_gateway_info"):
        req.gateway.CopyFrom(_gateway(body["external_gateway_info"]))
    reply = await call(_stub(request).CreateRouter, req)
    return ok({"router": views.router(reply.router)}, 201)


@documented(tag=TAG)
async def show_router(request: Request) -> Response:
    """One router."""
    ctx = context(request)
    ctx.require_read("get_router")
    reply = await call(
        _stub(request).GetRouter,
        pb.GetRouterRequest(scope=scope(ctx), id=request.path_params["id"]),
    )
    return one(request, "router", views.router(reply.router))


@documented(body=schemas.wrapped("router", schemas.ROUTER_UPDATE), tag=TAG)
async def update_router(request: Request) -> Response:
    """Change a router or its gateway (static routes are not supported)."""
    ctx = context(request)
    ctx.require_write("update_router")
    body = await resource_body(request, "router", schemas.ROUTER_UPDATE)
    req = pb.UpdateRouterRequest(
        request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
    )
    for key in ("name", "description", "admin_state_up"):
        if key in body:
            setattr(req, key, body[key])
    if "external_gateway_info" in body:
        req.gateway.CopyFrom(_gateway(body["external_gateway_info"]))
    reply = await call(_stub(request).UpdateRouter, req)
    return ok({"router": views.router(reply.router)})


@documented(tag=TAG)
async def delete_router(request: Request) -> Response:
    """Delete a router (409 RouterInUse while it has interfaces)."""
    ctx = context(request)
    ctx.require_write("delete_router")
    await call(
        _stub(request).DeleteRouter,
        pb.DeleteRouterRequest(
            request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
        ),
    )
    return empty(204)


async def _interface_body(request: Request) -> dict[str, str]:
    body = await json_body(request)
    try:
        schemas.ROUTER_INTERFACE.validate(body)
    except ValidationFailed as exc:
        raise BadRequest(f"Invalid input for operation: {exc}") from None
    if not encodable(body):
        raise BadRequest("Malformed request body: strings must be valid UTF-8.")
    out: dict[str, str] = body
    return out


@documented(body=schemas.ROUTER_INTERFACE, tag=TAG)
async def add_router_interface(request: Request) -> Response:
    """Attach a subnet (a port holding its gateway address) or a port to a router."""
    ctx = context(request)
    ctx.require_write("add_router_interface")
    body = await _interface_body(request)
    reply = await call(
        _stub(request).AddRouterInterface,
        pb.AddRouterInterfaceRequest(
            request_id=request_id(request),
            scope=scope(ctx),
            router_id=request.path_params["id"],
            subnet_id=body.get("subnet_id", ""),
            port_id=body.get("port_id", ""),
        ),
    )
    return ok(views.router_interface(reply.interface))


@documented(body=schemas.ROUTER_INTERFACE, tag=TAG)
async def remove_router_interface(request: Request) -> Response:
    """Detach a subnet or port from a router, deleting the interface's port."""
    ctx = context(request)
    ctx.require_write("remove_router_interface")
    body = await _interface_body(request)
    reply = await call(
        _stub(request).RemoveRouterInterface,
        pb.RemoveRouterInterfaceRequest(
            request_id=request_id(request),
            scope=scope(ctx),
            router_id=request.path_params["id"],
            subnet_id=body.get("subnet_id", ""),
            port_id=body.get("port_id", ""),
        ),
    )
    return ok(views.router_interface(reply.interface))


# ------------------------------------------------------------------ floating IPs


@documented(tag=TAG)
async def list_floating_ips(request: Request) -> Response:
    """Floating IPs the caller sees."""
    ctx = context(request)
    ctx.require_read("get_floatingip")

    async def fetch(limit: int, marker: str) -> list[dict[str, Any]]:
        reply = await call(
            _stub(request).ListFloatingIps,
            pb.ListFloatingIpsRequest(scope=scope(ctx), limit=limit, marker=marker),
        )
        return [views.floating_ip(f) for f in reply.floating_ips]

    return await listing(request, "floatingips", fetch, attrs=views.FLOATING_IP_ATTRS)


@documented(body=schemas.wrapped("floatingip", schemas.FLOATING_IP_CREATE), tag=TAG)
async def create_floating_ip(request: Request) -> Response:
    """Allocate a floating IP from an external network (and associate it when asked)."""
    ctx = context(request)
    ctx.require_write("create_floatingip")
    body = await resource_body(request, "floatingip", schemas.FLOATING_IP_CREATE)
    fip = pb.FloatingIp(
        project_id=body.get("project_id", ""),
        floating_network_id=body["floating_network_id"],
        floating_ip_address=body.get("floating_ip_address", ""),
        port_id=body.get("port_id") or "",
        fixed_ip_address=body.get("fixed_ip_address") or "",
        description=body.get("description", ""),
    )
    reply = await call(
        _stub(request).CreateFloatingIp,
        pb.CreateFloatingIpRequest(
            request_id=request_id(request),
            scope=scope(ctx),
            floating_ip=fip,
            subnet_id=body.get("subnet_id", ""),
        ),
    )
    return ok({"floatingip": views.floating_ip(reply.floating_ip)}, 201)


@documented(tag=TAG)
async def show_floating_ip(request: Request) -> Response:
    """One floating IP."""
    ctx = context(request)
    ctx.require_read("get_floatingip")
    reply = await call(
        _stub(request).GetFloatingIp,
        pb.GetFloatingIpRequest(scope=scope(ctx), id=request.path_params["id"]),
    )
    return one(request, "floatingip", views.floating_ip(reply.floating_ip))


@documented(body=schemas.wrapped("floatingip", schemas.FLOATING_IP_UPDATE), tag=TAG)
async def update_floating_ip(request: Request) -> Response:
    """Associate a floating IP with a port (`port_id`), or disassociate it (null)."""
    ctx = context(request)
    ctx.require_write("update_floatingip")
    body = await resource_body(request, "floatingip", schemas.FLOATING_IP_UPDATE)
    req = pb.UpdateFloatingIpRequest(
        request_id=request_id(request),
        scope=scope(ctx),
        id=request.path_params["id"],
        fixed_ip_address=body.get("fixed_ip_address") or "",
    )
    if "port_id" in body:
        req.port_id = body["port_id"] or ""
    if "description" in body:
        req.description = body["description"]
    reply = await call(_stub(request).UpdateFloatingIp, req)
    return ok({"floatingip": views.floating_ip(reply.floating_ip)})


@documented(tag=TAG)
async def delete_floating_ip(request: Request) -> Response:
    """Release a floating IP."""
    ctx = context(request)
    ctx.require_write("delete_floatingip")
    await call(
        _stub(request).DeleteFloatingIp,
        pb.DeleteFloatingIpRequest(
            request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]
        ),
    )
    return empty(204)


# ------------------------------------------------------------------ quotas


def _limits(q: pb.Quota) -> dict[str, int]:
    return dict(sorted(q.limits.items()))


@documented(tag=TAG)
async def list_quotas(request: Request) -> Response:
    """Projects with limits of their own (admin)."""
    ctx = context(request)
    ctx.require_admin("get_quota")
    reply = await call(_stub(request).ListQuotas, pb.ListQuotasRequest(scope=scope(ctx)))
    return ok(
        {
            "quotas": [
                {**_limits(q), "tenant_id": q.project_id, "project_id": q.project_id}
                for q in reply.quotas
            ]
        }
    )


async def _get_quota(request: Request, *, defaults: bool) -> pb.Quota:
    ctx = context(request)
    ctx.require_read("get_quota")
    reply = await call(
        _stub(request).GetQuota,
        pb.GetQuotaRequest(
            scope=scope(ctx), project_id=request.path_params["project_id"], defaults=defaults
        ),
    )
    quota: pb.Quota = reply.quota
    return quota


@documented(tag=TAG)
async def show_quota(request: Request) -> Response:
    """A project's limits."""
    return ok({"quota": _limits(await _get_quota(request, defaults=False))})


@documented(tag=TAG)
async def show_quota_defaults(request: Request) -> Response:
    """The default limits."""
    return ok({"quota": _limits(await _get_quota(request, defaults=True))})


@documented(tag=TAG)
async def show_quota_details(request: Request) -> Response:
    """A project's limits with what it uses."""
    q = await _get_quota(request, defaults=False)
    return ok(
        {
            "quota": {
                r: {"limit": limit, "used": q.used.get(r, 0), "reserved": 0}
                for r, limit in sorted(q.limits.items())
            }
        }
    )


@documented(body=schemas.wrapped("quota", schemas.QUOTA_UPDATE), tag=TAG)
async def update_quota(request: Request) -> Response:
    """Set some of a project's limits (admin)."""
    ctx = context(request)
    ctx.require_admin("update_quota")
    body = await resource_body(request, "quota", schemas.QUOTA_UPDATE)
    reply = await call(
        _stub(request).UpdateQuota,
        pb.UpdateQuotaRequest(
            request_id=request_id(request),
            scope=scope(ctx),
            project_id=request.path_params["project_id"],
            limits=body,
        ),
    )
    return ok({"quota": _limits(reply.quota)})


@documented(tag=TAG)
async def delete_quota(request: Request) -> Response:
    """Back to the default limits (admin)."""
    ctx = context(request)
    ctx.require_admin("delete_quota")
    await call(
        _stub(request).DeleteQuota,
        pb.DeleteQuotaRequest(
            request_id=request_id(request),
            scope=scope(ctx),
            project_id=request.path_params["project_id"],
        ),
    )
    return empty(204)


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
