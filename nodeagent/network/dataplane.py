"""`HostDataPlane`: plug and unplug ports, and make a host match a desired set.

Nothing is kept in memory: what the host has is read back from the devices' aliases
(`loom:port:<id>`, `loom:network:<id>`, `loom:vxlan:<id>`, `loom:dhcp:<id>`,
`loom:router:<id>`), the `loom-*` chains, the DHCP state folders and the `qrouter-`
namespaces. So an agent that restarts, or one that
crashed halfway through a plug, needs nothing but `reconcile(desired)`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from nodeagent.network.bridge import NetworkBridge, PortTap, VxlanConfig
from nodeagent.network.dhcp import DhcpService
from nodeagent.network.firewall import SecurityGroupFirewall
from nodeagent.network.metadata import MetadataService
from nodeagent.network.model import InvalidNetworkInput, NetworkDhcp, Port, Router
from nodeagent.network.names import parse_alias
from nodeagent.network.router import RouterNamespaces
from nodeagent.network.runner import Runner

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(
    method: Callable[Concatenate[HostDataPlane, _P], _R],
) -> Callable[Concatenate[HostDataPlane, _P], _R]:
    def run(self: HostDataPlane, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    run.__doc__ = method.__doc__
    return run


@dataclass(frozen=True)
class DataPlaneConfig:
    """A host's data plane settings (`[agent]` keys network_*)."""

    local_ip: str
    underlay_device: str = ""
    peers: tuple[str, ...] = ()
    state_dir: Path = Path("/var/lib/loom/network")
    # Run every host-side command in this network namespace (tests: a namespace per host).
    netns: str = ""


@dataclass
class HostNetworkState:
    """What the host has now, as read from the kernel and the state folder."""

    ports: dict[str, str] = field(default_factory=dict)  # port_id -> network_id
    networks: dict[str, int] = field(default_factory=dict)  # network_id -> vni
    orphan_taps: set[str] = field(default_factory=set)
    chain_keys: set[str] = field(default_factory=set)
    dhcp: set[str] = field(default_factory=set)  # network ids with DHCP state
    # router_id -> ids of the networks its legs are on (empty: a namespace with no legs)
    routers: dict[str, set[str]] = field(default_factory=dict)

    def networks_in_use(self) -> set[str]:
        """Networks a port or a router leg is on: their bridges and VXLANs must stay."""
        return set(self.ports.values()).union(*self.routers.values())


class HostDataPlane:
    def __init__(self, config: DataPlaneConfig) -> None:
        self.config = config
        self.runner = Runner(config.netns)
        vx = VxlanConfig(config.local_ip, config.underlay_device, config.peers)
        self.bridges = NetworkBridge(self.runner, vx)
        self.taps = PortTap(self.runner)
        self.firewall = SecurityGroupFirewall(self.runner)
        self.dhcp = DhcpService(self.runner, config.state_dir)
        self.metadata = MetadataService(self.dhcp)
        self.routers = RouterNamespaces(self.runner)
        # Builds run in worker threads; two plugs of one network must not race to make
        # its bridge. Reentrant: reconcile plugs.
        self._lock = threading.RLock()

    @_locked
    def plug(self, port: Port, dhcp: NetworkDhcp | None = None) -> str:
        """Postcondition: the port's network bridge and VXLAN exist, its tap is on the
        bridge, its chains hold its rules, and the network's DHCP runs when `dhcp` is
        given (with its metadata server). Idempotent. Returns the tap name."""
        self.bridges.ensure(port.network_id, port.vni, port.mtu)
        tap = self.taps.ensure(port.port_id, port.network_id, port.mtu)
        self.firewall.apply(port)
        if dhcp is not None:
            if dhcp.network_id != port.network_id:
                raise ValueError("the DHCP service given is for another network")
            self._ensure_dhcp(dhcp)
        return tap

    @_locked
    def apply_security(self, port: Port) -> None:
        """Rewrites the port's chains with its current rules and addresses (one
        iptables-restore: no half-applied set is ever visible); bridge, tap and DHCP are
        left as they are."""
        self.firewall.apply(port)

    @_locked
    def ensure_dhcp(self, dhcp: NetworkDhcp) -> int:
        """Runs (or reloads) the network's DHCP and its metadata server; the bridge is
        made when missing. Returns dnsmasq's pid."""
        self.bridges.ensure(dhcp.network_id, dhcp.vni, dhcp.mtu)
        return self._ensure_dhcp(dhcp)

    def _ensure_dhcp(self, dhcp: NetworkDhcp) -> int:
        pid = self.dhcp.ensure(dhcp)
        self.metadata.ensure(dhcp.network_id)
        return pid

    @_locked
    def publish_metadata(self, port: Port, files: Mapping[str, bytes]) -> bool:
        """Serves `files` (path -> body: nodeagent.configdrive.metadata_tree) at
        169.254.169.254 to the guest behind `port`, found by its fixed IPv4 addresses.
        False when the port's network has no DHCP service here (nor a metadata server)."""
        ips = [f.ip for f in port.fixed_ips]
        return self.metadata.publish(port.network_id, port.port_id, ips, files)

    @_locked
    def unplug(self, port_id: str) -> None:
        """Removes the port's tap and chains; when it was the network's last port on the
        host, the network's DHCP, bridge and VXLAN go too. Succeeds if already absent."""
        state = self.state()
        network_id = state.ports.get(port_id)
        self.firewall.remove(port_id)
        self.taps.remove(port_id)
        self.metadata.withdraw([port_id])
        after = self.state()
        if network_id is not None and network_id not in set(after.ports.values()):
            if network_id in after.networks_in_use():
                # A router leg keeps the bridge; DHCP serves this host's guests only.
                self._remove_dhcp(network_id)
            else:
                self._remove_network(network_id, state.networks.get(network_id))
        self.firewall.remove_dispatch_if_unused()

    @_locked
    def ensure_router(self, router: Router) -> str | None:
        """Postcondition: the router is served here as `router` says (RouterNamespaces.ensure:
        namespace, legs on their networks' bridges, addresses, default route, NAT), the
        bridges and VXLANs of its networks exist, and networks only its old legs used are
        gone. A router that is down or deleted is removed instead. Idempotent. Returns
        its namespace, or None when it was removed."""
        if not router.serving:
            self.remove_router(router.router_id)
            return None
        before = self.state().routers.get(router.router_id, set())
        ns = self._ensure_router(router)
        self._remove_unused_networks(before - router.network_ids)
        return ns

    def _ensure_router(self, router: Router) -> str:
        self.routers.refuse_a_taken_external_subnet(router)  # before anything changes
        for leg in router.legs:
            self.bridges.ensure(leg.network_id, leg.vni, leg.mtu)
        ns = self.routers.ensure(router)
        log.info(
            "router served", extra={"router_id": router.router_id, "revision": router.revision}
        )
        return ns

    @_locked
    def remove_router(self, router_id: str) -> None:
        """Removes the router's namespace and veths, and the bridges and VXLANs of its
        networks that nothing else here uses. Succeeds if already absent."""
        before = self.state().routers.get(router_id, set())
        self.routers.remove(router_id)
        self._remove_unused_networks(before)

    def _remove_unused_networks(self, candidates: set[str]) -> None:
        if not candidates:
            return
        state = self.state()
        for network_id in sorted(candidates - state.networks_in_use()):
            if network_id in state.networks:
                self._remove_network(network_id, state.networks[network_id] or None)

    def _remove_dhcp(self, network_id: str) -> None:
        self.metadata.remove(network_id)
        self.dhcp.remove(network_id)

    def _remove_network(self, network_id: str, vni: int | None) -> None:
        self._remove_dhcp(network_id)
        self.bridges.remove(network_id, vni)
        log.info("network removed from host", extra={"network_id": network_id})

    def state(self) -> HostNetworkState:
        """What the host has now: one `ip link` listing, the chains, the DHCP folders and
        the router namespaces."""
        st = HostNetworkState(chain_keys=self.firewall.port_keys(), dhcp=self.dhcp.namespaces())
        links = self.runner.links()
        st.routers = self.routers.present(links)
        aliases = {str(link.get("ifname", "")): str(link.get("ifalias", "")) for link in links}
        for link in links:
            parsed = parse_alias(str(link.get("ifalias", "")))
            if parsed is None:
                continue
            kind, ident = parsed
            name = str(link.get("ifname", ""))
            if kind == "port":
                net = parse_alias(aliases.get(str(link.get("master", "")), ""))
                if net is not None and net[0] == "network":
                    st.ports[ident] = net[1]
                else:
                    st.orphan_taps.add(ident)
            elif kind == "vxlan" and name.startswith("vxlan-"):
                st.networks[ident] = int(name.removeprefix("vxlan-"))
            elif kind == "network":
                st.networks.setdefault(ident, 0)
        return st

    @_locked
    def reconcile(
        self,
        ports: Iterable[Port],
        dhcp: Iterable[NetworkDhcp] | None = (),
        routers: Iterable[Router] | None = None,
    ) -> None:
        """Makes the host hold exactly `ports`, the DHCP services `dhcp` (for networks
        that have a port here) and, unless `routers` is None, exactly the serving routers
        of `routers`: plugs and ensures what is missing or drifted, removes what nothing
        wants. Networks stay while a port or a router leg is on them. `dhcp=None` leaves
        the DHCP services of networks that keep a port as they are; `routers=None` leaves
        the routers as they are. Idempotent; safe after a crash at any step."""
        wanted = {p.port_id: p for p in ports}
        keep_dhcp = dhcp is None
        services = {d.network_id: d for d in (dhcp or ())}
        networks = {p.network_id for p in wanted.values()}
        for port in wanted.values():
            self.plug(port, services.get(port.network_id))
        serving = None
        if routers is not None:
            serving = {r.router_id: r for r in routers if r.serving}
            for router in list(serving.values()):
                try:
                    self._ensure_router(router)
                except InvalidNetworkInput as exc:
                    log.error(
                        "router refused", extra={"router_id": router.router_id, "error": str(exc)}
                    )
                    del serving[router.router_id]
        state = self.state()
        if serving is None:
            networks = networks.union(*state.routers.values())
        else:
            for router_id in set(state.routers) - set(serving):
                self.routers.remove(router_id)
            networks = networks.union(*(r.network_ids for r in serving.values()))
        keys = {pid[:11] for pid in wanted}
        for port_id in set(state.ports) - set(wanted):
            self.firewall.remove(port_id)
            self.taps.remove(port_id)
        for port_id in state.orphan_taps - set(wanted):
            self.firewall.remove(port_id)
            self.taps.remove(port_id)
        for key in state.chain_keys - keys:
            self.firewall.remove(key)
        for network_id in set(state.networks) - networks:
            self._remove_network(network_id, state.networks[network_id] or None)
        port_networks = {p.network_id for p in wanted.values()}
        dhcp_kept = port_networks if keep_dhcp else {n for n in services if n in port_networks}
        for network_id in state.dhcp - dhcp_kept:
            self.metadata.remove(network_id)
            self.dhcp.remove(network_id)
        self.metadata.withdraw(self.metadata.published_ports() - set(wanted))
        self.firewall.remove_dispatch_if_unused()
