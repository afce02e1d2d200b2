"""NetworkService: the gRPC face of the network domain. Each call is one transaction; a
NetworkError ends it with its status code and its Network v2 type in the trailing
metadata `loom-error-type` (the gateway shows it as NeutronError.type)."""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc
from loom.network.v1 import network_pb2 as pb
from loom.network.v1 import network_pb2_grpc
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import (
    Base,
    FloatingIp,
    Network,
    Port,
    Router,
    SecurityGroup,
    SecurityGroupRule,
)
from controlplane.db.models import Subnet as SubnetRow
from controlplane.network import (
    bindings,
    change_feed,
    floating_ips,
    networks,
    port_security,
    ports,
    quotas,
    router_feed,
    routers,
    security_groups,
)
from controlplane.network.convert import (
    floating_ip_pb,
    group_pb,
    network_pb,
    port_pb,
    router_pb,
    rule_pb,
    subnet_pb,
)
from controlplane.network.errors import Conflict, Forbidden, Invalid, NetworkError
from controlplane.network.scope import Caller, Page
from controlplane.runtime.rpc import id_for_request, new_uuid

log = logging.getLogger(__name__)

ERROR_TYPE_KEY = "loom-error-type"

_CODES = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "conflict": grpc.StatusCode.FAILED_PRECONDITION,
    "quota": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "forbidden": grpc.StatusCode.PERMISSION_DENIED,
}

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Method = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def network_errors(fn: Method[Req, Resp]) -> Method[Req, Resp]:
    """Ends the call with the status and type of a NetworkError."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            try:
                return await fn(self, request, context)
            except IntegrityError as exc:
                # A constraint caught what a concurrent call did between our check and our
                # write (the same request twice, say): nothing of this call was kept.
                raise Conflict(
                    "Conflict", "A concurrent request changed the same resource; try again."
                ) from exc
        except NetworkError as exc:
            context.set_trailing_metadata(((ERROR_TYPE_KEY, exc.error_type),))
            await context.abort(_CODES[exc.kind], exc.message)
            raise  # abort raises; this keeps mypy sure the function never falls through

    return wrapper


Row = TypeVar("Row", bound=Base)


def _ident(kind: str, request_id: str) -> str:
    """The id a create makes: derived from the caller's request id, so a retry finds the
    row its first attempt made instead of making a second one."""
    return id_for_request(f"network.{kind}", request_id) if request_id else new_uuid()


async def _replayed(s: AsyncSession, model: type[Row], ident: str, caller: Caller) -> Row | None:
    """What an earlier attempt of the same create made, if any."""
    row = await s.get(model, ident)
    if row is not None and not caller.owns(str(getattr(row, "project_id", ""))):
        raise Conflict("RequestIdReused", "This request id was used by another project.")
    return row


class _Paged(Protocol):
    limit: int
    marker: str


def _page(request: _Paged) -> Page:
    return Page(limit=max(request.limit, 0), marker=request.marker)


def _take_bounds(limit: int, lease_seconds: float) -> tuple[int, float]:
    if limit < 0 or limit > change_feed.MAX_LIMIT:
        raise Invalid(f"limit must be between 0 and {change_feed.MAX_LIMIT}")
    if lease_seconds < 0 or lease_seconds > 3600:
        raise Invalid("lease_seconds must be between 0 and 3600")
    return change_feed.bounds(limit, lease_seconds)


async def _subnets_pb(s: AsyncSession, rows: Sequence[SubnetRow]) -> list[pb.Subnet]:
    """The subnets, each marked external when its network is (one query for all)."""
    external = (
        set(
            await s.scalars(
                select(Network.id).where(
                    Network.id.in_({r.network_id for r in rows}), Network.router_external.is_(True)
                )
            )
        )
        if rows
        else set()
    )
    return [subnet_pb(r, r.network_id in external) for r in rows]


def _caller(scope: pb.Scope) -> Caller:
    if not scope.project_id:
        raise Forbidden("A project scope is required.")
    return Caller(scope.project_id, scope.is_admin)


async def _create_subnet(s: AsyncSession, request: pb.CreateSubnetRequest) -> SubnetRow:
    caller, ident = _caller(request.scope), _ident("subnet", request.request_id)
    return await _replayed(s, SubnetRow, ident, caller) or await networks.create_subnet(
        s, caller, request, ident
    )


class NetworkServicer(network_pb2_grpc.NetworkServiceServicer):
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        auto_pool: str = "10.128.0.0/9",
        auto_prefixlen: int = 24,
        l3_host: str = "",
    ) -> None:
        self._sessions = sessions
        # The host whose agent serves every router (namespaces, NAT); "" for none, and then
        # gateways and floating IP associations are refused rather than left unserved.
        self._l3_host = l3_host
        self._auto_pool = ipaddress.IPv4Network(auto_pool)
        self._auto_prefixlen = auto_prefixlen

    # ------------------------------------------------------------------ networks

    async def _network_pb(self, s: AsyncSession, row: Any) -> pb.Network:
        ids = await networks.subnet_ids_of(s, [row.id])
        return network_pb(row, ids.get(row.id, []))

    @network_errors
    async def CreateNetwork(self, request: pb.CreateNetworkRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            return pb.CreateNetworkResponse(network=await self._create_network(s, request))

    @network_errors
    async def CreateNetworks(self, request: pb.CreateNetworksRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            made = [await self._create_network(s, item) for item in request.networks]
            return pb.CreateNetworksResponse(networks=made)

    async def _create_network(self, s: AsyncSession, request: pb.CreateNetworkRequest) -> Any:
        caller, ident = _caller(request.scope), _ident("network", request.request_id)
        row = await _replayed(s, Network, ident, caller) or await networks.create_network(
            s, caller, request, ident
        )
        return await self._network_pb(s, row)

    @network_errors
    async def GetNetwork(self, request: pb.GetNetworkRequest, context: Any) -> Any:
        async with self._sessions() as s:
            row = await networks.get_network(s, _caller(request.scope), request.id)
            return pb.GetNetworkResponse(network=await self._network_pb(s, row))

    @network_errors
    async def ListNetworks(self, request: pb.ListNetworksRequest, context: Any) -> Any:
        async with self._sessions() as s:
            rows = await networks.list_networks(s, _caller(request.scope), _page(request))
            ids = await networks.subnet_ids_of(s, [r.id for r in rows])
            return pb.ListNetworksResponse(
                networks=[network_pb(r, ids.get(r.id, [])) for r in rows]
            )

    @network_errors
    async def UpdateNetwork(self, request: pb.UpdateNetworkRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            row = await networks.update_network(s, _caller(request.scope), request)
            return pb.UpdateNetworkResponse(network=await self._network_pb(s, row))

    @network_errors
    async def DeleteNetwork(self, request: pb.DeleteNetworkRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            await networks.delete_network(s, _caller(request.scope), request.id)
        return pb.DeleteNetworkResponse()

    # ------------------------------------------------------------------ subnets

    @network_errors
    async def CreateSubnet(self, request: pb.CreateSubnetRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            row = await _create_subnet(s, request)
            return pb.CreateSubnetResponse(subnet=(await _subnets_pb(s, [row]))[0])

    @network_errors
    async def CreateSubnets(self, request: pb.CreateSubnetsRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            rows = [await _create_subnet(s, item) for item in request.subnets]
            return pb.CreateSubnetsResponse(subnets=await _subnets_pb(s, rows))

    @network_errors
    async def GetSubnet(self, request: pb.GetSubnetRequest, context: Any) -> Any:
        async with self._sessions() as s:
            row = await networks.get_subnet(s, _caller(request.scope), request.id)
            return pb.GetSubnetResponse(subnet=(await _subnets_pb(s, [row]))[0])

    @network_errors
    async def ListSubnets(self, request: pb.ListSubnetsRequest, context: Any) -> Any:
        async with self._sessions() as s:
            rows = await networks.list_subnets(
                s, _caller(request.scope), request.network_id, _page(request)
            )
            return pb.ListSubnetsResponse(subnets=await _subnets_pb(s, rows))

    @network_errors
    async def UpdateSubnet(self, request: pb.UpdateSubnetRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            row = await networks.update_subnet(s, _caller(request.scope), request)
            return pb.UpdateSubnetResponse(subnet=(await _subnets_pb(s, [row]))[0])

    @network_errors
    async def DeleteSubnet(self, request: pb.DeleteSubnetRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            await networks.delete_subnet(s, _caller(request.scope), request.id)
        return pb.DeleteSubnetResponse()

    # ------------------------------------------------------------------ ports

    async def _port_pb(self, s: AsyncSession, row: Port) -> pb.Port:
        ips, groups = await ports.details(s, [row.id])
        return port_pb(row, ips.get(row.id, []), groups.get(row.id, []))

    @network_errors
    async def CreatePort(self, request: pb.CreatePortRequest, context: Any) -> Any:
        made = await self._create_ports([request])
        return pb.CreatePortResponse(port=made[0])

    @network_errors
    async def CreatePorts(self, request: pb.CreatePortsRequest, context: Any) -> Any:
        return pb.CreatePortsResponse(ports=await self._create_ports(request.ports))

    async def _create_ports(self, requests: Sequence[pb.CreatePortRequest]) -> list[Any]:
        """Makes the ports in one transaction: all of them or none."""
        defaults: dict[str, str] = {}
        for request in requests:
            if not request.security_groups_set:
                project_id = _caller(request.scope).target_project(request.port.project_id)
                if project_id not in defaults:
                    defaults[project_id] = await security_groups.ensure_default(
                        self._sessions, project_id
                    )
        try:
            async with self._sessions.begin() as s:
                made = []
                for request in requests:
                    caller, ident = _caller(request.scope), _ident("port", request.request_id)
                    default_group = (
                        None
                        if request.security_groups_set
                        else defaults[caller.target_project(request.port.project_id)]
                    )
                    row = await _replayed(s, Port, ident, caller) or await ports.create_port(
                        s, caller, request, default_group, ident
                    )
                    made.append(await self._port_pb(s, row))
        except IntegrityError as exc:
            # Only the MAC can still collide here (a racing create chose the same one).
            raise Conflict(
                "MacAddressInUse", "Unable to complete operation: the mac address is in use."
            ) from exc
        return made

    @network_errors
    async def GetPort(self, request: pb.GetPortRequest, context: Any) -> Any:
        async with self._sessions() as s:
            row = await ports.get_port(s, _caller(request.scope), request.id)
            return pb.GetPortResponse(port=await self._port_pb(s, row))

    @network_errors
    async def ListPorts(self, request: pb.ListPortsRequest, context: Any) -> Any:
        async with self._sessions() as s:
            rows = await ports.list_ports(
                s,
                _caller(request.scope),
                request.network_id,
                request.device_id,
                _page(request),
                request.binding_host_id,
                list(request.device_ids),
            )
            ips, groups = await ports.details(s, [r.id for r in rows])
            return pb.ListPortsResponse(
                ports=[port_pb(r, ips.get(r.id, []), groups.get(r.id, [])) for r in rows]
            )

    @network_errors
    async def UpdatePort(self, request: pb.UpdatePortRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            row = await ports.update_port(s, _caller(request.scope), request)
            return pb.UpdatePortResponse(port=await self._port_pb(s, row))

    @network_errors
    async def DeletePort(self, request: pb.DeletePortRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            await ports.delete_port(s, _caller(request.scope), request.id)
        return pb.DeletePortResponse()

    @network_errors
    async def DeleteDevicePorts(self, request: pb.DeleteDevicePortsRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            gone = await ports.delete_device_ports(
                s, _caller(request.scope), request.device_id, request.keep_port_ids
            )
        return pb.DeleteDevicePortsResponse(port_ids=gone)

    @network_errors
    async def TakePortSecurityChanges(
        self, request: pb.TakePortSecurityChangesRequest, context: Any
    ) -> Any:
        limit, lease_s = _take_bounds(request.limit, request.lease_seconds)
        async with self._sessions.begin() as s:
            ids, hosts = await port_security.take(s, limit, lease_s)
        return pb.TakePortSecurityChangesResponse(
            change_ids=ids,
            hosts=[pb.HostPortSecurity(host=h, ports=b) for h, b in sorted(hosts.items())],
        )

    @network_errors
    async def AckPortSecurityChanges(
        self, request: pb.AckPortSecurityChangesRequest, context: Any
    ) -> Any:
        async with self._sessions.begin() as s:
            await port_security.ack(s, list(request.change_ids))
        return pb.AckPortSecurityChangesResponse()

    @network_errors
    async def TakeRouterChanges(self, request: pb.TakeRouterChangesRequest, context: Any) -> Any:
        limit, lease_s = _take_bounds(request.limit, request.lease_seconds)
        async with self._sessions.begin() as s:
            taken = await router_feed.take(s, limit, lease_s, self._l3_host)
        return pb.TakeRouterChangesResponse(
            change_ids=taken.change_ids,
            hosts=[pb.HostRouters(host=h, routers=b) for h, b in sorted(taken.hosts.items())],
            devices=[
                pb.DeviceFloatingIps(device_id=d, floating_ips=f)
                for d, f in sorted(taken.devices.items())
            ],
        )

    @network_errors
    async def AckRouterChanges(self, request: pb.AckRouterChangesRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            await router_feed.ack(s, list(request.change_ids), served=bool(self._l3_host))
        return pb.AckRouterChangesResponse()

    def _require_l3_host(self, what: str) -> None:
        if not self._l3_host:
            raise Invalid(
                f"Bad {what} request: no host serves routers in this cloud"
                " (network.l3_host is not set).",
                "BadRequest",
            )

    @network_errors
    async def BindDevicePorts(self, request: pb.BindDevicePortsRequest, context: Any) -> Any:
        if not request.project_id or not request.device_id or not request.host:
            raise Invalid("project_id, device_id and host are required")
        try:
            return await self._bind(request, None)
        except bindings.DefaultGroupMissing:
            # The project's first port: its default group is made in a transaction of its
            # own (nothing of the first attempt was written).
            default_group = await security_groups.ensure_default(self._sessions, request.project_id)
            return await self._bind(request, default_group)

    async def _bind(
        self, request: pb.BindDevicePortsRequest, default_group: str | None
    ) -> pb.BindDevicePortsResponse:
        async with self._sessions.begin() as s:
            try:
                bound = await bindings.bind_device_ports(s, request, default_group)
            except IntegrityError as exc:
                # Only the MAC can collide here (a racing create chose the same one).
                raise Conflict(
                    "MacAddressInUse", "Unable to complete operation: the mac address is in use."
                ) from exc
            if not bound.dhcp_missing:
                # The usual case: every network's DHCP port exists, and what the host
                # needs is read in the same transaction, the ports as written above.
                return await self._bound(
                    s, request.host, bound.ports, bound.written, (bound.nets, bound.subnets)
                )
        # A network's first server: its DHCP port is made in a transaction of its own (two
        # first binds racing make one), then what the host needs is read.
        await bindings.ensure_dhcp_ports(self._sessions, bound.dhcp_missing)
        async with self._sessions.begin() as s:
            return await self._bound(s, request.host, bound.ports, False, None)

    async def _bound(
        self,
        s: AsyncSession,
        host: str,
        rows: list[Port],
        written: bool,
        loaded: tuple[dict[str, Network], dict[str, SubnetRow]] | None,
    ) -> pb.BindDevicePortsResponse:
        """The answer of a bind: the ports and what the host's agent needs, read after the
        security revision is taken. Ports this transaction wrote are locked by it and as
        written; others are read again."""
        revision = await port_security.next_revision(s)  # before anything is read
        if not written:
            port_ids = [r.id for r in rows]
            found = await s.scalars(
                select(Port).where(Port.id.in_(port_ids)).execution_options(populate_existing=True)
            )
            by_id = {r.id: r for r in found}
            rows = [by_id[i] for i in port_ids]
        view = await bindings.host_view(s, rows, host, revision, loaded)
        return pb.BindDevicePortsResponse(
            ports=[port_pb(r, view.ips.get(r.id, []), view.groups.get(r.id, [])) for r in rows],
            bindings=view.bindings,
            dhcp=view.dhcp,
            network_names=view.network_names,
        )

    @network_errors
    async def GetAutoAllocatedNetwork(
        self, request: pb.GetAutoAllocatedNetworkRequest, context: Any
    ) -> Any:
        caller = _caller(request.scope)
        network_id = await bindings.auto_allocated_network(
            self._sessions, caller.project_id, self._auto_pool, self._auto_prefixlen
        )
        async with self._sessions() as s:
            row = await networks.get_network(s, caller, network_id)
            return pb.GetAutoAllocatedNetworkResponse(network=await self._network_pb(s, row))

    # ------------------------------------------------------------------ security groups

    async def _group_pb(self, s: AsyncSession, row: Any) -> pb.SecurityGroup:
        rules = await security_groups.rules_of(s, [row.id])
        return group_pb(row, rules.get(row.id, []))

    @network_errors
    async def CreateSecurityGroup(
        self, request: pb.CreateSecurityGroupRequest, context: Any
    ) -> Any:
        caller = _caller(request.scope)
        # The project's default group exists before any other (the name stays its own).
        await security_groups.ensure_default(
            self._sessions, caller.target_project(request.security_group.project_id)
        )
        ident = _ident("security_group", request.request_id)
        async with self._sessions.begin() as s:
            row = await _replayed(
                s, SecurityGroup, ident, caller
            ) or await security_groups.create_group(s, caller, request, ident)
            return pb.CreateSecurityGroupResponse(security_group=await self._group_pb(s, row))

    @network_errors
    async def GetSecurityGroup(self, request: pb.GetSecurityGroupRequest, context: Any) -> Any:
        async with self._sessions() as s:
            row = await security_groups.get_group(s, _caller(request.scope), request.id)
            return pb.GetSecurityGroupResponse(security_group=await self._group_pb(s, row))

    @network_errors
    async def ListSecurityGroups(self, request: pb.ListSecurityGroupsRequest, context: Any) -> Any:
        caller = _caller(request.scope)
        await security_groups.ensure_default(self._sessions, caller.project_id)
        async with self._sessions() as s:
            rows = await security_groups.list_groups(s, caller, _page(request))
            rules = await security_groups.rules_of(s, [r.id for r in rows])
            return pb.ListSecurityGroupsResponse(
                security_groups=[group_pb(r, rules.get(r.id, [])) for r in rows]
            )

    @network_errors
    async def UpdateSecurityGroup(
        self, request: pb.UpdateSecurityGroupRequest, context: Any
    ) -> Any:
        async with self._sessions.begin() as s:
            row = await security_groups.update_group(s, _caller(request.scope), request)
            return pb.UpdateSecurityGroupResponse(security_group=await self._group_pb(s, row))

    @network_errors
    async def DeleteSecurityGroup(
        self, request: pb.DeleteSecurityGroupRequest, context: Any
    ) -> Any:
        async with self._sessions.begin() as s:
            await security_groups.delete_group(s, _caller(request.scope), request.id)
        return pb.DeleteSecurityGroupResponse()

    @network_errors
    async def CreateSecurityGroupRule(
        self, request: pb.CreateSecurityGroupRuleRequest, context: Any
    ) -> Any:
        caller = _caller(request.scope)
        await security_groups.ensure_default(self._sessions, caller.project_id)
        ident = _ident("security_group_rule", request.request_id)
        async with self._sessions.begin() as s:
            row = await _replayed(
                s, SecurityGroupRule, ident, caller
            ) or await security_groups.create_rule(s, caller, request, ident)
            return pb.CreateSecurityGroupRuleResponse(rule=rule_pb(row))

    @network_errors
    async def GetSecurityGroupRule(
        self, request: pb.GetSecurityGroupRuleRequest, context: Any
    ) -> Any:
        async with self._sessions() as s:
            row = await security_groups.get_rule(s, _caller(request.scope), request.id)
            return pb.GetSecurityGroupRuleResponse(rule=rule_pb(row))

    @network_errors
    async def ListSecurityGroupRules(
        self, request: pb.ListSecurityGroupRulesRequest, context: Any
    ) -> Any:
        caller = _caller(request.scope)
        await security_groups.ensure_default(self._sessions, caller.project_id)
        async with self._sessions() as s:
            rows = await security_groups.list_rules(s, caller, _page(request))
            return pb.ListSecurityGroupRulesResponse(rules=[rule_pb(r) for r in rows])

    @network_errors
    async def DeleteSecurityGroupRule(
        self, request: pb.DeleteSecurityGroupRuleRequest, context: Any
    ) -> Any:
        async with self._sessions.begin() as s:
            await security_groups.delete_rule(s, _caller(request.scope), request.id)
        return pb.DeleteSecurityGroupRuleResponse()

    # ------------------------------------------------------------------ routers

    async def _router_pb(self, s: AsyncSession, row: Router) -> pb.Router:
        ips = await routers.gateway_addresses(s, [row])
        return router_pb(row, ips.get(row.gateway_port_id or "", []))

    @network_errors
    async def CreateRouter(self, request: pb.CreateRouterRequest, context: Any) -> Any:
        caller, ident = _caller(request.scope), _ident("router", request.request_id)
        if request.HasField("gateway") and request.gateway.network_id:
            self._require_l3_host("router")
        async with self._sessions.begin() as s:
            row = await _replayed(s, Router, ident, caller) or await routers.create_router(
                s, caller, request, ident
            )
            return pb.CreateRouterResponse(router=await self._router_pb(s, row))

    @network_errors
    async def GetRouter(self, request: pb.GetRouterRequest, context: Any) -> Any:
        async with self._sessions() as s:
            row = await routers.get_router(s, _caller(request.scope), request.id)
            return pb.GetRouterResponse(router=await self._router_pb(s, row))

    @network_errors
    async def ListRouters(self, request: pb.ListRoutersRequest, context: Any) -> Any:
        async with self._sessions() as s:
            rows = await routers.list_routers(s, _caller(request.scope), _page(request))
            ips = await routers.gateway_addresses(s, rows)
            return pb.ListRoutersResponse(
                routers=[router_pb(r, ips.get(r.gateway_port_id or "", [])) for r in rows]
            )

    @network_errors
    async def UpdateRouter(self, request: pb.UpdateRouterRequest, context: Any) -> Any:
        if request.HasField("gateway") and request.gateway.network_id:
            self._require_l3_host("router")
        async with self._sessions.begin() as s:
            row = await routers.update_router(s, _caller(request.scope), request)
            return pb.UpdateRouterResponse(router=await self._router_pb(s, row))

    @network_errors
    async def DeleteRouter(self, request: pb.DeleteRouterRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            await routers.delete_router(s, _caller(request.scope), request.id)
        return pb.DeleteRouterResponse()

    @network_errors
    async def AddRouterInterface(self, request: pb.AddRouterInterfaceRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            made = await routers.add_interface(s, _caller(request.scope), request)
        return pb.AddRouterInterfaceResponse(interface=made)

    @network_errors
    async def RemoveRouterInterface(
        self, request: pb.RemoveRouterInterfaceRequest, context: Any
    ) -> Any:
        async with self._sessions.begin() as s:
            gone = await routers.remove_interface(s, _caller(request.scope), request)
        return pb.RemoveRouterInterfaceResponse(interface=gone)

    # ------------------------------------------------------------------ floating IPs

    @network_errors
    async def CreateFloatingIp(self, request: pb.CreateFloatingIpRequest, context: Any) -> Any:
        caller, ident = _caller(request.scope), _ident("floating_ip", request.request_id)
        if request.floating_ip.port_id:
            self._require_l3_host("floatingip")
        async with self._sessions.begin() as s:
            row = await _replayed(
                s, FloatingIp, ident, caller
            ) or await floating_ips.create_floating_ip(s, caller, request, ident)
            return pb.CreateFloatingIpResponse(floating_ip=floating_ip_pb(row))

    @network_errors
    async def GetFloatingIp(self, request: pb.GetFloatingIpRequest, context: Any) -> Any:
        async with self._sessions() as s:
            row = await floating_ips.get_floating_ip(s, _caller(request.scope), request.id)
            return pb.GetFloatingIpResponse(floating_ip=floating_ip_pb(row))

    @network_errors
    async def ListFloatingIps(self, request: pb.ListFloatingIpsRequest, context: Any) -> Any:
        async with self._sessions() as s:
            rows = await floating_ips.list_floating_ips(s, _caller(request.scope), _page(request))
            return pb.ListFloatingIpsResponse(floating_ips=[floating_ip_pb(r) for r in rows])

    @network_errors
    async def UpdateFloatingIp(self, request: pb.UpdateFloatingIpRequest, context: Any) -> Any:
        if request.HasField("port_id") and request.port_id:
            self._require_l3_host("floatingip")
        async with self._sessions.begin() as s:
            row = await floating_ips.update_floating_ip(s, _caller(request.scope), request)
            return pb.UpdateFloatingIpResponse(floating_ip=floating_ip_pb(row))

    @network_errors
    async def DeleteFloatingIp(self, request: pb.DeleteFloatingIpRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            await floating_ips.delete_floating_ip(s, _caller(request.scope), request.id)
        return pb.DeleteFloatingIpResponse()

    # ------------------------------------------------------------------ quotas

    async def _quota(self, s: AsyncSession, project_id: str, defaults: bool) -> pb.Quota:
        limits = dict(quotas.DEFAULT_LIMITS) if defaults else await quotas.limits(s, project_id)
        used = {} if defaults else await quotas.usage(s, project_id)
        return pb.Quota(project_id=project_id, limits=limits, used=used)

    @network_errors
    async def GetQuota(self, request: pb.GetQuotaRequest, context: Any) -> Any:
        caller = _caller(request.scope)
        project_id = request.project_id or caller.project_id
        if project_id != caller.project_id and not caller.is_admin:
            raise Forbidden("Policy doesn't allow get_quota to be performed.")
        async with self._sessions() as s:
            return pb.GetQuotaResponse(quota=await self._quota(s, project_id, request.defaults))

    @network_errors
    async def UpdateQuota(self, request: pb.UpdateQuotaRequest, context: Any) -> Any:
        caller = _caller(request.scope)
        if not caller.is_admin:
            raise Forbidden("Policy doesn't allow update_quota to be performed.")
        async with self._sessions.begin() as s:
            await quotas.set_limits(s, request.project_id, dict(request.limits))
            await s.flush()
            return pb.UpdateQuotaResponse(quota=await self._quota(s, request.project_id, False))

    @network_errors
    async def DeleteQuota(self, request: pb.DeleteQuotaRequest, context: Any) -> Any:
        caller = _caller(request.scope)
        if not caller.is_admin:
            raise Forbidden("Policy doesn't allow delete_quota to be performed.")
        async with self._sessions.begin() as s:
            await quotas.reset(s, request.project_id)
        return pb.DeleteQuotaResponse()

    @network_errors
    async def ListQuotas(self, request: pb.ListQuotasRequest, context: Any) -> Any:
        caller = _caller(request.scope)
        if not caller.is_admin:
            raise Forbidden("Policy doesn't allow get_quota to be performed.")
        async with self._sessions() as s:
            projects = await quotas.projects_with_limits(s)
            return pb.ListQuotasResponse(quotas=[await self._quota(s, p, False) for p in projects])


__all__ = ["ERROR_TYPE_KEY", "NetworkServicer"]
