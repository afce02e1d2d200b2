"""A server's NICs: its ports, bound to the host it is built on, asked of the network
service (gRPC, through the typed `PortsClient`).

`bind_on_host` is the one function every build on a host uses (the first build, a
reschedule, a resize or migration's destination, an unshelve): it gets or creates the
server's ports (the same ports on every call: their ids follow from the server's id and the
NIC's index), binds them to the host, and returns what goes into the build (spec.ports,
BuildInstanceCommand.dhcp) and onto the instance row (network_info, addresses).
`release` deletes a server's ports, and unbinds and keeps the ports a user handed in."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from loom.compute.v1 import agent_bus_pb2
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.conductor.context import Conductor
from controlplane.db.models import Instance
from controlplane.network.client import HostPorts, RequestedNic

log = logging.getLogger(__name__)


class PortsUnavailable(Exception):
    """The network service refused the server's ports (no free address, quota, a port
    taken meanwhile): the build fails with this message as its fault."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# Statuses that say the network service could not be reached or could not answer now (an
# outage, a deadline, a conflict to retry): the build's message is retried. Any other
# status is the domain's answer about this server's ports, and the build fails with it;
# an unexpected error (INTERNAL, UNKNOWN) would fail again on every retry.
_RETRIED = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)
_REFUSALS = {
    grpc.StatusCode.NOT_FOUND: 400,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 403,
    grpc.StatusCode.PERMISSION_DENIED: 403,
}


def refusal_code(status: grpc.StatusCode) -> int | None:
    """The fault code a build fails with for this status of the network service's
    answer; None when the call is to be retried."""
    if status in _RETRIED:
        return None
    return _REFUSALS.get(status, 500)


@dataclass(frozen=True)
class Nics:
    """A server's ports on one host: what its build carries and what its row records."""

    ports: list[agent_bus_pb2.PortBinding]
    dhcp: list[agent_bus_pb2.NetworkDhcp]
    network_info: list[dict[str, Any]]
    addresses: list[dict[str, Any]]


def requested_of(row: Instance) -> tuple[list[RequestedNic], list[str] | None] | None:
    """The NICs the server asked for and its security groups (None: the project's
    default); None for a server with no network."""
    asked = row.requested_networks
    if not asked:
        return None
    nics = [
        RequestedNic(
            network_id=str(n.get("network_id", "")),
            port_id=str(n.get("port_id", "")),
            fixed_ip=str(n.get("fixed_ip", "")),
        )
        for n in asked.get("networks", [])
    ]
    groups = asked.get("security_group_ids")
    return nics, None if groups is None else [str(g) for g in groups]


def user_ports(row: Instance) -> list[str]:
    """The ports the user handed in: they outlive the server."""
    asked = row.requested_networks or {}
    return [str(n["port_id"]) for n in asked.get("networks", []) if n.get("port_id")]


def _nics_of(found: HostPorts, user: set[str]) -> Nics:
    info: list[dict[str, Any]] = []
    addresses: list[dict[str, Any]] = []
    for port, name, binding in zip(found.ports, found.network_names, found.bindings, strict=True):
        info.append(
            {
                "port_id": port.id,
                "network_id": port.network_id,
                "network_name": name,
                "mac_address": port.mac_address,
                "fixed_ips": [{"subnet_id": s, "ip_address": a} for s, a in port.fixed_ips],
                "user_port": port.id in user,
                # What the host wires, kept so a rebuild or a reconcile on the same host
                # describes the NIC again without asking (see convert.instance_spec).
                "binding": json_format.MessageToDict(binding, preserving_proto_field_name=True),
            }
        )
        addresses.extend(
            {
                "network": name,
                "address": a,
                "version": 4,
                "type": "fixed",
                "mac_address": port.mac_address,
            }
            for _, a in port.fixed_ips
        )
    return Nics(list(found.bindings), list(found.dhcp), info, addresses)


async def bind_on_host(conductor: Conductor, row: Instance, host: str) -> Nics | None:
    """The server's ports bound to `host` (None for a server with no network). Raises
    PortsUnavailable when the network domain refuses them (the caller fails the build),
    and grpc.aio.AioRpcError when the service cannot be reached (the caller retries)."""
    asked = requested_of(row)
    if asked is None:
        return None
    if conductor.network is None:
        raise PortsUnavailable("This conductor has no network service to ask for ports.", 500)
    nics, groups = asked
    try:
        found = await conductor.network.bind_server_ports(
            request_id=f"bind-{row.uuid}-{host}",
            project_id=row.project_id,
            device_id=row.uuid,
            host=host,
            requested=nics,
            security_group_ids=groups,
        )
    except grpc.aio.AioRpcError as exc:
        code = refusal_code(exc.code())
        if code is None:
            raise
        message = exc.details() or "The server's ports could not be made."
        raise PortsUnavailable(message, code) from exc
    return _nics_of(found, set(user_ports(row)))


def with_ports(spec: agent_bus_pb2.InstanceSpec, nics: Nics | None) -> agent_bus_pb2.InstanceSpec:
    """The spec with the server's ports on its host (unchanged for no network)."""
    if nics is not None:
        del spec.ports[:]
        spec.ports.extend(nics.ports)
    return spec


async def rebind(
    conductor: Conductor, session: AsyncSession, row: Instance, host: str
) -> Nics | None:
    """`bind_on_host` for a server that moves to (or back to) `host`, recording its
    ports' new state on the row in `session`'s transaction."""
    found = await bind_on_host(conductor, row, host)
    if found is not None:
        await session.execute(
            update(Instance)
            .where(Instance.id == row.id)
            .values(network_info=found.network_info, addresses=found.addresses)
        )
        row.network_info, row.addresses = found.network_info, found.addresses
    return found


async def release(conductor: Conductor, row: Instance) -> None:
    """Deletes the server's ports, unbinding and keeping those a user handed in.
    Idempotent. A server with no network costs nothing."""
    if row.requested_networks is None or conductor.network is None:
        return
    await conductor.network.delete_ports(
        request_id=f"release-{row.uuid}",
        project_id=row.project_id,
        device_id=row.uuid,
        keep=user_ports(row),
    )
