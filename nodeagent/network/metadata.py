"""The metadata service at 169.254.169.254, one per network, in its DHCP namespace.

The address sits on the DHCP namespace's interface (`dhn…`, beside the DHCP server's
own), and guests reach it through the classless static route DHCP hands them (dhcp.py).
The server (`metadata_server.py`, a process of its own like dnsmasq, so it outlives an
agent restart) answers from one file per fixed IP under `<dhcp folder>/metadata/`, which
the agent writes with `publish` and removes with `withdraw`; the documents are the config
drive's (nodeagent.configdrive.metadata_tree), so both always agree.

Files: `metadata/<ip>.json`, `metadata.pid`, `metadata.log` in the network's DHCP folder;
they go with it when the network's last port leaves the host.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from nodeagent.network.dhcp import DhcpService
from nodeagent.network.model import METADATA_IP
from nodeagent.network.names import dhcp_ns_end
from nodeagent.network.runner import Runner

log = logging.getLogger(__name__)

SERVER_SCRIPT = Path(__file__).with_name("metadata_server.py")
METADATA_PORT = 80


class MetadataService:
    """Runs, feeds and stops each network's metadata server. Idempotent both ways."""

    def __init__(self, dhcp: DhcpService) -> None:
        self._dhcp = dhcp

    def _folder(self, network_id: str) -> Path:
        return self._dhcp.folder(network_id)

    def documents_dir(self, network_id: str) -> Path:
        return self._folder(network_id) / "metadata"

    def pid(self, network_id: str) -> int | None:
        """The running metadata server of the network, or None."""
        return self._dhcp.running_pid(
            self._folder(network_id) / "metadata.pid", self.documents_dir(network_id)
        )

    def ensure(self, network_id: str) -> int:
        """Postcondition: 169.254.169.254/32 is on the network's DHCP interface and its
        metadata server answers there. Needs the network's DHCP namespace (DhcpService
        .ensure). Returns the server's pid."""
        inside = Runner(self._dhcp.namespace(network_id))
        inner = dhcp_ns_end(network_id)
        have = inside.run(["ip", "-4", "-o", "addr", "show", "dev", inner])
        if f" {METADATA_IP}/32 " not in have:
            inside.run(["ip", "addr", "add", f"{METADATA_IP}/32", "dev", inner])
        pid = self.pid(network_id)
        if pid is not None:
            return pid
        folder = self._folder(network_id)
        self.documents_dir(network_id).mkdir(parents=True, exist_ok=True)
        inside.run(
            [
                sys.executable,
                "-I",  # standard library only: nothing of the agent's environment
                str(SERVER_SCRIPT),
                f"--root={self.documents_dir(network_id)}",
                f"--pid-file={folder / 'metadata.pid'}",
                f"--log-file={folder / 'metadata.log'}",
                f"--address={METADATA_IP}",
                f"--port={METADATA_PORT}",
            ]
        )
        pid = self.pid(network_id)
        if pid is None:
            raise RuntimeError(f"the metadata server of network {network_id} did not start")
        log.info("metadata server started", extra={"network_id": network_id, "pid": pid})
        return pid

    def remove(self, network_id: str) -> None:
        """Stops the server (its files go with the DHCP folder). Succeeds if absent."""
        pid = self.pid(network_id)
        if pid is not None:
            DhcpService.kill(pid)

    def publish(
        self, network_id: str, port_id: str, ips: Iterable[str], files: Mapping[str, bytes]
    ) -> bool:
        """Serves `files` (path -> body) to the guest holding `ips` on the network, and
        nothing more for this port's other addresses. False (and nothing written) when the
        network has no DHCP service on this host, so no metadata server either."""
        docs = self.documents_dir(network_id)
        if not self._folder(network_id).is_dir():
            return False
        docs.mkdir(exist_ok=True)
        body = json.dumps(
            {
                "port_id": port_id,
                "files": {p: base64.b64encode(b).decode() for p, b in sorted(files.items())},
            },
            sort_keys=True,
        )
        wanted = set(ips)
        for ip in sorted(wanted):
            path = docs / f"{ip}.json"
            if path.exists() and path.read_text() == body:
                continue
            tmp = docs / f".{ip}.tmp"
            tmp.write_text(body)
            tmp.chmod(0o600)
            tmp.replace(path)
        for ip, owner in self._owners(network_id).items():
            if owner == port_id and ip not in wanted:
                (docs / f"{ip}.json").unlink(missing_ok=True)
        return True

    def withdraw(self, port_ids: Iterable[str]) -> None:
        """Removes the documents of these ports from every network. Succeeds if absent."""
        gone = set(port_ids)
        for network_id in self._dhcp.namespaces():
            for ip, owner in self._owners(network_id).items():
                if owner in gone:
                    (self.documents_dir(network_id) / f"{ip}.json").unlink(missing_ok=True)

    def published_ports(self) -> set[str]:
        """Ids of the ports that have documents on this host."""
        return {
            owner
            for network_id in self._dhcp.namespaces()
            for owner in self._owners(network_id).values()
        }

    def _owners(self, network_id: str) -> dict[str, str]:
        """Fixed IP -> port id of every document file of the network."""
        docs = self.documents_dir(network_id)
        found: dict[str, str] = {}
        if not docs.is_dir():
            return found
        for path in docs.glob("*.json"):
            try:
                found[path.stem] = str(json.loads(path.read_text())["port_id"])
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # a torn or foreign file serves no one
        return found
