"""What the compute service asks of the network domain for a server's NICs, as a typed
Protocol and its gRPC implementation.

The hand-off (docs/design.md, "Ports of a server"): before a build, the compute service
creates one port per requested network in the server's project (`create_port`, device_id
the server's id), binds each to the chosen host (`bind_port`, which makes it ACTIVE), and
deletes them with the server (`delete_ports`, idempotent)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from loom.compute.v1 import agent_bus_pb2 as agent
from loom.network.v1 import network_pb2 as pb
from loom.network.v1 import network_pb2_grpc

# Device owner of a server's ports (the value Network v2 clients expect).
COMPUTE_OWNER = "compute:nova"
DEADLINE_S = 30.0


@dataclass(frozen=True)
class ServerPort:
    """A server's NIC as the compute service needs it."""

    id: str
    network_id: str
    mac_address: str
    # (subnet_id, ip_address) pairs.
    fixed_ips: tuple[tuple[str, str], ...]
    binding_host_id: str
    status: str


@dataclass(frozen=True)
class RequestedNic:
    """One NIC a server asked for: a new port on `network_id` (at `fixed_ip` when given),
    or the existing port `port_id`."""

    network_id: str = ""
    port_id: str = ""
    fixed_ip: str = ""


@dataclass(frozen=True)
class HostPorts:
    """A server's ports bound to one host, and what that host's agent wires for them."""

    ports: list[ServerPort]
    network_names: list[str]
    bindings: list[agent.PortBinding]
    dhcp: list[agent.NetworkDhcp]


@dataclass(frozen=True)
class SecurityChanges:
    """Security changes taken from the network domain: the bindings each host must apply,
    and the change ids to acknowledge once they are queued for the hosts."""

    change_ids: list[int]
    hosts: dict[str, list[agent.PortBinding]]


class PortSecurityFeed(Protocol):
    async def take_security_changes(self, *, limit: int, lease_s: float) -> SecurityChanges:
        """Claims unsent changes for lease_s seconds (network.v1 TakePortSecurityChanges)."""
        ...

    async def ack_security_changes(self, change_ids: Sequence[int]) -> None:
        """Forgets changes whose bindings are queued for their hosts."""
        ...


@dataclass(frozen=True)
class RouterUpdates:
    """Router changes taken from the network domain: the router bindings each host (the
    L3 host) must apply, and the change ids to acknowledge once they are queued."""

    change_ids: list[int]
    hosts: dict[str, list[agent.RouterBinding]]
    # Servers whose floating IPs changed: all their floating IPs now.
    devices: dict[str, list[agent.FloatingIpMapping]]


class RouterFeed(Protocol):
    async def take_router_changes(self, *, limit: int, lease_s: float) -> RouterUpdates:
        """Claims unsent router changes for lease_s seconds (network.v1 TakeRouterChanges)."""
        ...

    async def ack_router_changes(self, change_ids: Sequence[int]) -> None:
        """Forgets router changes whose bindings are queued for their host."""
        ...


class PortsClient(Protocol):
    async def create_port(
        self,
        *,
        request_id: str,
        project_id: str,
        network_id: str,
        device_id: str,
        fixed_ips: Sequence[tuple[str, str]] = (),
        security_group_ids: Sequence[str] | None = None,
    ) -> ServerPort:
        """A port on `network_id` for the server `device_id`, in the server's project (so
        only a network that project sees will do); addresses from `fixed_ips`
        ((subnet_id, ip_address), either may be empty) or one chosen by IPAM; the
        project's default security group unless groups are named. Nothing is left when
        it fails (grpc.aio.AioRpcError with the domain's status and type)."""
        ...

    async def bind_port(self, *, request_id: str, port_id: str, host: str) -> ServerPort:
        """Binds the port to `host` (ACTIVE); binding again to the same host is a no-op."""
        ...

    async def delete_ports(
        self, *, request_id: str, project_id: str, device_id: str, keep: Sequence[str] = ()
    ) -> list[str]:
        """Deletes every port of the server but those in `keep`, which are unbound and
        released (a user's own ports); succeeds (returning []) when none is left."""
        ...

    async def bind_server_ports(
        self,
        *,
        request_id: str,
        project_id: str,
        device_id: str,
        host: str,
        requested: Sequence[RequestedNic],
        security_group_ids: Sequence[str] | None = None,
    ) -> HostPorts:
        """Gets or creates the server's ports (one per requested NIC, the same ones on
        every retry), binds them to `host` and returns what the host wires. Nothing of the
        call is left when it fails."""
        ...

    async def auto_allocated_network(self, *, request_id: str, project_id: str) -> str:
        """The id of the project's "get me a network" network, made once."""
        ...


def _server_port(p: pb.Port) -> ServerPort:
    return ServerPort(
        id=p.id,
        network_id=p.network_id,
        mac_address=p.mac_address,
        fixed_ips=tuple((f.subnet_id, f.ip_address) for f in p.fixed_ips),
        binding_host_id=p.binding_host_id,
        status=p.status,
    )


class GrpcPortsClient:
    """PortsClient over loom.network.v1 (the compute service's mTLS identity is allowed to
    call NetworkService: controlplane/runtime/callers.py)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = network_pb2_grpc.NetworkServiceStub(channel)

    async def create_port(
        self,
        *,
        request_id: str,
        project_id: str,
        network_id: str,
        device_id: str,
        fixed_ips: Sequence[tuple[str, str]] = (),
        security_group_ids: Sequence[str] | None = None,
    ) -> ServerPort:
        port = pb.Port(
            network_id=network_id,
            device_id=device_id,
            device_owner=COMPUTE_OWNER,
            fixed_ips=[pb.FixedIp(subnet_id=s, ip_address=a) for s, a in fixed_ips],
            security_group_ids=list(security_group_ids or ()),
        )
        reply = await self._stub.CreatePort(
            pb.CreatePortRequest(
                request_id=request_id,
                # The tenant's own scope: its networks and groups only.
                scope=pb.Scope(project_id=project_id, is_admin=False),
                port=port,
                fixed_ips_set=bool(fixed_ips),
                security_groups_set=security_group_ids is not None,
            ),
            timeout=DEADLINE_S,
        )
        return _server_port(reply.port)

    async def bind_port(self, *, request_id: str, port_id: str, host: str) -> ServerPort:
        req = pb.UpdatePortRequest(
            request_id=request_id,
            # Binding is the compute service's act, not the tenant's.
            scope=pb.Scope(project_id="loom-compute", is_admin=True),
            id=port_id,
            binding_host_id=host,
        )
        reply = await self._stub.UpdatePort(req, timeout=DEADLINE_S)
        return _server_port(reply.port)

    async def delete_ports(
        self, *, request_id: str, project_id: str, device_id: str, keep: Sequence[str] = ()
    ) -> list[str]:
        reply = await self._stub.DeleteDevicePorts(
            pb.DeleteDevicePortsRequest(
                request_id=request_id,
                scope=pb.Scope(project_id=project_id, is_admin=False),
                device_id=device_id,
                keep_port_ids=list(keep),
            ),
            timeout=DEADLINE_S,
        )
        return list(reply.port_ids)

    async def bind_server_ports(
        self,
        *,
        request_id: str,
        project_id: str,
        device_id: str,
        host: str,
        requested: Sequence[RequestedNic],
        security_group_ids: Sequence[str] | None = None,
    ) -> HostPorts:
        reply = await self._stub.BindDevicePorts(
            pb.BindDevicePortsRequest(
                request_id=request_id,
                project_id=project_id,
                device_id=device_id,
                host=host,
                requested=[
                    pb.RequestedPort(
                        network_id=r.network_id, port_id=r.port_id, fixed_ip=r.fixed_ip
                    )
                    for r in requested
                ],
                security_group_ids=list(security_group_ids or ()),
                security_groups_set=security_group_ids is not None,
            ),
            timeout=DEADLINE_S,
        )
        return HostPorts(
            ports=[_server_port(p) for p in reply.ports],
            network_names=list(reply.network_names),
            bindings=list(reply.bindings),
            dhcp=list(reply.dhcp),
        )

    async def auto_allocated_network(self, *, request_id: str, project_id: str) -> str:
        reply = await self._stub.GetAutoAllocatedNetwork(
            pb.GetAutoAllocatedNetworkRequest(
                request_id=request_id, scope=pb.Scope(project_id=project_id, is_admin=False)
            ),
            timeout=DEADLINE_S,
        )
        return str(reply.network.id)

    async def take_security_changes(self, *, limit: int, lease_s: float) -> SecurityChanges:
        reply = await self._stub.TakePortSecurityChanges(
            pb.TakePortSecurityChangesRequest(limit=limit, lease_seconds=lease_s),
            timeout=DEADLINE_S,
        )
        return SecurityChanges(
            change_ids=list(reply.change_ids),
            hosts={h.host: list(h.ports) for h in reply.hosts},
        )

    async def ack_security_changes(self, change_ids: Sequence[int]) -> None:
        await self._stub.AckPortSecurityChanges(
            pb.AckPortSecurityChangesRequest(change_ids=list(change_ids)), timeout=DEADLINE_S
        )

    async def take_router_changes(self, *, limit: int, lease_s: float) -> RouterUpdates:
        reply = await self._stub.TakeRouterChanges(
            pb.TakeRouterChangesRequest(limit=limit, lease_seconds=lease_s), timeout=DEADLINE_S
        )
        return RouterUpdates(
            change_ids=list(reply.change_ids),
            hosts={h.host: list(h.routers) for h in reply.hosts},
            devices={d.device_id: list(d.floating_ips) for d in reply.devices},
        )

    async def ack_router_changes(self, change_ids: Sequence[int]) -> None:
        await self._stub.AckRouterChanges(
            pb.AckRouterChangesRequest(change_ids=list(change_ids)), timeout=DEADLINE_S
        )
