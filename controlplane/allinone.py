"""`loom up`: every Loom service on one machine, each in its own process, in the foreground.

Nothing needs to run beforehand: SQLite in the data directory, a nats-server child with
JetStream, N simulated hypervisor hosts. A child that dies is restarted (with backoff);
SIGTERM or SIGINT stops them all in reverse order.

The agent downloads images from the gateway's Image v2 API with a service token that
`loom up` keeps fresh in `<data_dir>/agent/image-token` (see controlplane.servicetoken).
With `--hypervisor qemu` the agent drives qemu:///system (instances under
`agent.instances_path`, default /var/lib/loom/instances, which QEMU's user can reach),
and the test guest is built and registered as the image `loom-test-guest`; the agent's
network data plane (bridges, VXLAN, DHCP, metadata) is on unless configured off. Every start
makes sure the public image `loom-tiny` exists (controlplane.tinyimage), and the ready line
ends with a command that boots a server from it, so a fresh Loom can boot at once.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

from controlplane import tinyimage
from controlplane.config import HOSTABLE_DOMAINS, LoomConfig
from controlplane.db import migrate
from controlplane.guestimage import IMAGE_NAME as GUEST_IMAGE_NAME
from controlplane.guestimage import GuestImageError, register_guest_image, register_tiny_image
from controlplane.runtime import certs, natsauth
from controlplane.runtime.natsserver import (
    NatsServerProcess,
    free_port,
    start_nats_server,
)
from controlplane.seedfile import load_or_create
from controlplane.servicetoken import ServiceToken, ServiceTokenError
from nodeagent.service import default_vtep_address, host_names


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff: float = field(default=0.5)

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _sync_channel(target: str, creds: grpc.ChannelCredentials | None) -> grpc.Channel:
    if creds is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, creds)


def _grpc_healthy(
    target: str, creds: grpc.ChannelCredentials | None = None, timeout: float = 0.5
) -> bool:
    channel = _sync_channel(target, creds)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False
    finally:
        channel.close()


def hosts_reporting_since(
    target: str,
    since: datetime,
    creds: grpc.ChannelCredentials | None = None,
    timeout: float = 2.0,
) -> int:
    """How many hosts the scheduler at `target` holds as up, with a heartbeat at or after
    `since`. A host row left by an earlier run does not count until its agent beats again."""
    channel = _sync_channel(target, creds)
    try:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        resp = stub.ListHosts(scheduler_pb2.ListHostsRequest(), timeout=timeout)
    except grpc.RpcError:
        return 0
    finally:
        channel.close()
    return sum(
        1
        for h in resp.hosts
        if h.up
        and h.HasField("last_heartbeat_at")
        and h.last_heartbeat_at.ToDatetime(tzinfo=UTC) >= since
    )


def _http_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _port_free(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    with socket.socket() as s:
        try:
            s.bind((host, int(port)))
            return True
        except OSError:
            return False


DEFAULT_QEMU_INSTANCES = "/var/lib/loom/instances"
# The children `loom up` starts, in start order.
SERVICE_NAMES = ("scheduler", "conductor", "agent", "gateway")
# With --split-domains the identity, image and catalog services run apart, before the
# conductor, which then hosts none of them.
SPLIT_SERVICE_NAMES = ("scheduler", *HOSTABLE_DOMAINS, "conductor", "agent", "gateway")


def _metrics_addresses(cfg: LoomConfig, services: Iterable[str]) -> dict[str, str]:
    """Each service's /metrics address: as configured, or a free port on the same host when
    that one is taken (or is port 0), so every child can listen and the ready output can
    say where. A service whose endpoint is turned off ("") is left out."""
    out: dict[str, str] = {}
    for name in services:
        listen = cfg.metrics.listen_for(name)
        if not listen:
            continue
        host, _, port = listen.rpartition(":")
        if port == "0" or not _port_free(listen):
            listen = f"{host}:{free_port()}"
        out[name] = listen
    return out


def metrics_line(addresses: dict[str, str]) -> str:
    """Where each child serves /metrics, as `loom up` prints it before the ready line."""
    if not addresses:
        return "loom: metrics endpoints are turned off"
    urls = []
    for name, listen in addresses.items():
        host, _, port = listen.rpartition(":")
        if host.strip("[]") in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        urls.append(f"{name} http://{host}:{port}/metrics")
    return "loom: metrics: " + ", ".join(urls)


def tracing_target(exporter: str) -> str:
    """`tracing.exporter` as the children get it: a file's path made absolute, so it names
    one file whatever a child's working directory."""
    if exporter.startswith("file:"):
        return "file:" + str(Path(exporter[len("file:") :]).resolve())
    return exporter


def boot_command(clouds_yaml: Path, image: str) -> str:
    """A shell command that boots one server on this Loom, as printed in the ready line: it
    names the credentials file and the client by absolute path, so it works pasted into
    any shell on this machine."""
    client = Path(sys.executable).parent / "openstack"
    openstack = str(client) if client.exists() else "openstack"
    return (
        f"OS_CLIENT_CONFIG_FILE={shlex.quote(str(clouds_yaml))} {shlex.quote(openstack)} "
        f"--os-cloud loom server create --image {image} --flavor m1.tiny --nic none --wait vm1"
    )


def _tls_env(files: certs.IdentityFiles) -> dict[str, str]:
    return {
        "LOOM_TLS__CA": str(files.ca),
        "LOOM_TLS__CERT": str(files.cert),
        "LOOM_TLS__KEY": str(files.key),
        "LOOM_TLS__REQUIRE_CLIENT_AUTH": "true",
    }


# The children that use NATS, each as a user of its own.
NATS_CLIENTS = ("conductor", "scheduler", "agent")


def _nats_users(directory: Path, agent_hosts: list[str]) -> list[natsauth.NatsUser]:
    users = [
        natsauth.NatsUser(name, natsauth.password_for(directory, name))
        for name in NATS_CLIENTS
        if name != "agent"
    ]
    users.append(
        natsauth.NatsUser(
            "agent",
            natsauth.password_for(directory, "agent"),
            natsauth.agent_permissions("agent", agent_hosts),
        )
    )
    return users


def qemu_dataplane_env(cfg: LoomConfig) -> dict[str, str]:
    """The agent's network data plane under `loom up --hypervisor qemu`: on unless the
    configuration turns it off, so a server booted on a network gets its NIC, DHCP and
    metadata. One host needs no VXLAN peers; its VTEP is the configured address or the
    source address of the default route. Simulated hosts always skip the data plane."""
    agent = cfg.agent
    if "network_dataplane" in agent.model_fields_set and not agent.network_dataplane:
        return {}
    env = {"LOOM_AGENT__NETWORK_DATAPLANE": "true"}
    if not agent.network_local_ip:
        env["LOOM_AGENT__NETWORK_LOCAL_IP"] = default_vtep_address()
    return env


def _listen_or_free(listen: str) -> str:
    return listen if _port_free(listen) else f"127.0.0.1:{free_port()}"


def run_all_in_one(
    cfg: LoomConfig, *, hosts: int, hypervisor: str = "test", split_domains: bool = False
) -> int:
    if hypervisor == "qemu":
        # Before anything starts: a machine that cannot run guests stops here, plainly.
        from nodeagent.hostprep import prepare_qemu_host

        host = prepare_qemu_host()
        for line in host.changed:
            print(f"loom: {line}", flush=True)
        for line in host.problems:
            print(f"loom: {line}", file=sys.stderr, flush=True)
        if not host.libvirtd_reachable:
            return 1
    data = cfg.data_path
    data.mkdir(parents=True, exist_ok=True)
    logs = data / "logs"
    logs.mkdir(exist_ok=True)
    migrate.upgrade(cfg.database_url)

    nats: NatsServerProcess | None = None
    nats_url = cfg.nats.url
    # The embedded nats-server knows one user per NATS client child; an agent's user may
    # use its own hosts' subjects only (controlplane/runtime/natsauth.py).
    nats_env: dict[str, dict[str, str]] = {}
    if not nats_url:
        agent_hosts = host_names(cfg, hosts if hypervisor == "test" else 0, "sim")
        users = _nats_users(data / "nats-users", agent_hosts)
        nats = start_nats_server(
            data / "nats",
            sync_always=cfg.nats.sync_always,
            tied_to_parent=True,
            authorization=natsauth.authorization_block(users),
        )
        nats_url = nats.url
        nats_env = {
            u.name: {"LOOM_NATS__USER": u.name, "LOOM_NATS__PASSWORD": u.password} for u in users
        }

    conductor_listen = _listen_or_free(cfg.conductor.listen)
    scheduler_listen = _listen_or_free(cfg.scheduler.listen)
    service_names = SPLIT_SERVICE_NAMES if split_domains else SERVICE_NAMES
    # Each domain running apart listens on its own address (the gateway derives its targets
    # from them: LoomConfig.domain_target).
    domain_listen = (
        {d: _listen_or_free(getattr(cfg, d).listen) for d in HOSTABLE_DOMAINS}
        if split_domains
        else {}
    )

    metrics_listen = _metrics_addresses(cfg, service_names)
    gw_host = "127.0.0.1" if cfg.gateway.host in ("0.0.0.0", "") else cfg.gateway.host
    local_url = f"http://{gw_host}:{cfg.gateway.port}"
    token_path = data / "agent" / "image-token"
    env = dict(os.environ)
    env.update(
        {
            "LOOM_DATA_DIR": str(data),
            "LOOM_DATABASE__URL": cfg.database_url,
            "LOOM_NATS__URL": nats_url,
            "LOOM_CONDUCTOR__LISTEN": conductor_listen,
            "LOOM_SCHEDULER__LISTEN": scheduler_listen,
            "LOOM_GATEWAY__PORT": str(cfg.gateway.port),
            "LOOM_GATEWAY__HOST": cfg.gateway.host,
            "LOOM_AGENT__IMAGE_URL": f"{local_url}/image",
            "LOOM_AGENT__IMAGE_TOKEN_FILE": str(token_path),
        }
    )
    for name, listen in metrics_listen.items():
        env[f"LOOM_METRICS__LISTEN__{name.upper()}"] = listen
    if not cfg.network.l3_host:
        # The first host serves the routers (a simulated one has no data plane to do it).
        env["LOOM_NETWORK__L3_HOST"] = host_names(cfg, hosts if hypervisor == "test" else 0, "sim")[
            0
        ]
    trace_target = tracing_target(cfg.tracing.exporter)
    if trace_target:
        # Every child records its spans to the same place (a file: all append to it).
        env["LOOM_TRACING__EXPORTER"] = trace_target
    if split_domains:
        env["LOOM_CONDUCTOR__HOSTED_DOMAINS"] = "[]"
        for name, listen in domain_listen.items():
            env[f"LOOM_{name.upper()}__LISTEN"] = listen
    if hypervisor == "qemu":
        env["LOOM_AGENT__LIBVIRT_URI"] = "qemu:///system"
        instances = Path(cfg.agent.instances_path or DEFAULT_QEMU_INSTANCES)
        # QEMU runs as libvirt-qemu: every folder above its disks needs o+x.
        instances.mkdir(parents=True, exist_ok=True, mode=0o755)
        env["LOOM_AGENT__INSTANCES_PATH"] = str(instances)
        dataplane = qemu_dataplane_env(cfg)
        env.update(dataplane)
        if dataplane:
            vtep = dataplane.get("LOOM_AGENT__NETWORK_LOCAL_IP", cfg.agent.network_local_ip)
            print(f"loom: network data plane on (VTEP {vtep})", flush=True)
    # If `loom up` itself is killed outright, its services must not live on. Each child
    # arranges that itself, so Popen can vfork() it: this process talks gRPC, and gRPC's
    # fork handlers can hang a plain fork() for good.
    python = [sys.executable, "-m", "controlplane.cli", "--exit-with-parent", str(os.getpid())]
    agent_args = ["agent"] if hypervisor == "qemu" else ["agent", "--simulate", str(hosts)]
    argv = {name: [*python, name] for name in service_names}
    argv["agent"] = [*python, *agent_args]
    # Mutual TLS on every gRPC wire: each child holds the certificate of its own identity,
    # which the services it calls authorise (controlplane/runtime/callers.py).
    tls_dir = data / "tls"
    child_env = {
        name: env | _tls_env(certs.issue(tls_dir, name)) | nats_env.get(name, {})
        for name in service_names
    }
    operator = certs.issue(tls_dir, "operator")
    operator_creds = grpc.ssl_channel_credentials(
        operator.ca.read_bytes(), operator.key.read_bytes(), operator.cert.read_bytes()
    )
    children = [
        Child(name, argv[name], child_env[name], logs / f"{name}.log") for name in service_names
    ]
    stopping = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    expected_hosts = hosts if hypervisor == "test" else 1
    # The scheduler stamps heartbeats with its own clock, on this machine, as it hears them.
    agents_since = datetime.now(UTC)

    def ready(child: Child) -> bool:
        if child.name == "scheduler":
            return _grpc_healthy(scheduler_listen, operator_creds)
        if child.name == "conductor":
            return _grpc_healthy(conductor_listen, operator_creds)
        if child.name in domain_listen:
            return _grpc_healthy(domain_listen[child.name], operator_creds)
        if child.name == "gateway":
            return _http_up(cfg.gateway.host, cfg.gateway.port)
        # "Ready" promises a server can be placed: every host has reported to the scheduler.
        return (
            hosts_reporting_since(scheduler_listen, agents_since, operator_creds) >= expected_hosts
        )

    try:
        for child in children:
            child.start()
            # An agent on qemu:///system may wait for libvirt to probe QEMU first.
            deadline = time.monotonic() + (180 if child.name == "agent" else 60)
            while not ready(child):
                if stopping:
                    return 0
                if not child.alive() or time.monotonic() > deadline:
                    print(
                        f"loom: {child.name} failed to start; see {child.log_path}",
                        file=sys.stderr,
                    )
                    return 1
                time.sleep(0.1)
        service_token = ServiceToken(f"{local_url}/identity", load_or_create(data), token_path)
        try:
            service_token.refresh()
        except ServiceTokenError as exc:
            print(f"loom: no service token for image downloads: {exc}", file=sys.stderr)
            return 1
        image_url = f"{local_url}/image"
        try:
            boot_image_id = register_tiny_image(image_url, service_token.token())
        except (GuestImageError, httpx.HTTPError) as exc:
            print(f"loom: the image {tinyimage.IMAGE_NAME} is unavailable: {exc}", file=sys.stderr)
            return 1
        boot_image = tinyimage.IMAGE_NAME
        if hypervisor == "qemu":
            print("loom: making sure the test guest image is registered…", flush=True)
            try:
                guest = register_guest_image(image_url, service_token.token(), data / "testimage")
            except (GuestImageError, RuntimeError) as exc:
                print(f"loom: the test guest image is unavailable: {exc}", file=sys.stderr)
                return 1
            boot_image, boot_image_id = GUEST_IMAGE_NAME, guest.id
        url = cfg.gateway.public_url or f"http://{cfg.gateway.host}:{cfg.gateway.port}"
        print(metrics_line(metrics_listen), flush=True)
        if trace_target:
            print(f"loom: tracing: every service's spans to {trace_target}", flush=True)
        grpc_line = ", ".join(
            f"{name} {listen}"
            for name, listen in (
                ("conductor", conductor_listen),
                ("scheduler", scheduler_listen),
                *domain_listen.items(),
            )
        )
        print(
            f"Loom is ready: {url} (compute {url}/compute/v2.1, identity {url}/identity/v3); "
            f"{hosts if hypervisor == 'test' else 1} {hypervisor} host(s); "
            f"default image {boot_image} ({boot_image_id}); "
            f"gRPC {grpc_line}; "
            f"mutual TLS, certificates in {tls_dir} (operator.pem for grpcurl); "
            f"logs in {logs}; boot a server: {boot_command(data / 'clouds.yaml', boot_image)}",
            flush=True,
        )
        while not stopping:
            try:
                service_token.refresh_if_due()
            except ServiceTokenError as exc:
                # Retried on the next turn; the old token is still good for half its life.
                print(f"loom: service token refresh failed: {exc}", file=sys.stderr, flush=True)
                service_token.refresh_at = time.monotonic() + 10
            for child in children:
                if not child.alive() and not stopping:
                    # Restart with backoff, so a crash loop does not spin the machine.
                    if time.monotonic() - child.started_at < 10:
                        child.backoff = min(child.backoff * 2, 30.0)
                    else:
                        child.backoff = 0.5
                    time.sleep(child.backoff)
                    child.restarts += 1
                    print(f"loom: restarting {child.name} (restart {child.restarts})", flush=True)
                    child.start()
            time.sleep(0.2)
        return 0
    finally:
        for child in reversed(children):
            child.stop()
        if nats is not None:
            nats.stop()
