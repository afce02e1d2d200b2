"""The config drive: an ISO 9660 image (Joliet and Rock Ridge) labelled `config-2`.

Layout (the OpenStack config drive format, which cloud-init and similar guest agents read):

    openstack/latest/meta_data.json      uuid, name, hostname, public_keys, project_id, ...
    openstack/latest/user_data           the decoded user data (absent when none)
    openstack/latest/network_data.json   links, networks and services of the ports
    openstack/2012-08-10/...             meta_data.json and user_data again
    openstack/2015-10-15/...             all three again (network_data.json began there)

Rock Ridge and Joliet carry the real names; the ISO 9660 names beneath are upper-case
8.3-style forms that a guest never sees when it mounts with either extension.
pycdlib writes the image because no ISO tool ships on Loom's hosts.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pycdlib
from loom.compute.v1 import agent_bus_pb2

from nodeagent.network.names import tap_name

VOLUME_LABEL = "config-2"
VERSIONS = ("2012-08-10", "2015-10-15", "latest")
# network_data.json appeared in the 2015-10-15 version.
_NETWORK_DATA_FROM = "2015-10-15"


class ConfigDriveError(ValueError):
    """The spec cannot become a config drive; the message is safe to show the user."""


def wants_config_drive(spec: agent_bus_pb2.InstanceSpec) -> bool:
    """A config drive is attached when asked for, or when the guest has something to read
    from it: user data, a key, or ports."""
    return bool(spec.config_drive or spec.user_data or spec.key_data or len(spec.ports))


def meta_data(spec: agent_bus_pb2.InstanceSpec) -> dict[str, Any]:
    key_name = spec.key_name or "default"
    keys = (
        {"public_keys": {key_name: spec.key_data}, "keys": [_key(key_name, spec.key_data)]}
        if spec.key_data
        else {}
    )
    return {
        "uuid": spec.instance_id,
        "name": spec.display_name or spec.instance_name,
        "hostname": spec.hostname or spec.instance_name,
        "project_id": spec.project_id,
        "availability_zone": spec.availability_zone,
        "launch_index": spec.launch_index,
        "meta": dict(sorted(spec.metadata.items())),
        "devices": [],
        **keys,
    }


def _key(name: str, data: str) -> dict[str, str]:
    kind = "x509" if data.startswith("-----BEGIN CERTIFICATE") else "ssh"
    return {"name": name, "type": kind, "data": data}


def network_data(spec: agent_bus_pb2.InstanceSpec) -> dict[str, Any]:
    """network_data.json: an ethernet link per port (guest NIC order), an ipv4 network per
    fixed IP with its netmask and default route, and the DNS servers as services."""
    links: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    dns: list[str] = []
    for port in spec.ports:
        link_id = tap_name(port.port_id)
        links.append(
            {
                "id": link_id,
                "vif_id": port.port_id,
                "type": "bridge",
                "ethernet_mac_address": port.mac_address.lower(),
                "mtu": port.mtu or None,
            }
        )
        for fixed in port.fixed_ips:
            if ":" in fixed.ip_address:
                continue  # IPv6 is not wired (docs/networking.md)
            iface = ipaddress.IPv4Interface(f"{fixed.ip_address}/{fixed.prefixlen or 32}")
            routes = []
            if fixed.gateway_ip:
                routes.append(
                    {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": fixed.gateway_ip}
                )
            services = [{"type": "dns", "address": d} for d in fixed.dns_nameservers]
            networks.append(
                {
                    "id": f"network{len(networks)}",
                    "type": "ipv4",
                    "link": link_id,
                    "ip_address": str(iface.ip),
                    "netmask": str(iface.netmask),
                    "routes": routes,
                    "network_id": port.network_id,
                    "services": services,
                }
            )
            dns += [d for d in fixed.dns_nameservers if d not in dns]
    return {
        "links": links,
        "networks": networks,
        "services": [{"type": "dns", "address": d} for d in dns],
    }


def user_data(spec: agent_bus_pb2.InstanceSpec) -> bytes | None:
    if not spec.user_data:
        return None
    try:
        return base64.b64decode(spec.user_data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigDriveError("The instance's user data is not valid base64.") from exc


@dataclass(frozen=True)
class DriveFile:
    path: str  # e.g. "openstack/latest/meta_data.json"
    data: bytes


def drive_files(spec: agent_bus_pb2.InstanceSpec) -> list[DriveFile]:
    """Every file of the drive, in a stable order."""
    meta = json.dumps(meta_data(spec), sort_keys=True).encode()
    net = json.dumps(network_data(spec), sort_keys=True).encode()
    udata = user_data(spec)
    files = []
    for version in VERSIONS:
        base = f"openstack/{version}"
        files.append(DriveFile(f"{base}/meta_data.json", meta))
        if udata is not None:
            files.append(DriveFile(f"{base}/user_data", udata))
        if version >= _NETWORK_DATA_FROM:
            files.append(DriveFile(f"{base}/network_data.json", net))
    return files


# The EC2-style versions the metadata service answers (cloud-init's EC2 source asks for
# 2009-04-04); both hold the same documents.
EC2_VERSIONS = ("2009-04-04", "latest")


def ec2_meta_data(spec: agent_bus_pb2.InstanceSpec) -> dict[str, str]:
    """The EC2 `meta-data/` leaves (path under meta-data -> value), from the same values as
    meta_data.json and network_data.json."""
    meta = meta_data(spec)
    name = re.fullmatch(r"instance-([0-9a-f]{8})", spec.instance_name)
    leaves = {
        # Nova's EC2 id: i- and the instance's number in hex, as its name carries it.
        "instance-id": f"i-{name.group(1)}" if name else str(meta["uuid"]),
        "ami-launch-index": str(meta["launch_index"]),
        "hostname": str(meta["hostname"]),
        "local-hostname": str(meta["hostname"]),
        "placement/availability-zone": str(meta["availability_zone"]),
    }
    ips = [n["ip_address"] for n in network_data(spec)["networks"]]
    if ips:
        leaves["local-ipv4"] = ips[0]
    for n, key in enumerate(meta.get("keys", [])):
        if key["type"] == "ssh":
            leaves[f"public-keys/{n}/openssh-key"] = key["data"]
    return leaves


def metadata_tree(spec: agent_bus_pb2.InstanceSpec) -> dict[str, bytes]:
    """Every answer of the metadata service for this instance, path (no leading or trailing
    slash) -> body: the config drive's files under `openstack/`, the EC2 layout under
    `<version>/meta-data/` and `<version>/user-data`, and a listing for every folder
    (one name a line; a sub-folder ends in `/` in the EC2 layout, and `public-keys` lists
    `<n>=<key name>` as EC2 does). Raises ConfigDriveError for bad user data."""
    tree: dict[str, bytes] = {}
    listing: dict[str, list[str]] = {}

    def add(path: str, body: bytes, *, ec2: bool) -> None:
        tree[path] = body
        parts = path.split("/")
        for depth in range(len(parts)):
            parent, child = "/".join(parts[:depth]), parts[depth]
            if ec2 and depth < len(parts) - 1:
                child += "/"
            names = listing.setdefault(parent, [])
            if child not in names:
                names.append(child)

    for f in drive_files(spec):
        add(f.path, f.data, ec2=False)
    udata = user_data(spec)
    meta = meta_data(spec)
    for version in EC2_VERSIONS:
        for leaf, value in sorted(ec2_meta_data(spec).items()):
            add(f"{version}/meta-data/{leaf}", value.encode(), ec2=True)
        if udata is not None:
            add(f"{version}/user-data", udata, ec2=True)
        if meta.get("keys"):
            listing[f"{version}/meta-data/public-keys"] = [
                f"{n}={key['name']}" for n, key in enumerate(meta["keys"]) if key["type"] == "ssh"
            ]
    # The root lists the EC2 versions only, as Nova's does; /openstack is not in it.
    listing[""] = [v for v in EC2_VERSIONS]
    for folder, names in listing.items():
        tree[folder] = "\n".join(sorted(names)).encode()
    return tree


def _iso_name(part: str, *, is_file: bool) -> str:
    name = part.upper().replace("-", "_")
    return f"{name};1" if is_file else name


def build_iso(spec: agent_bus_pb2.InstanceSpec) -> bytes:
    """The config drive image of `spec`. Raises ConfigDriveError for bad user data."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_LABEL)
    made: set[str] = set()
    try:
        for f in drive_files(spec):
            parts = f.path.split("/")
            for depth in range(1, len(parts)):
                rel = "/".join(parts[:depth])
                if rel in made:
                    continue
                iso.add_directory(
                    "/" + "/".join(_iso_name(p, is_file=False) for p in parts[:depth]),
                    rr_name=parts[depth - 1],
                    joliet_path="/" + rel,
                )
                made.add(rel)
            iso_path = "/" + "/".join(
                _iso_name(p, is_file=i == len(parts) - 1) for i, p in enumerate(parts)
            )
            iso.add_fp(
                io.BytesIO(f.data),
                len(f.data),
                iso_path,
                rr_name=parts[-1],
                joliet_path="/" + f.path,
            )
        out = io.BytesIO()
        iso.write_fp(out)
        return out.getvalue()
    finally:
        iso.close()


def write_config_drive(spec: agent_bus_pb2.InstanceSpec, path: Path) -> Path:
    """Writes the image to `path` (temp file and rename: never a half-written drive)."""
    data = build_iso(spec)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)
    return path
