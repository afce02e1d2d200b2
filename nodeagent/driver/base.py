"""The hypervisor boundary: a few verbs, keyed by instance UUID.

Every driver method is synchronous. A driver says whether its calls are cheap enough to
run on the event loop (`runs_inline`); the agent runs the others in a worker thread.
Hypervisor ids (domain ids, names chosen by libvirt) never leave a driver: callers speak
only of instance UUIDs.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from loom.compute.v1 import agent_bus_pb2


class PowerState(enum.IntEnum):
    """A domain's power state, numbered as Nova (and loom.compute.v1.PowerState) number it."""

    NOSTATE = 0
    RUNNING = 1
    PAUSED = 3
    SHUTDOWN = 4
    CRASHED = 6
    SUSPENDED = 7


@dataclass(frozen=True)
class HostFacts:
    """What the hypervisor says the host is."""

    vcpus: int
    memory_mb: int
    disk_gb: int
    hypervisor_type: str
    hypervisor_version: int
    cpu_info: str


@dataclass(frozen=True)
class DiskCounters:
    """One disk's I/O counters since the guest started; None where the hypervisor gives none."""

    device: str
    read_bytes: int | None
    read_requests: int | None
    write_bytes: int | None
    write_requests: int | None
    errors: int | None


@dataclass(frozen=True)
class NicCounters:
    """One interface's counters since the guest started (host side of the tap)."""

    device: str
    mac_address: str
    rx_bytes: int | None
    rx_packets: int | None
    rx_errors: int | None
    rx_drop: int | None
    tx_bytes: int | None
    tx_packets: int | None
    tx_errors: int | None
    tx_drop: int | None


@dataclass(frozen=True)
class InstanceDiagnostics:
    """A point-in-time view of one instance."""

    power_state: PowerState
    vcpus: int
    memory_mb: int
    cpu_time_ns: int
    max_memory_mb: int = 0
    # CPU time of each vCPU in nanoseconds, by vCPU number (empty when not running).
    vcpu_times_ns: tuple[int, ...] = ()
    disks: tuple[DiskCounters, ...] = ()
    nics: tuple[NicCounters, ...] = ()


@dataclass(frozen=True)
class HostUptime:
    """What `uptime` prints about the machine an agent runs on."""

    uptime_s: float
    load_1: float
    load_5: float
    load_15: float
    users: int


@dataclass(frozen=True)
class ConsoleEndpoint:
    """Where a graphical console server listens."""

    host: str
    port: int


class DriverError(Exception):
    """Base of every driver error. `str(err)` is one sentence that is safe to show a user."""


class InstanceNotFound(DriverError):
    """The instance has no domain on this host."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(f"Instance {instance_id} is not on this host.")
        self.instance_id = instance_id


class BuildFailed(DriverError):
    """A build did not produce a running instance; the host was cleaned up."""


class ActionFailed(DriverError):
    """A start, stop or reboot did not complete; the instance is in whatever state it reached."""


class NotSupported(DriverError):
    """The hypervisor cannot provide what was asked (for example a serial log)."""


@runtime_checkable
class Driver(Protocol):
    """The verbs every hypervisor driver offers."""

    @property
    def runs_inline(self) -> bool:
        """True when every call returns in microseconds (no thread needed)."""
        ...

    @property
    def persistent(self) -> bool:
        """True when domains survive the agent process (False for libvirt's test driver)."""
        ...

    def open(self) -> None:
        """Connects to the hypervisor. Idempotent."""
        ...

    def close(self) -> None:
        """Releases the connection. Idempotent; instances keep running on a real hypervisor."""
        ...

    def create(
        self,
        spec: agent_bus_pb2.InstanceSpec,
        *,
        power_on: bool = True,
        dhcp: Sequence[agent_bus_pb2.NetworkDhcp] = (),
    ) -> PowerState:
        """Defines the instance and starts it (unless power_on is False). `dhcp` is the
        DHCP service of each network of spec.ports, run on this host for its guests.

        Running (or defined and shut off) on success; fully cleaned up on failure, raising
        BuildFailed. Idempotent: when the instance already exists nothing changes and its
        current state is returned.
        """
        ...

    def start(self, instance_id: str) -> PowerState:
        """Powers the instance on. Succeeds if already running. InstanceNotFound if absent."""
        ...

    def stop(self, instance_id: str, timeout: float) -> PowerState:
        """Asks the guest to shut down, waits up to `timeout` seconds, then forces it off.

        Shut off on success; succeeds if already shut off. A suspended instance is shut off
        by discarding its saved memory. InstanceNotFound if absent.
        """
        ...

    def reboot(self, instance_id: str, *, hard: bool) -> PowerState:
        """Reboots the instance; a soft reboot the guest refuses falls back to a hard one.

        Running on success; a shut-off instance is started. InstanceNotFound if absent.
        """
        ...

    def destroy(self, instance_id: str) -> None:
        """Removes the domain and every file the instance left. Succeeds if already absent."""
        ...

    def describe(self, instance_id: str) -> PowerState:
        """The instance's power state. InstanceNotFound if absent."""
        ...

    def list_instances(self) -> dict[str, PowerState]:
        """Every Loom instance on this host (instance UUID → power state)."""
        ...

    def diagnostics(self, instance_id: str) -> InstanceDiagnostics:
        """What the hypervisor says of the instance now. InstanceNotFound if absent."""
        ...

    def host_facts(self) -> HostFacts:
        """The host's CPUs, memory, disk and hypervisor type and version."""
        ...


@runtime_checkable
class ConsoleDriver(Protocol):
    """Optional: consoles."""

    def console_endpoint(self, instance_id: str) -> ConsoleEndpoint:
        """Where the instance's VNC server listens.

        InstanceNotFound if absent; NotSupported when the hypervisor runs no VNC server.
        """
        ...

    def console_output(self, instance_id: str, lines: int) -> str:
        """The last `lines` lines of the serial console (all when 0).

        InstanceNotFound if absent; NotSupported when the hypervisor writes no serial log.
        """
        ...


@runtime_checkable
class PauseSuspendDriver(Protocol):
    """Optional: freezing a guest in memory (pause) and saving it to disk (suspend)."""

    def pause(self, instance_id: str) -> PowerState:
        """Stops the guest's vCPUs; its memory stays. Paused on success; succeeds if already
        paused. ActionFailed when it is not running; InstanceNotFound if absent."""
        ...

    def unpause(self, instance_id: str) -> PowerState:
        """Lets a paused guest run again. Running on success; succeeds if already running.
        ActionFailed when it is shut off; InstanceNotFound if absent."""
        ...

    def suspend(self, instance_id: str) -> PowerState:
        """Saves the guest's memory to disk and stops the domain. Suspended on success;
        succeeds if already saved. ActionFailed when it is neither running nor saved;
        InstanceNotFound if absent."""
        ...

    def resume(self, instance_id: str) -> PowerState:
        """Restores a suspended guest from its saved memory (a domain with no saved memory
        boots afresh). Running on success; succeeds if already running. InstanceNotFound
        if absent."""
        ...


@runtime_checkable
class PortSecurityDriver(Protocol):
    """Optional: applying the network service's newer bindings of ports on this host."""

    def refresh_port_security(self, bindings: Sequence[agent_bus_pb2.PortBinding]) -> int:
        """Keeps each binding whose security_revision is newer than the host's copy of its
        port (the instance folder's record, or a pending one for a port whose build has
        not come yet) and rewrites the chains of those plugged here. Returns how many
        ports' chains were rewritten. Idempotent."""
        ...


@runtime_checkable
class NetworkWiringDriver(Protocol):
    """Optional: wiring an instance's ports again on demand (injectNetworkInfo)."""

    def rewire(self, instance_id: str) -> int:
        """Makes the instance's ports as the host's records of them say: taps, bridges,
        security chains, the networks' DHCP and the metadata documents, whatever is there
        now. Returns how many ports were wired (0 on a host with no data plane, whose
        ports live in the domain XML only). InstanceNotFound if the instance is not here.
        Idempotent."""
        ...


@runtime_checkable
class RouterDriver(Protocol):
    """Optional: serving routers (the L3 host): their namespaces, legs and NAT."""

    def refresh_routers(self, routers: Sequence[agent_bus_pb2.RouterBinding]) -> int:
        """Keeps each binding whose revision is newer than the host's record of its router
        and makes the host serve it as it says (removed when deleted or down). Returns how
        many routers changed. Idempotent."""
        ...


@runtime_checkable
class RebuildDriver(Protocol):
    """Optional: building an instance's disks and domain again, in place."""

    def rebuild(
        self, spec: agent_bus_pb2.InstanceSpec, *, power_on: bool, rebuild_id: str
    ) -> PowerState:
        """Destroys the instance's domain and disks and creates them again from spec.

        Running (or shut off when power_on is False) on success. On failure the instance
        is gone from the host and BuildFailed is raised. Idempotent per rebuild_id: when
        that rebuild already finished nothing changes and the current state is returned.
        """
        ...


@runtime_checkable
class SnapshotDriver(Protocol):
    """Optional: reading an instance's root disk for a snapshot."""

    def root_disk(self, instance_id: str) -> Path | None:
        """The file of the instance's root disk (qcow2), or None when the host keeps no disk
        of its own for it (a simulated guest, whose disk is its image). InstanceNotFound
        if absent."""
        ...


@runtime_checkable
class ImageCacheDriver(Protocol):
    """Optional: a host-side image cache that needs periodic pruning."""

    def prune_image_cache(self, max_age_s: float) -> list[str]:
        """Removes cached images no instance on this host uses that were last used more
        than max_age_s seconds ago; returns their ids."""
        ...


@runtime_checkable
class ResizeInPlaceDriver(Protocol):
    """Optional: a move that stays on one host (resize to the same host, and its revert)."""

    def resize_in_place(self, spec: agent_bus_pb2.InstanceSpec, *, power_on: bool) -> PowerState:
        """Gives the existing domain the spec's vCPUs and memory, keeping its disks; running
        afterwards when power_on, shut off otherwise. Idempotent; InstanceNotFound if absent."""
        ...
