"""The libvirt implementation of the Driver and ConsoleDriver Protocols.

test:/// and isolation (checked by experiment on libvirt 9 here): every `open()` of a
`test:///ABSOLUTE/PATH.xml` URI gets a private, empty domain set — even two opens of the
same file do not share domains — and that state vanishes when the connection closes.
Only `test:///default` is shared by the connections of a process. So each simulated host
opens its own node-XML URI and sees only its own domains. As a second line of defence
(and for shared hypervisors such as test:///default or one qemu:///system serving
several agents), every Loom domain carries `<loom:host>` metadata and a driver lists
only the domains whose metadata names its host.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import stat
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import libvirt
from loom.compute.v1 import agent_bus_pb2

from controlplane.runtime import tracing
from nodeagent.configdrive import ConfigDriveError, wants_config_drive, write_config_drive
from nodeagent.driver import netrecords
from nodeagent.driver.base import (
    ActionFailed,
    BuildFailed,
    ConsoleEndpoint,
    DiskCounters,
    HostFacts,
    InstanceDiagnostics,
    InstanceNotFound,
    NicCounters,
    NotSupported,
    PowerState,
)
from nodeagent.driver.domain_xml import (
    LOOM_XMLNS,
    DomainLayout,
    DomainType,
    KernelBoot,
    build_domain_xml,
)
from nodeagent.driver.hypervisor import choose_virt_type
from nodeagent.images.cache import ImageCache, ImageWanted
from nodeagent.images.disks import DISK_FORMATS, GIB, create_blank, create_overlay
from nodeagent.images.source import ImageError
from nodeagent.network import HostDataPlane, Port, port_from_proto
from nodeagent.network.model import InvalidNetworkInput, Router, router_from_proto

log = logging.getLogger(__name__)

_LIBVIRT_POWER = {
    libvirt.VIR_DOMAIN_NOSTATE: PowerState.NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.SHUTDOWN,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.SUSPENDED,
}

_MIB = 1024**2
# Nova's image property for a kernel boot's command line, and Loom's default for it.
CMDLINE_PROPERTY = "os_command_line"
DEFAULT_CMDLINE = "console=ttyS0"
# Which cached images an instance's disks and boot files use, kept in its folder so the
# cache can tell what is in use without asking libvirt.
_IMAGES_FILE = "images.json"
_CONFIG_DRIVE = "disk.config"
# The id of the rebuild that made the instance's current disks (a redelivered rebuild
# command finds it and changes nothing).
_REBUILD_FILE = "rebuild-id"
_BASE_DIR = "_base"
# Under the data plane's state folder: bindings refreshed before their port's build came.
_PENDING_SECURITY_DIR = "port-security"
# The routers this host serves (network.l3_host), each its newest binding (netrecords).
_ROUTERS_DIR = "routers"
# A pending binding no build took within this long is forgotten at reconcile.
_PENDING_SECURITY_KEEP_S = 3600.0
# The most of a serial log console_output returns (Nova caps it similarly).
_CONSOLE_TAIL_BYTES = 1024 * 1024
_silenced = threading.Lock()
_silenced_done = False


class NoDataPlane(RuntimeError):
    """A real host without a network data plane was asked to attach ports."""


def silence_libvirt_stderr() -> None:
    """libvirt prints every error to stderr by default; Loom logs what matters itself."""
    global _silenced_done
    with _silenced:
        if not _silenced_done:
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            _silenced_done = True


def write_simulated_node(path: Path, *, vcpus: int, memory_mb: int) -> str:
    """Writes a test-driver node description and returns its `test:///…` URI. Idempotent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    node = (
        "<node>\n"
        "  <cpu>\n"
        "    <mhz>2000</mhz>\n"
        "    <model>i686</model>\n"
        f"    <active>{vcpus}</active>\n"
        "    <nodes>1</nodes>\n"
        "    <sockets>1</sockets>\n"
        f"    <cores>{vcpus}</cores>\n"
        "    <threads>1</threads>\n"
        "  </cpu>\n"
        f"  <memory>{memory_mb * 1024}</memory>\n"
        "</node>\n"
    )
    if not path.exists() or path.read_text() != node:
        path.write_text(node)
    return f"test://{path.resolve()}"


def _is_no_domain(exc: libvirt.libvirtError) -> bool:
    return bool(exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN)


class LibvirtDriver:
    """One host's view of one libvirt connection. Not shared between hosts."""

    def __init__(
        self,
        uri: str,
        *,
        host: str,
        instances_dir: Path,
        vnc_listen: str = "127.0.0.1",
        disk_gb: int | None = None,
        images: ImageCache | None = None,
        virt_type: Literal["auto", "qemu", "kvm"] = "auto",
        soft_reboot_timeout: float = 60.0,
        dataplane: HostDataPlane | None = None,
        simulated_latency_s: float = 0.0,
    ) -> None:
        """`images` is required for real hypervisors (it makes their disks); `virt_type`
        "auto" decides kvm or qemu on open (nodeagent.driver.hypervisor).
        `simulated_latency_s` (test:/// only) makes each call that changes a domain (build,
        start, stop, reboot, delete, pause, suspend, their reverses, resize in place) and
        a snapshot's copy of the disk take that long in the hypervisor, as a slow real one
        does; its calls then run off the agent's loop, and each is logged as it starts."""
        self.uri = uri
        self.host = host
        self.instances_dir = instances_dir
        self.vnc_listen = vnc_listen
        self.images = images
        self.soft_reboot_timeout = soft_reboot_timeout
        self.dataplane = dataplane
        self._disk_gb = disk_gb
        self._latency_s = simulated_latency_s if uri.startswith("test:") else 0.0
        self._conn: Any = None
        # UUID → whether the domain is this host's; metadata never changes after define.
        self._ownership: dict[str, bool] = {}
        self._virt_type = virt_type
        self._domain_type: DomainType = (
            "test" if uri.startswith("test:") else ("kvm" if virt_type == "kvm" else "qemu")
        )

    @property
    def domain_type(self) -> DomainType:
        """The libvirt domain type this driver defines (decided on open for "auto")."""
        return self._domain_type

    @staticmethod
    def default_image_cache_dir(instances_dir: Path) -> Path:
        """Where a host keeps its image cache: beside its instance folders, as `_base`."""
        return instances_dir / _BASE_DIR

    # -- Protocol properties ------------------------------------------------------------

    @property
    def runs_inline(self) -> bool:
        # The test driver answers in microseconds; anything else may block on I/O.
        return self._domain_type == "test" and not self._latency_s

    @property
    def persistent(self) -> bool:
        return self._domain_type != "test"

    # -- connection ---------------------------------------------------------------------

    def open(self) -> None:
        if self._conn is not None:
            return
        silence_libvirt_stderr()
        self._conn = libvirt.open(self.uri)
        if self._domain_type == "test":
            return
        if self._virt_type == "auto":
            # A URI without a host part ("qemu:///system") means libvirtd runs here.
            local = self.uri.split("://", 1)[-1].startswith("/")
            choice = choose_virt_type(self._conn, local=local)
            self._domain_type = choice.virt_type
            log.info(
                "hypervisor chosen",
                extra={"host": self.host, "virt_type": choice.virt_type, "reason": choice.reason},
            )
        else:
            log.info(
                "hypervisor configured", extra={"host": self.host, "virt_type": self._virt_type}
            )
        if self.dataplane is not None:
            try:
                self.reconcile_network()
            except (RuntimeError, OSError, ValueError) as exc:
                # Ports are wired again at each start; a host that cannot reconcile its
                # network still serves the rest. RuntimeError: a failed command
                # (CommandError) or a dnsmasq or metadata server that did not start.
                log.warning(
                    "network reconcile failed", extra={"host": self.host, "error": str(exc)}
                )
        self._warn_if_unreachable_by_qemu()

    def _warn_if_unreachable_by_qemu(self) -> None:
        # libvirt runs QEMU as an unprivileged user: every folder above the guest's files
        # must let others through, or the first start fails with "Permission denied".
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        for folder in [self.instances_dir, *self.instances_dir.parents]:
            if not folder.stat().st_mode & stat.S_IXOTH:
                log.warning(
                    "QEMU may not reach the instance folders: a parent folder is not "
                    "searchable by others",
                    extra={"host": self.host, "folder": str(folder)},
                )
                return

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._ownership.clear()

    @property
    def _c(self) -> Any:
        if self._conn is None:
            raise RuntimeError("driver is not open")
        return self._conn

    # -- lookups ------------------------------------------------------------------------

    def _owned(self, dom: Any) -> bool:
        uuid = str(dom.UUIDString())
        known = self._ownership.get(uuid)
        if known is not None:
            return known
        try:
            raw = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, LOOM_XMLNS, 0)
        except libvirt.libvirtError:
            mine = False  # no Loom metadata: not a Loom domain
        else:
            host = ET.fromstring(raw).findtext("host")
            mine = host == self.host
        self._ownership[uuid] = mine
        return mine

    def _lookup(self, instance_id: str) -> Any | None:
        try:
            dom = self._c.lookupByUUIDString(instance_id)
        except libvirt.libvirtError as exc:
            if _is_no_domain(exc):
                return None
            raise
        return dom if self._owned(dom) else None

    def _defined_for_another_host(self, instance_id: str) -> bool:
        try:
            self._c.lookupByUUIDString(instance_id)
        except libvirt.libvirtError as exc:
            if _is_no_domain(exc):
                return False
            raise
        return True

    def _require(self, instance_id: str) -> Any:
        dom = self._lookup(instance_id)
        if dom is None:
            raise InstanceNotFound(instance_id)
        return dom

    @staticmethod
    def _power(dom: Any) -> PowerState:
        state = dom.state()[0]
        if state == libvirt.VIR_DOMAIN_SHUTOFF and dom.hasManagedSaveImage(0):
            # Shut off with its memory saved to disk: that is a suspended guest.
            return PowerState.SUSPENDED
        return _LIBVIRT_POWER.get(state, PowerState.NOSTATE)

    def _instance_dir(self, instance_id: str) -> Path:
        return self.instances_dir / instance_id

    def _layout(
        self,
        spec: agent_bus_pb2.InstanceSpec,
        kernel_boot: KernelBoot | None = None,
        config_drive: str = "",
    ) -> DomainLayout:
        d = self._instance_dir(spec.instance_id)
        real = self._domain_type != "test"
        return DomainLayout(
            domain_type=self._domain_type,
            host=self.host,
            root_disk=str(d / "disk"),
            ephemeral_disk=str(d / "disk.eph0"),
            swap_disk=str(d / "disk.swap"),
            console_log=str(d / "console.log"),
            vnc_listen=self.vnc_listen,
            arch="x86_64" if real else "",
            machine="pc" if real else "",
            kernel_boot=kernel_boot,
            config_drive=config_drive,
        )

    def _prepare_disks(self, spec: agent_bus_pb2.InstanceSpec) -> KernelBoot | None:
        """Makes the instance's disks from cached images; returns its kernel boot, if any.

        Postcondition: `<instance folder>/disk` is a qcow2 overlay on the cached root
        image, sized to the flavor's root_gb when that is larger; ephemeral and swap disks
        exist when the flavor has them. Raises ImageError (a user-safe sentence) otherwise.
        """
        if self.images is None:
            raise ImageError("This host has no image cache configured.")
        image = spec.image
        d = self._instance_dir(spec.instance_id)
        base_format = DISK_FORMATS.get(image.disk_format)
        if base_format is None:
            raise ImageError(f"An image in {image.disk_format or 'no'} format cannot be a disk.")
        used = [i for i in (image.id, image.kernel_id, image.ramdisk_id) if i]
        # Recorded before any download, so a prune running meanwhile keeps these images.
        (d / _IMAGES_FILE).write_text(json.dumps(used))
        base = self.images.ensure(
            ImageWanted(image.id, base_format, image.hash_value, image.hash_algo or "sha512")
        )
        create_overlay(base, base_format, d / "disk", spec.root_gb * GIB)
        if spec.ephemeral_gb > 0:
            create_blank(d / "disk.eph0", spec.ephemeral_gb * GIB)
        if spec.swap_mb > 0:
            create_blank(d / "disk.swap", spec.swap_mb * _MIB)
        if not image.kernel_id:
            return None
        # ImageRef carries no hashes for the kernel and ramdisk: they are cached unverified.
        kernel = self.images.ensure(ImageWanted(image.kernel_id, "aki"))
        initrd = (
            self.images.ensure(ImageWanted(image.ramdisk_id, "ari")) if image.ramdisk_id else None
        )
        cmdline = image.properties.get(CMDLINE_PROPERTY) or DEFAULT_CMDLINE
        return KernelBoot(kernel=str(kernel), initrd=str(initrd or ""), cmdline=cmdline)

    # -- verbs --------------------------------------------------------------------------

    def _simulate_latency(self, call: str, instance_id: str) -> None:
        if self._latency_s:
            # Logged, so a chaos scenario can tell which calls a kill cut short.
            log.info(
                "simulated hypervisor call",
                extra={
                    "host": self.host,
                    "instance": instance_id,
                    "call": call,
                    "seconds": self._latency_s,
                },
            )
            time.sleep(self._latency_s)  # a simulated slow hypervisor (off the loop)

    def create(
        self,
        spec: agent_bus_pb2.InstanceSpec,
        *,
        power_on: bool = True,
        dhcp: Sequence[agent_bus_pb2.NetworkDhcp] = (),
    ) -> PowerState:
        existing = self._lookup(spec.instance_id)
        if existing is not None:
            return self._power(existing)
        if self._defined_for_another_host(spec.instance_id):
            # One libvirt serving two hosts (two agents on one machine) holds one domain
            # per UUID: defining it again would take over the other host's domain.
            raise BuildFailed("This hypervisor already defines that instance for another host.")
        self._simulate_latency("create", spec.instance_id)
        spec = self._with_newest_bindings(spec)
        dom: Any = None
        step = "check the ports"
        try:
            # Before anything changes: a bad binding or DHCP service fails the build here.
            wiring = netrecords.network_wiring(
                spec, dhcp, with_documents=self.dataplane is not None
            )
            step = "prepare the instance folder"
            self._instance_dir(spec.instance_id).mkdir(parents=True, exist_ok=True)
            kernel_boot = None
            if self._domain_type != "test":
                step = "prepare the disks"
                with tracing.span("agent image fetch and disks", {"loom.image_id": spec.image.id}):
                    kernel_boot = self._prepare_disks(spec)
            step = "wire the ports"
            self._plug_ports(spec, wiring)
            config_drive = ""
            if self._domain_type != "test" and wants_config_drive(spec):
                step = "write the config drive"
                path = self._instance_dir(spec.instance_id) / _CONFIG_DRIVE
                config_drive = str(write_config_drive(spec, path))
            step = "define the domain"
            xml = build_domain_xml(spec, self._layout(spec, kernel_boot, config_drive))
            with tracing.span("libvirt define"):
                dom = self._c.defineXML(xml)
            self._ownership[spec.instance_id] = True
            if power_on:
                step = "start the domain"
                with tracing.span("libvirt start"):
                    dom.create()
            return self._power(dom)
        except (InvalidNetworkInput, ConfigDriveError, NoDataPlane) as exc:
            # Sentences meant for the instance's owner: the fault says what was wrong.
            log.warning(
                "build failed",
                extra={"host": self.host, "instance_id": spec.instance_id, "error": str(exc)},
            )
            self._clean_up_build(dom, spec.instance_id)
            raise BuildFailed(str(exc)) from exc
        except (libvirt.libvirtError, OSError, ValueError, RuntimeError) as exc:
            # RuntimeError: a failed command (CommandError), or a DHCP or metadata server
            # that did not start.
            log.warning(
                "build failed",
                extra={
                    "host": self.host,
                    "instance_id": spec.instance_id,
                    "step": step,
                    "error": str(exc),
                },
            )
            self._clean_up_build(dom, spec.instance_id)
            raise BuildFailed(f"The hypervisor could not {step}.") from exc
        except ImageError as exc:
            log.warning(
                "build failed",
                extra={"host": self.host, "instance_id": spec.instance_id, "error": str(exc)},
            )
            self._clean_up_build(dom, spec.instance_id)
            raise BuildFailed(str(exc)) from exc

    def _clean_up_build(self, dom: Any, instance_id: str) -> None:
        # Only what this build made is removed: a domain that failed to define may share a
        # name with another instance, which must stay untouched.
        if dom is not None:
            self._remove_domain(dom)
        self._ownership.pop(instance_id, None)
        self._release_network(instance_id)

    def _plug_ports(
        self, spec: agent_bus_pb2.InstanceSpec, wiring: netrecords.NetworkWiring
    ) -> None:
        """Wires every port before the domain is defined (its taps must exist when it
        starts), recording the ports, DHCP services and metadata first so a failure
        halfway is cleaned up and a restart serves them again."""
        if not wiring.ports:
            return
        if self.dataplane is None:
            if self._domain_type == "test":
                return  # a simulated host: the ports live in the domain XML only
            raise NoDataPlane("This host has no network data plane; ports cannot be attached.")
        netrecords.write(self._instance_dir(spec.instance_id), wiring)
        # Taken into the spec (_with_newest_bindings); the folder's record holds them now.
        netrecords.drop_pending(self._pending_dir(), [p.port_id for p in wiring.ports])
        with tracing.span("agent plug ports"):
            self._wire(spec.instance_id)

    def _pending_dir(self) -> Path:
        assert self.dataplane is not None
        return self.dataplane.config.state_dir / _PENDING_SECURITY_DIR

    def _with_newest_bindings(self, spec: agent_bus_pb2.InstanceSpec) -> agent_bus_pb2.InstanceSpec:
        """The spec with each port's newest binding this host has seen: the instance
        folder's record (a rebuild, a redelivered build) or one refreshed before the build
        came (RefreshPortSecurityCommand), when its security_revision is higher."""
        if self.dataplane is None or not spec.ports:
            return spec
        ports = list(spec.ports)
        best = netrecords.newest(
            ports,
            netrecords.bindings(self._instance_dir(spec.instance_id)),
            netrecords.pending_for(self._pending_dir(), [p.port_id for p in ports]),
        )
        if best == ports:
            return spec
        merged = agent_bus_pb2.InstanceSpec()
        merged.CopyFrom(spec)
        del merged.ports[:]
        merged.ports.extend(best)
        return merged

    # -- PortSecurityDriver ---------------------------------------------------------------

    def refresh_port_security(self, bindings: Sequence[agent_bus_pb2.PortBinding]) -> int:
        if self.dataplane is None:
            return 0  # a simulated host: its ports live in the domain XML only
        holders = {
            binding.port_id: folder
            for folder in self._instance_folders()
            for binding in netrecords.bindings(folder)
        }
        rewritten = 0
        for binding in bindings:
            try:
                port = port_from_proto(binding)
            except InvalidNetworkInput as exc:
                log.warning(
                    "refreshed binding refused",
                    extra={"host": self.host, "port_id": binding.port_id, "error": str(exc)},
                )
                continue
            folder = holders.get(binding.port_id)
            if folder is None:
                netrecords.keep_pending(self._pending_dir(), binding)
                continue
            if netrecords.replace_binding(folder, binding):
                self.dataplane.apply_security(port)
                rewritten += 1
        return rewritten

    # -- RouterDriver ---------------------------------------------------------------------

    def _routers_dir(self) -> Path:
        assert self.dataplane is not None
        return self.dataplane.config.state_dir / _ROUTERS_DIR

    def refresh_routers(self, routers: Sequence[agent_bus_pb2.RouterBinding]) -> int:
        if self.dataplane is None:
            return 0  # a simulated host serves no router (it has no data plane)
        changed = 0
        for binding in routers:
            try:
                router = router_from_proto(binding)
                # Recorded first: a crash halfway through is finished by the next reconcile.
                if not netrecords.keep_router(self._routers_dir(), binding):
                    continue
                if binding.deleted or not binding.admin_state_up:
                    self.dataplane.remove_router(binding.router_id)
                else:
                    self.dataplane.ensure_router(router)
            except InvalidNetworkInput as exc:
                # Not served, and not retried: the same binding would be refused again.
                log.error(
                    "router refused",
                    extra={"host": self.host, "router_id": binding.router_id, "error": str(exc)},
                )
                continue
            changed += 1
        return changed

    def _served_routers(self) -> list[Router]:
        """The routers this host's records say it serves now."""
        served = []
        for binding in netrecords.routers(self._routers_dir()):
            if binding.deleted or not binding.admin_state_up:
                continue
            try:
                served.append(router_from_proto(binding))
            except InvalidNetworkInput:
                continue
        return served

    def _wire(self, instance_id: str) -> None:
        """Plugs the instance's recorded ports with their networks' DHCP (as the host's
        instance folders now want it) and serves its metadata documents."""
        assert self.dataplane is not None
        ports = self._recorded_ports(instance_id)
        services = netrecords.dhcp_services(self._instance_folders())
        for port in ports:
            self.dataplane.plug(port, services.get(port.network_id))
        self._publish_metadata(instance_id, ports)

    def rewire(self, instance_id: str) -> int:
        self._require(instance_id)
        if self.dataplane is None:
            return 0
        with tracing.span("agent rewire ports"):
            self._wire(instance_id)
        return len(self._recorded_ports(instance_id))

    def _publish_metadata(self, instance_id: str, ports: list[Port]) -> None:
        assert self.dataplane is not None
        documents = netrecords.metadata(self._instance_dir(instance_id))
        if documents:
            for port in ports:
                self.dataplane.publish_metadata(port, documents)

    def _instance_folders(self) -> list[Path]:
        if not self.instances_dir.is_dir():
            return []
        return [
            f for f in sorted(self.instances_dir.iterdir()) if f.is_dir() and f.name != _BASE_DIR
        ]

    def _recorded_ports(self, instance_id: str) -> list[Port]:
        """The ports wired for the instance at its build, from its folder."""
        return netrecords.ports(self._instance_dir(instance_id))

    def _unplug_ports(self, instance_id: str) -> None:
        """Unplugs the instance's ports; call with its folder gone, or about to go."""
        if self.dataplane is None:
            return
        for port in self._recorded_ports(instance_id):
            self.dataplane.unplug(port.port_id)

    def _release_network(self, instance_id: str) -> None:
        """Unplugs the instance's ports and removes its folder; the DHCP of networks that
        keep ports here is served again without its leases."""
        ports = self._recorded_ports(instance_id) if self.dataplane is not None else []
        self._unplug_ports(instance_id)
        shutil.rmtree(self._instance_dir(instance_id), ignore_errors=True)
        if self.dataplane is None or not ports:
            return
        services = netrecords.dhcp_services(self._instance_folders())
        for network_id in {p.network_id for p in ports}:
            if network_id in services:
                self.dataplane.ensure_dhcp(services[network_id])

    def _start_domain(self, dom: Any, instance_id: str) -> None:
        # A host reboot takes taps, bridges, chains and DHCP with it: wire the ports again
        # (idempotent, quick when all is there) before QEMU opens the taps.
        if self.dataplane is not None:
            self._wire(instance_id)
        dom.create()

    def reconcile_network(self) -> None:
        """Makes the host's data plane hold exactly the ports, DHCP services and metadata
        documents of this host's instance folders: after an agent restart or a host
        reboot, missing taps, bridges, chains, dnsmasq and metadata servers come back and
        those of deleted instances go."""
        if self.dataplane is None:
            return
        netrecords.drop_pending(self._pending_dir(), (), older_than_s=_PENDING_SECURITY_KEEP_S)
        folders = self._instance_folders()
        wanted = [port for folder in folders for port in netrecords.ports(folder)]
        services = netrecords.dhcp_services(folders)
        netrecords.drop_router_tombstones(
            self._routers_dir(), older_than_s=_PENDING_SECURITY_KEEP_S
        )
        self.dataplane.reconcile(wanted, list(services.values()), routers=self._served_routers())
        for folder in folders:
            self._publish_metadata(folder.name, netrecords.ports(folder))

    def start(self, instance_id: str) -> PowerState:
        self._simulate_latency("start", instance_id)
        dom = self._require(instance_id)
        if not dom.isActive():
            self._start_domain(dom, instance_id)
        return self._power(dom)

    def stop(self, instance_id: str, timeout: float) -> PowerState:
        self._simulate_latency("stop", instance_id)
        dom = self._require(instance_id)
        if not dom.isActive():
            # A suspended guest is stopped by forgetting its saved memory.
            if dom.hasManagedSaveImage(0):
                dom.managedSaveRemove(0)
            return PowerState.SHUTDOWN
        if timeout > 0:
            try:
                dom.shutdown()
            except libvirt.libvirtError as exc:
                log.info(
                    "graceful shutdown refused",
                    extra={"instance_id": instance_id, "error": str(exc)},
                )
            deadline = time.monotonic() + timeout
            # The test driver shuts off at once, so this loop never sleeps on the event loop.
            while dom.isActive() and time.monotonic() < deadline:
                time.sleep(0.25)
        if dom.isActive():
            dom.destroy()
        return self._power(dom)

    def reboot(self, instance_id: str, *, hard: bool) -> PowerState:
        self._simulate_latency("reboot", instance_id)
        dom = self._require(instance_id)
        if not dom.isActive():
            self._start_domain(dom, instance_id)
            return self._power(dom)
        if not hard and self._domain_type == "test":
            dom.reboot(0)
            return self._power(dom)
        if not hard and self._soft_reboot(dom, instance_id):
            return self._power(dom)
        # Hard: power-cycle the domain from its definition, as Nova does.
        dom.destroy()
        self._start_domain(dom, instance_id)
        return self._power(dom)

    def _soft_reboot(self, dom: Any, instance_id: str) -> bool:
        """Shuts the guest down gracefully and starts it again; False when the guest did
        not shut down within soft_reboot_timeout (the caller then reboots hard).

        An ACPI reboot request cannot be used: libvirt reports success whether or not
        the guest acts on it, so a guest that ignores ACPI would never reboot. Like Nova,
        Loom asks for a shutdown, whose effect it can watch.
        """
        try:
            dom.shutdown()
        except libvirt.libvirtError as exc:
            log.info("soft reboot refused", extra={"instance_id": instance_id, "error": str(exc)})
            return False
        deadline = time.monotonic() + self.soft_reboot_timeout
        while dom.isActive() and time.monotonic() < deadline:
            time.sleep(0.25)
        if dom.isActive():
            log.info(
                "guest ignored the soft reboot; rebooting hard", extra={"instance_id": instance_id}
            )
            return False
        self._start_domain(dom, instance_id)
        return True

    def resize_in_place(self, spec: agent_bus_pb2.InstanceSpec, *, power_on: bool) -> PowerState:
        """Gives an existing domain the flavor's vCPUs and memory (a move that stays on this
        host): powered off, redefined from its own XML with the new sizes, started when
        `power_on`. Its disks stay as they are. Idempotent; raises InstanceNotFound."""
        self._simulate_latency("resize_in_place", spec.instance_id)
        dom = self._require(spec.instance_id)
        if dom.isActive():
            dom.destroy()
        root = ET.fromstring(dom.XMLDesc(0))
        for tag in ("memory", "currentMemory"):
            el = root.find(tag)
            if el is not None:
                el.text, el.attrib = str(spec.memory_mb * 1024), {"unit": "KiB"}
        vcpu = root.find("vcpu")
        if vcpu is not None:
            vcpu.text = str(spec.vcpus)
        dom = self._c.defineXML(ET.tostring(root, encoding="unicode"))
        if power_on:
            dom.create()
        return self._power(dom)

    # -- RebuildDriver ------------------------------------------------------------------

    def rebuild(
        self, spec: agent_bus_pb2.InstanceSpec, *, power_on: bool, rebuild_id: str
    ) -> PowerState:
        marker = self._instance_dir(spec.instance_id) / _REBUILD_FILE
        dom = self._lookup(spec.instance_id)
        try:
            done = dom is not None and marker.read_text() == rebuild_id
        except OSError:
            done = False
        if done:
            return self._power(dom)
        # The rebuild command carries no DHCP services: the build's record serves again.
        dhcp = netrecords.dhcp_messages(self._instance_dir(spec.instance_id))
        spec = self._with_newest_bindings(spec)  # before its folder goes
        self.destroy(spec.instance_id)
        state = self.create(spec, power_on=power_on, dhcp=dhcp)
        marker.write_text(rebuild_id)
        return state

    # -- PauseSuspendDriver -------------------------------------------------------------

    def pause(self, instance_id: str) -> PowerState:
        self._simulate_latency("pause", instance_id)
        dom = self._require(instance_id)
        state = self._power(dom)
        if state == PowerState.PAUSED:
            return state
        if state != PowerState.RUNNING:
            raise ActionFailed("The instance is not running, so it cannot be paused.")
        dom.suspend()
        return self._power(dom)

    def unpause(self, instance_id: str) -> PowerState:
        self._simulate_latency("unpause", instance_id)
        dom = self._require(instance_id)
        state = self._power(dom)
        if state == PowerState.RUNNING:
            return state
        if state != PowerState.PAUSED:
            raise ActionFailed("The instance is not paused, so it cannot be unpaused.")
        dom.resume()
        return self._power(dom)

    def suspend(self, instance_id: str) -> PowerState:
        self._simulate_latency("suspend", instance_id)
        dom = self._require(instance_id)
        state = self._power(dom)
        if state == PowerState.SUSPENDED:
            return state
        if state not in (PowerState.RUNNING, PowerState.PAUSED):
            raise ActionFailed("The instance is not running, so it cannot be suspended.")
        dom.managedSave(0)
        return self._power(dom)

    def resume(self, instance_id: str) -> PowerState:
        self._simulate_latency("resume", instance_id)
        dom = self._require(instance_id)
        if not dom.isActive():
            # Starting a domain that has a managed save restores it from that save.
            dom.create()
        elif self._power(dom) == PowerState.PAUSED:
            dom.resume()
        return self._power(dom)

    def root_disk(self, instance_id: str) -> Path | None:
        self._require(instance_id)
        if self._domain_type == "test":
            # A simulated guest has no disk: its image is its disk. Asked for it, a snapshot
            # is about to copy it, which takes a slow hypervisor its latency as well.
            self._simulate_latency("snapshot", instance_id)
            return None
        disk = self._instance_dir(instance_id) / "disk"
        if not disk.exists():
            raise InstanceNotFound(f"Instance {instance_id} has no root disk on this host.")
        return disk

    def destroy(self, instance_id: str) -> None:
        self._simulate_latency("destroy", instance_id)
        dom = self._lookup(instance_id)
        if dom is not None:
            self._remove_domain(dom)
        self._ownership.pop(instance_id, None)
        self._release_network(instance_id)

    @staticmethod
    def _remove_domain(dom: Any) -> None:
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError as exc:
            if not _is_no_domain(exc):
                raise
        flags = (
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        )
        try:
            try:
                dom.undefineFlags(flags)
            except libvirt.libvirtError as exc:
                # Drivers without NVRAM or managed save (test:///) refuse those flags.
                if exc.get_error_code() not in (
                    libvirt.VIR_ERR_INVALID_ARG,
                    libvirt.VIR_ERR_NO_SUPPORT,
                ):
                    raise
                # Without the flag the saved memory of a suspended guest goes first.
                if dom.hasManagedSaveImage(0):
                    dom.managedSaveRemove(0)
                dom.undefine()
        except libvirt.libvirtError as exc:
            if not _is_no_domain(exc):
                raise

    def describe(self, instance_id: str) -> PowerState:
        return self._power(self._require(instance_id))

    def list_instances(self) -> dict[str, PowerState]:
        return {
            str(dom.UUIDString()): self._power(dom)
            for dom in self._c.listAllDomains(0)
            if self._owned(dom)
        }

    def diagnostics(self, instance_id: str) -> InstanceDiagnostics:
        dom = self._require(instance_id)
        state, max_kib, mem_kib, vcpus, cpu_time = dom.info()
        power = _LIBVIRT_POWER.get(state, PowerState.NOSTATE)
        running = power in (PowerState.RUNNING, PowerState.PAUSED)
        root = ET.fromstring(dom.XMLDesc(0))
        return InstanceDiagnostics(
            power_state=power,
            vcpus=int(vcpus),
            memory_mb=int(mem_kib) // 1024,
            cpu_time_ns=int(cpu_time),
            max_memory_mb=int(max_kib) // 1024,
            vcpu_times_ns=_vcpu_times(dom) if running else (),
            disks=tuple(_disk_counters(dom, root, running)),
            nics=tuple(_nic_counters(dom, root, running)),
        )

    def host_facts(self) -> HostFacts:
        model, memory_mb, cpus, mhz, _nodes, sockets, cores, threads = self._c.getInfo()
        kind = str(self._c.getType())
        disk_gb = self._disk_gb
        if disk_gb is None:
            self.instances_dir.mkdir(parents=True, exist_ok=True)
            disk_gb = shutil.disk_usage(self.instances_dir).total // GIB
        cpu_info = {
            "arch": model,
            "mhz": mhz,
            "topology": {"sockets": sockets, "cores": cores, "threads": threads},
        }
        return HostFacts(
            vcpus=int(cpus),
            memory_mb=int(memory_mb),
            disk_gb=int(disk_gb),
            hypervisor_type="test" if kind == "TEST" else kind,
            hypervisor_version=int(self._c.getVersion()),
            cpu_info=json.dumps(cpu_info, sort_keys=True),
        )

    # -- ImageCacheDriver ---------------------------------------------------------------

    def images_in_use(self) -> set[str]:
        """Ids of the cached images the instance folders on this host record as used."""
        used: set[str] = set()
        if not self.instances_dir.is_dir():
            return used
        for folder in self.instances_dir.iterdir():
            try:
                used.update(json.loads((folder / _IMAGES_FILE).read_text()))
            except (OSError, ValueError):
                continue  # not an instance folder, or one that has no disks yet
        return used

    def prune_image_cache(self, max_age_s: float) -> list[str]:
        if self.images is None:
            return []
        return self.images.prune(max_age_s, self.images_in_use)

    # -- ConsoleDriver ------------------------------------------------------------------

    def console_endpoint(self, instance_id: str) -> ConsoleEndpoint:
        dom = self._require(instance_id)
        if self._domain_type == "test":
            raise NotSupported("The test hypervisor runs no VNC server.")
        graphics = ET.fromstring(dom.XMLDesc(0)).find("./devices/graphics[@type='vnc']")
        port = int(graphics.get("port", "-1")) if graphics is not None else -1
        if graphics is None or port <= 0:
            raise NotSupported("The instance has no VNC server running.")
        return ConsoleEndpoint(host=graphics.get("listen", self.vnc_listen), port=port)

    def console_output(self, instance_id: str, lines: int) -> str:
        self._require(instance_id)
        if self._domain_type == "test":
            raise NotSupported("The test hypervisor writes no serial console log.")
        path = self._instance_dir(instance_id) / "console.log"
        try:
            with path.open("rb") as f:
                # Only the end is read: a chatty guest's log can be megabytes long.
                size = f.seek(0, 2)
                f.seek(max(0, size - _CONSOLE_TAIL_BYTES))
                text = f.read().decode(errors="replace")
        except FileNotFoundError as exc:
            raise NotSupported("The instance has written no serial console output yet.") from exc
        if lines > 0:
            text = "\n".join(text.splitlines()[-lines:])
        return text


# Counters a stopped guest has none of, or a hypervisor does not keep, are None: the API
# shows null rather than a made-up zero.


def _vcpu_times(dom: Any) -> tuple[int, ...]:
    try:
        per_vcpu, _pinning = dom.vcpus()
    except libvirt.libvirtError:
        return ()
    return tuple(int(cpu_time) for _num, _state, cpu_time, _pcpu in per_vcpu)


def _disk_counters(dom: Any, root: ET.Element, running: bool) -> list[DiskCounters]:
    found: list[DiskCounters] = []
    for disk in root.findall("./devices/disk[@device='disk']"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        if not dev:
            continue
        stats: tuple[int | None, ...] = (None,) * 5
        if running:
            try:
                rd_req, rd_bytes, wr_req, wr_bytes, errs = dom.blockStats(dev)
                stats = (rd_bytes, rd_req, wr_bytes, wr_req, None if errs < 0 else errs)
            except libvirt.libvirtError:
                pass
        found.append(DiskCounters(dev, *stats))
    return found


def _nic_counters(dom: Any, root: ET.Element, running: bool) -> list[NicCounters]:
    found: list[NicCounters] = []
    for nic in root.findall("./devices/interface"):
        target, mac = nic.find("target"), nic.find("mac")
        dev = target.get("dev", "") if target is not None else ""
        address = mac.get("address", "") if mac is not None else ""
        stats: tuple[int | None, ...] = (None,) * 8
        if running and dev:
            with contextlib.suppress(libvirt.libvirtError):
                stats = tuple(int(v) for v in dom.interfaceStats(dev))
        rx_b, rx_p, rx_e, rx_d, tx_b, tx_p, tx_e, tx_d = stats
        found.append(NicCounters(dev, address, rx_b, rx_p, rx_e, rx_d, tx_b, tx_p, tx_e, tx_d))
    return found
