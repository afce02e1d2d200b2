"""`loom agent`: one host, or a simulated fleet of hosts in one process.

A simulated fleet shares one NATS connection, one gRPC server and one conductor channel;
each host has its own libvirt connection and its own durable JetStream consumer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from loom.compute.v1 import compute_pb2_grpc

from controlplane.config import LoomConfig
from controlplane.runtime import bus
from controlplane.runtime.busfaults import BusFaults
from controlplane.runtime.grpcserver import (
    Registration,
    insecure_or_secure_channel,
    start_grpc_server,
)
from nodeagent.agent import HostAgent
from nodeagent.driver.libvirt_driver import LibvirtDriver, write_simulated_node
from nodeagent.fleet import GrpcFleetView
from nodeagent.grpc_api import SERVICE_NAME, ComputeApi
from nodeagent.images.cache import ImageCache
from nodeagent.images.source import HttpImageSource, ImageSource, LocalImageSource, file_token
from nodeagent.images.upload import HttpImageUploader
from nodeagent.metrics import watch_consumers
from nodeagent.network import DataPlaneConfig, HostDataPlane
from nodeagent.snapshots import SnapshotTaker

log = logging.getLogger(__name__)

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
# How many hosts start or stop at once: enough to be quick, few enough to spare NATS.
_PARALLEL = 32


def host_names(cfg: LoomConfig, simulate: int, host_prefix: str) -> list[str]:
    if simulate > 0:
        names = [f"{host_prefix}-{i:04d}" for i in range(simulate)]
    else:
        names = [cfg.agent.host or socket.gethostname().split(".")[0]]
    bad = [n for n in names if not bus.valid_host_name(n)]
    if bad:
        raise ValueError(f"host name {bad[0]!r} cannot be a NATS subject token")
    return names


def make_image_source(cfg: LoomConfig) -> ImageSource:
    """The image service over HTTP when `agent.image_url` is set, else the data directory's
    image store (the all-in-one case)."""
    if cfg.agent.image_url:
        token_file = cfg.agent.image_token_file

        def no_token() -> str:
            return ""

        token = file_token(Path(token_file)) if token_file else no_token
        return HttpImageSource(cfg.agent.image_url, token)
    return LocalImageSource(cfg.data_path / "images")


def make_dataplane(cfg: LoomConfig, host: str, *, simulated: bool) -> HostDataPlane | None:
    """The host's network data plane, or None when it is off. Simulated hosts share one
    machine and have no guests to connect: they always skip it."""
    if simulated or not cfg.agent.network_dataplane:
        log.info(
            "network data plane off: ports are described in domain XML only",
            extra={"host": host, "reason": "simulated host" if simulated else "configured off"},
        )
        return None
    if not cfg.agent.network_local_ip:
        raise ValueError("agent.network_dataplane needs agent.network_local_ip (the VTEP)")
    state = cfg.agent.network_state_dir or str(cfg.data_path / "network")
    return HostDataPlane(
        DataPlaneConfig(
            local_ip=cfg.agent.network_local_ip,
            underlay_device=cfg.agent.network_underlay_device,
            peers=tuple(cfg.agent.network_vxlan_peers),
            state_dir=Path(state),
        )
    )


def default_vtep_address() -> str:
    """The address this machine would send from towards the outside (the source address of
    its default route), a sensible VTEP when none is configured; 127.0.0.1 when there is
    no route out (a lone host needs no peers: its VXLAN devices flood nowhere)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # A UDP connect only picks a route and a source address; nothing is sent.
        probe.connect(("192.0.2.1", 4789))
        return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def make_snapshot_taker(cfg: LoomConfig) -> SnapshotTaker | None:
    """Snapshots need somewhere to upload to: the image service over HTTP
    (`agent.image_url`); without it the host refuses snapshots."""
    if not cfg.agent.image_url:
        return None
    token_file = cfg.agent.image_token_file
    token = file_token(Path(token_file)) if token_file else (lambda: "")
    return SnapshotTaker(
        source=make_image_source(cfg),
        uploader=HttpImageUploader(cfg.agent.image_url, token, timeout=600.0),
        scratch=cfg.data_path / "agent" / "snapshots",
    )


def make_driver(cfg: LoomConfig, host: str) -> LibvirtDriver:
    """A driver for `host`. For test:/// every host gets a node XML of its own, which also
    gives it a private domain set (see libvirt_driver). Real hypervisors get an image
    cache beside their instance folders."""
    agent_dir = cfg.data_path / "agent"
    if cfg.agent.instances_path:
        instances = Path(cfg.agent.instances_path) / host
    else:
        instances = agent_dir / "instances" / host
    uri = cfg.agent.libvirt_uri
    disk_gb: int | None = None
    images: ImageCache | None = None
    if uri.startswith("test:"):
        uri = write_simulated_node(
            agent_dir / "hosts" / f"{host}.xml",
            vcpus=cfg.agent.sim_vcpus,
            memory_mb=cfg.agent.sim_memory_mb,
        )
        disk_gb = cfg.agent.sim_disk_gb
    else:
        images = ImageCache(
            LibvirtDriver.default_image_cache_dir(instances), make_image_source(cfg)
        )
    return LibvirtDriver(
        uri,
        host=host,
        instances_dir=instances,
        vnc_listen=cfg.agent.vnc_listen,
        disk_gb=disk_gb,
        images=images,
        virt_type=cfg.agent.virt_type,
        soft_reboot_timeout=float(cfg.agent.shutdown_timeout),
        dataplane=make_dataplane(cfg, host, simulated=uri.startswith("test:")),
        simulated_latency_s=cfg.agent.sim_hypervisor_latency_s,
    )


def advertised_host(listen: str) -> str:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return socket.gethostname()
    return host


async def _bounded(items: Iterable[HostAgent], fn: Callable[[HostAgent], Awaitable[None]]) -> None:
    gate = asyncio.Semaphore(_PARALLEL)

    async def one(agent: HostAgent) -> None:
        async with gate:
            await fn(agent)

    await asyncio.gather(*(one(a) for a in items))


async def serve(
    cfg: LoomConfig, stop: asyncio.Event, simulate: int = 0, host_prefix: str = "sim"
) -> None:
    """Runs the agents until `stop` is set; then drains them and closes everything."""
    hosts = host_names(cfg, simulate, host_prefix)
    # Hypervisor calls that block run in worker threads (HostAgent.call_driver, snapshots).
    # asyncio's default pool has cpu_count + 4 of them: in a fleet of simulated hosts with
    # a slow hypervisor, one host's call would wait for another host's to end, as no two
    # real hosts do. A thread per host, and a few for the process's own work.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=max(_PARALLEL, len(hosts) + 4), thread_name_prefix="driver")
    )
    # Tells every host to replace its pull request after a reconnect: the old one may
    # have died with a restarted server, and waiting out its expiry would stall commands.
    watch = bus.ConnectionWatch()
    nc = await bus.connect(
        cfg.nats.url or DEFAULT_NATS_URL, cfg.nats, f"loom-agent-{hosts[0]}", watch=watch
    )
    agents: dict[str, HostAgent] = {}
    placements: dict[str, str] = {}
    server = None
    channel = None
    started: list[HostAgent] = []
    stop_watching: Callable[[], None] | None = None
    try:
        if cfg.nats.user:
            # A NATS user of its own (controlplane/runtime/natsauth.py) may read the
            # streams but not create or change them: the control plane makes them.
            await bus.wait_for_streams(nc.jetstream())
        else:
            await bus.ensure_streams(nc.jetstream(), cfg.nats)
        server = await start_grpc_server(
            cfg.agent.listen,
            [
                Registration(
                    servicer=ComputeApi(agents, placements),
                    add_to_server=compute_pb2_grpc.add_ComputeServiceServicer_to_server,
                    service_name=SERVICE_NAME,
                )
            ],
            cfg.tls,
        )
        host_ip = advertised_host(cfg.agent.listen)
        endpoint = f"{host_ip}:{server.port}"
        channel = insecure_or_secure_channel(
            cfg.agent.conductor_target or cfg.conductor.listen, cfg.tls
        )
        fleet = GrpcFleetView(channel)
        snapshots = make_snapshot_taker(cfg)
        for host in hosts:
            agents[host] = HostAgent(
                host=host,
                driver=make_driver(cfg, host),
                nc=nc,
                cfg=cfg.agent,
                compute_endpoint=endpoint,
                host_ip=host_ip,
                fleet=fleet,
                placements=placements,
                watch=watch,
                ack_wait=cfg.nats.ack_wait_s or 30.0,
                faults=BusFaults.from_config(cfg.nats),
                snapshots=snapshots,
            )

        async def start(agent: HostAgent) -> None:
            await agent.start()
            started.append(agent)

        await _bounded(agents.values(), start)
        stop_watching = watch_consumers(nc.jetstream(), (a.durable_name for a in agents.values()))
        log.info(
            "ready", extra={"service": "agent", "hosts": len(agents), "grpc_port": server.port}
        )
        await stop.wait()
    finally:
        if stop_watching is not None:
            stop_watching()
        # Every host stops taking commands at once (each finishes the command in hand),
        # before the slower part of stopping runs 32 at a time.
        await asyncio.gather(*(a.stop_consuming() for a in started))
        await _bounded(started, lambda a: a.stop())
        if server is not None:
            await server.stop()
        if channel is not None:
            await channel.close()
        await nc.drain()
        log.info("stopped", extra={"service": "agent", "hosts": len(started)})
