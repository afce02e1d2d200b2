"""What an instance folder records of the instance's network, and what the host serves
from those records.

    <instance folder>/ports.json     the PortBindings, in guest NIC order
    <instance folder>/dhcp.json      {"recorded_at_ns", "dhcp": [NetworkDhcp]}: the build
                                     command's DHCP service of each of its networks
    <instance folder>/metadata.json  {path: base64 body}: its metadata service answers
                                     (user data and keys: root only)
    <pending dir>/<port id>.json     a port's binding refreshed before its build came
                                     (RefreshPortSecurityCommand); the build takes it

Every binding carries the network service's security_revision: of two bindings of a port,
the higher revision is the newer state, and the records only ever move forward.

The driver writes them at build, before anything is plugged, and reads them back at every
start, at reconcile and at delete, so a restarted agent or a rebooted host serves the same
network again. Nothing here touches the host.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from google.protobuf import json_format
from loom.compute.v1 import agent_bus_pb2

from nodeagent.configdrive import metadata_tree
from nodeagent.network import DhcpLease, NetworkDhcp, Port, dhcp_from_proto, port_from_proto
from nodeagent.network.model import InvalidNetworkInput

PORTS_FILE = "ports.json"
DHCP_FILE = "dhcp.json"
METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class NetworkWiring:
    """A build's network input, validated before anything on the host changes."""

    ports: list[Port]
    bindings: list[agent_bus_pb2.PortBinding]
    dhcp: list[agent_bus_pb2.NetworkDhcp]
    documents: dict[str, bytes]  # the metadata service's answers (configdrive.metadata_tree)


def network_wiring(
    spec: agent_bus_pb2.InstanceSpec,
    dhcp: Sequence[agent_bus_pb2.NetworkDhcp],
    *,
    with_documents: bool,
) -> NetworkWiring:
    """The spec's ports, DHCP services and (when `with_documents`) metadata documents,
    validated. Raises InvalidNetworkInput or ConfigDriveError with a sentence for the
    instance's owner."""
    ports = [port_from_proto(p) for p in spec.ports]
    vnis = {p.network_id: p.vni for p in ports}
    seen: set[str] = set()
    for msg in dhcp:
        try:
            service = dhcp_from_proto(msg)
        except InvalidNetworkInput as exc:
            raise InvalidNetworkInput(f"The DHCP service of a network is invalid: {exc}.") from exc
        if service.network_id not in vnis:
            raise InvalidNetworkInput(
                "A DHCP service was given for a network that none of the ports is on."
            )
        if service.vni != vnis[service.network_id]:
            raise InvalidNetworkInput(
                "A DHCP service's vni differs from its network's segmentation_id."
            )
        if service.network_id in seen:
            raise InvalidNetworkInput("Two DHCP services were given for one network.")
        seen.add(service.network_id)
    documents = metadata_tree(spec) if ports and with_documents else {}
    return NetworkWiring(ports, list(spec.ports), list(dhcp), documents)


def _write_private(path: Path, text: str) -> None:
    """Writes a file only root reads, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)


def write(folder: Path, wiring: NetworkWiring) -> None:
    """Records the wiring in the instance folder (the ports first: a failure after this
    point is cleaned up by unplugging exactly these)."""
    (folder / PORTS_FILE).write_text(
        json.dumps([json_format.MessageToDict(p) for p in wiring.bindings])
    )
    _write_private(
        folder / DHCP_FILE,
        json.dumps(
            {
                "recorded_at_ns": time.time_ns(),
                "dhcp": [json_format.MessageToDict(d) for d in wiring.dhcp],
            }
        ),
    )
    _write_private(
        folder / METADATA_FILE,
        json.dumps({k: base64.b64encode(v).decode() for k, v in wiring.documents.items()}),
    )


def bindings(folder: Path) -> list[agent_bus_pb2.PortBinding]:
    """The recorded bindings, in guest NIC order; [] when none are recorded."""
    try:
        raw = json.loads((folder / PORTS_FILE).read_text())
        return [json_format.ParseDict(item, agent_bus_pb2.PortBinding()) for item in raw]
    except (OSError, ValueError, TypeError, json_format.ParseError):
        return []


def _write_bindings(folder: Path, items: Sequence[agent_bus_pb2.PortBinding]) -> None:
    tmp = folder / (PORTS_FILE + ".tmp")
    tmp.write_text(json.dumps([json_format.MessageToDict(p) for p in items]))
    tmp.replace(folder / PORTS_FILE)


def replace_binding(folder: Path, newer: agent_bus_pb2.PortBinding) -> bool:
    """Records `newer` in place of the folder's binding of the same port when its
    security_revision is higher; False when the folder has no such port or a binding as new."""
    items = bindings(folder)
    for i, item in enumerate(items):
        if item.port_id == newer.port_id:
            if newer.security_revision <= item.security_revision:
                return False
            items[i] = newer
            _write_bindings(folder, items)
            return True
    return False


def _pending_file(pending_dir: Path, port_id: str) -> Path:
    return pending_dir / f"{port_id}.json"


def _pending(pending_dir: Path, port_id: str) -> agent_bus_pb2.PortBinding | None:
    try:
        return json_format.Parse(
            _pending_file(pending_dir, port_id).read_text(), agent_bus_pb2.PortBinding()
        )
    except (OSError, ValueError, json_format.ParseError):
        return None


def keep_pending(pending_dir: Path, newer: agent_bus_pb2.PortBinding) -> bool:
    """Keeps the binding of a port no instance folder holds yet (its refresh came before
    its build), unless a binding as new is kept already."""
    held = _pending(pending_dir, newer.port_id)
    if held is not None and held.security_revision >= newer.security_revision:
        return False
    pending_dir.mkdir(parents=True, exist_ok=True)
    path = _pending_file(pending_dir, newer.port_id)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json_format.MessageToJson(newer))
    tmp.replace(path)
    return True


def newest(
    given: Sequence[agent_bus_pb2.PortBinding], *known: Sequence[agent_bus_pb2.PortBinding]
) -> list[agent_bus_pb2.PortBinding]:
    """`given` with each port's binding replaced by a known one of a higher revision."""
    best = {b.port_id: b for b in given}
    for items in known:
        for item in items:
            mine = best.get(item.port_id)
            if mine is not None and item.security_revision > mine.security_revision:
                best[item.port_id] = item
    return [best[b.port_id] for b in given]


def pending_for(pending_dir: Path, port_ids: Iterable[str]) -> list[agent_bus_pb2.PortBinding]:
    """The pending bindings kept for these ports."""
    found = (_pending(pending_dir, p) for p in port_ids)
    return [b for b in found if b is not None]


def drop_pending(pending_dir: Path, port_ids: Iterable[str], *, older_than_s: float = 0) -> None:
    """Forgets pending bindings: these ports', or (older_than_s > 0) every one older."""
    if older_than_s > 0:
        cutoff = time.time() - older_than_s
        for path in pending_dir.glob("*.json") if pending_dir.is_dir() else ():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
        return
    for port_id in port_ids:
        _pending_file(pending_dir, port_id).unlink(missing_ok=True)


def ports(folder: Path) -> list[Port]:
    """The ports wired for the instance at its build; [] when none are recorded."""
    try:
        raw = json.loads((folder / PORTS_FILE).read_text())
        return [
            port_from_proto(json_format.ParseDict(item, agent_bus_pb2.PortBinding()))
            for item in raw
        ]
    except (OSError, ValueError, json_format.ParseError):
        return []


def dhcp_messages(folder: Path) -> list[agent_bus_pb2.NetworkDhcp]:
    """The DHCP services the instance's build command carried."""
    return _dhcp_record(folder)[1]


def _dhcp_record(folder: Path) -> tuple[int, list[agent_bus_pb2.NetworkDhcp]]:
    try:
        raw = json.loads((folder / DHCP_FILE).read_text())
        messages = [json_format.ParseDict(i, agent_bus_pb2.NetworkDhcp()) for i in raw["dhcp"]]
        return int(raw["recorded_at_ns"]), messages
    except (OSError, ValueError, KeyError, TypeError, json_format.ParseError):
        return 0, []


def metadata(folder: Path) -> dict[str, bytes]:
    """The instance's metadata service answers (path -> body); {} when none are recorded."""
    try:
        raw = json.loads((folder / METADATA_FILE).read_text())
        return {str(k): base64.b64decode(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError):
        return {}


def dhcp_services(folders: Iterable[Path]) -> dict[str, NetworkDhcp]:
    """The DHCP service the host runs for each network its instances have ports on: the
    newest recorded service of the network (subnets, MTU, server MAC), holding the leases
    of the host's own ports only, each from the newest record that has it. An instance
    that left the host (its folder gone) takes its lease with it; other hosts' ports get
    theirs from their own hosts (distributed DHCP)."""
    records: list[tuple[int, NetworkDhcp]] = []
    local_macs: dict[str, set[str]] = {}
    for folder in folders:
        for port in ports(folder):
            local_macs.setdefault(port.network_id, set()).add(port.mac)
        when, messages = _dhcp_record(folder)
        for msg in messages:
            try:
                records.append((when, dhcp_from_proto(msg)))
            except InvalidNetworkInput:
                continue  # validated at build; a record edited since serves nothing
    newest: dict[str, NetworkDhcp] = {}
    leases: dict[str, dict[str, DhcpLease]] = {}
    for _when, service in sorted(records, key=lambda r: r[0]):
        newest[service.network_id] = service
        for lease in service.leases:
            leases.setdefault(service.network_id, {})[lease.mac] = lease
    return {
        net: replace(
            service,
            leases=tuple(
                lease
                for mac, lease in sorted(leases.get(net, {}).items())
                if mac in local_macs[net]
            ),
        )
        for net, service in newest.items()
        if net in local_macs
    }


# -- routers (the L3 host) ------------------------------------------------------------------
# `<network_state_dir>/routers/<router id>.json`: the newest RouterBinding the host was sent
# for each router, a deleted one kept as a tombstone (so an older binding arriving late
# cannot bring the router back) until the reconcile forgets it after an hour.


def _router_file(routers_dir: Path, router_id: str) -> Path:
    return routers_dir / f"{router_id}.json"


def _router(routers_dir: Path, router_id: str) -> agent_bus_pb2.RouterBinding | None:
    path = _router_file(routers_dir, router_id)
    if not path.is_file():
        return None
    return json_format.Parse(path.read_text(), agent_bus_pb2.RouterBinding())


def keep_router(routers_dir: Path, newer: agent_bus_pb2.RouterBinding) -> bool:
    """Records the router's binding unless one as new is recorded; True when recorded."""
    held = _router(routers_dir, newer.router_id)
    if held is not None and held.revision >= newer.revision:
        return False
    routers_dir.mkdir(parents=True, exist_ok=True)
    _write_private(_router_file(routers_dir, newer.router_id), json_format.MessageToJson(newer))
    return True


def routers(routers_dir: Path) -> list[agent_bus_pb2.RouterBinding]:
    """Every recorded router binding, tombstones included, by router id."""
    if not routers_dir.is_dir():
        return []
    found = (_router(routers_dir, p.stem) for p in sorted(routers_dir.glob("*.json")))
    return [b for b in found if b is not None]


def drop_router_tombstones(routers_dir: Path, *, older_than_s: float) -> None:
    cutoff = time.time() - older_than_s
    for binding in routers(routers_dir):
        path = _router_file(routers_dir, binding.router_id)
        with contextlib.suppress(OSError):
            if binding.deleted and path.stat().st_mtime < cutoff:
                path.unlink()
