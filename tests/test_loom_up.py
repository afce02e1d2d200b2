"""`loom up` runs every service on embedded defaults, answers health on every gRPC port,
serves grpcurl through reflection, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
import pytest
from loom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

from controlplane.runtime.natsserver import free_port

ROOT = Path(__file__).resolve().parents[1]
GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


def _grpcurl(data_dir: Path, identity: str, *args: str) -> subprocess.CompletedProcess[str]:
    """grpcurl as an operator runs it against `loom up`: with the certificate of one of
    Loom's identities, from the data directory's tls/ folder."""
    tls = data_dir / "tls"
    return subprocess.run(
        [
            *(GRPCURL, "-cacert", str(tls / "ca.pem")),
            *("-cert", str(tls / f"{identity}.pem"), "-key", str(tls / f"{identity}.key")),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _operator_channel(data_dir: Path, target: str) -> grpc.Channel:
    tls = data_dir / "tls"
    creds = grpc.ssl_channel_credentials(
        (tls / "ca.pem").read_bytes(),
        (tls / "operator.key").read_bytes(),
        (tls / "operator.pem").read_bytes(),
    )
    return grpc.secure_channel(target, creds)


# The process, the gateway URL, the gRPC targets and what it printed up to its ready line.
LoomUp = tuple[subprocess.Popen[str], str, list[str], str]


@pytest.fixture
def loom_up(tmp_path: Path) -> Iterator[LoomUp]:
    with _loom_up(tmp_path, hosts=2) as running:
        yield running


@contextmanager
def _loom_up(tmp_path: Path, hosts: int, *extra: str, cwd: Path = ROOT) -> Iterator[LoomUp]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'generated'}"
    env["LOOM_CONDUCTOR__LISTEN"] = f"127.0.0.1:{free_port()}"
    env["LOOM_SCHEDULER__LISTEN"] = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controlplane.cli",
            "--data-dir",
            str(tmp_path / "d"),
            "up",
            "--port",
            str(port),
            "--hosts",
            str(hosts),
            *extra,
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 180
    ready = ""
    printed: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        printed.append(line)
        if line.startswith("Loom is ready"):
            ready = "".join(printed)
            break
    if not ready:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        pytest.fail("loom up printed no ready line")
    (grpc_part,) = re.findall(r"gRPC ([^;]+);", ready)
    targets = re.findall(r"\w+ (127\.0\.0\.1:\d+)", grpc_part)
    try:
        yield proc, f"http://127.0.0.1:{port}", targets, ready
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


def test_loom_up_serves_health_and_reflection_on_every_grpc_port_and_stops_on_sigterm(
    loom_up: LoomUp, tmp_path: Path
) -> None:
    proc, url, targets, _ = loom_up
    assert len(targets) == 2
    data = tmp_path / "d"
    for target in targets:
        health = _grpcurl(data, "operator", target, "grpc.health.v1.Health/Check")
        assert '"status": "SERVING"' in health.stdout, health.stderr
        listing = _grpcurl(data, "operator", target, "list").stdout
        assert "grpc.health.v1.Health" in listing
    services = _grpcurl(data, "operator", targets[0], "list").stdout
    # The conductor's port hosts each domain's own services, each in its own proto package.
    for service in (
        "loom.conductor.v1.ServersService",
        "loom.identity.v1.IdentityService",
        "loom.image.v1.ImagesService",
        "loom.catalog.v1.FlavorsService",
        "loom.catalog.v1.KeypairsService",
        "loom.catalog.v1.QuotasService",
        "loom.network.v1.NetworkService",
    ):
        assert service in services, services
    versions = httpx.get(f"{url}/compute/", timeout=10)
    assert versions.status_code == 200
    assert {v["id"] for v in versions.json()["versions"]} == {"v2.0", "v2.1"}
    assert (tmp_path / "d" / "clouds.yaml").exists()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def test_loom_up_prints_where_each_service_serves_metrics_and_each_answers(
    loom_up: LoomUp, tmp_path: Path
) -> None:
    _, _, _, printed = loom_up
    (line,) = [x for x in printed.splitlines() if x.startswith("loom: metrics: ")]
    urls = dict(re.findall(r"(\w+) (http://127\.0\.0\.1:\d+/metrics)", line))
    assert set(urls) == {"scheduler", "conductor", "agent", "gateway"}
    assert len(set(urls.values())) == 4
    for name, url in urls.items():
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200, name
        assert "loom_sql_statements_total" in page.text, name
        # Each child also logs where it listens.
        log = (tmp_path / "d" / "logs" / f"{name}.log").read_text()
        assert url in log, name
    agent = httpx.get(urls["agent"], timeout=10).text
    assert 'loom_agent_heartbeats_sent_total{host="sim-0000"}' in agent
    gateway = httpx.get(urls["gateway"], timeout=10).text
    assert "loom_http_request_duration_seconds_count" in gateway


def test_loom_up_trace_has_every_service_append_its_spans_to_one_file(tmp_path: Path) -> None:
    spans = tmp_path / "spans.jsonl"
    # A relative path, from where loom up runs: its children get the absolute path.
    with _loom_up(tmp_path, 1, "--trace", "file:spans.jsonl", cwd=tmp_path) as running:
        assert f"loom: tracing: every service's spans to file:{spans}" in running[3]
        # Getting ready already made spans in each: health checks answered (conductor,
        # scheduler, gateway), the agent's calls to the conductor.
        deadline = time.monotonic() + 30
        services: set[str] = set()
        while services != {"loom-conductor", "loom-scheduler", "loom-gateway", "loom-agent"}:
            assert time.monotonic() < deadline, f"spans only from {services}"
            time.sleep(0.2)
            if spans.exists():
                lines = spans.read_text().splitlines()
                services = {json.loads(line)["service"] for line in lines}


def test_loom_up_says_ready_only_once_every_simulated_host_is_up_in_the_scheduler(
    tmp_path: Path,
) -> None:
    started = datetime.now(UTC)
    with _loom_up(tmp_path, hosts=300) as (proc, _, targets, _):
        conductor, scheduler = targets
        assert conductor != scheduler
        with _operator_channel(tmp_path / "d", scheduler) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            hosts = stub.ListHosts(scheduler_pb2.ListHostsRequest(), timeout=30).hosts
        up = [h.name for h in hosts if h.up and h.last_heartbeat_at.ToDatetime(UTC) >= started]
        assert len(up) == 300, f"{len(up)} of 300 hosts up when Loom said it was ready"
        assert proc.poll() is None


def test_loom_up_keeps_a_private_service_token_the_image_api_accepts_and_never_logs_it(
    loom_up: LoomUp, tmp_path: Path
) -> None:
    _, url, _, _ = loom_up
    path = tmp_path / "d" / "agent" / "image-token"
    assert path.stat().st_mode & 0o777 == 0o600
    token = path.read_text().strip()
    images = httpx.get(f"{url}/image/v2/images", headers={"X-Auth-Token": token}, timeout=10)
    assert images.status_code == 200
    me = httpx.get(
        f"{url}/identity/v3/auth/tokens",
        headers={"X-Auth-Token": token, "X-Subject-Token": token},
        timeout=10,
    )
    assert me.status_code == 200, me.text
    assert me.json()["token"]["user"]["name"] == "loom-service"
    for log in (tmp_path / "d" / "logs").glob("*.log"):
        assert token not in log.read_text(errors="replace")


def test_loom_up_killed_outright_takes_its_services_and_nats_server_with_it(
    loom_up: LoomUp,
) -> None:
    import psutil

    proc, _, _, _ = loom_up
    children = psutil.Process(proc.pid).children(recursive=True)
    names = " ".join(" ".join(c.cmdline()) for c in children)
    assert "nats-server" in names
    args = {arg for c in children for arg in c.cmdline()}
    assert {"conductor", "scheduler", "agent", "gateway"} <= args, names
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(children, timeout=60)
    assert alive == [], f"orphans left running: {[c.pid for c in alive]}"


def test_the_ready_lines_boot_command_works_as_printed_and_boots_loom_tiny(
    tmp_path: Path,
) -> None:
    with _loom_up(tmp_path, hosts=2) as (_, url, _, ready):
        command = ready.split("boot a server: ", 1)[1].strip()
        assert "--image loom-tiny" in command
        booted = subprocess.run(
            ["bash", "-c", f"{command} -f value -c status"],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert booted.returncode == 0, booted.stderr
        assert booted.stdout.strip() == "ACTIVE", booted.stdout
    # Started again on the same data, Loom reuses its image rather than adding a second.
    with _loom_up(tmp_path, hosts=2) as (_, url, _, _):
        token = (tmp_path / "d" / "agent" / "image-token").read_text().strip()
        images = httpx.get(
            f"{url}/image/v2/images",
            params={"name": "loom-tiny"},
            headers={"X-Auth-Token": token},
            timeout=10,
        ).json()["images"]
        assert [(i["status"], i["visibility"]) for i in images] == [("active", "public")]


def _grpc_services(data_dir: Path, target: str) -> set[str]:
    result = _grpcurl(data_dir, "operator", target, "list")
    assert result.returncode == 0, result.stderr
    listing = result.stdout
    return {line for line in listing.splitlines() if line.startswith("loom.")}


def test_loom_up_split_domains_runs_identity_image_catalog_and_network_apart_and_a_server_boots(
    tmp_path: Path,
) -> None:
    with _loom_up(tmp_path, 1, "--split-domains") as (proc, _, _, printed):
        (grpc_part,) = re.findall(r"gRPC ([^;]+);", printed)
        targets = dict(re.findall(r"(\w+) (127\.0\.0\.1:\d+)", grpc_part))
        assert set(targets) == {
            "conductor",
            "scheduler",
            "identity",
            "image",
            "catalog",
            "network",
        }
        # Each process serves its own domain's services and no other's.
        assert _grpc_services(tmp_path / "d", targets["identity"]) == {
            "loom.identity.v1.IdentityService"
        }
        assert _grpc_services(tmp_path / "d", targets["image"]) == {"loom.image.v1.ImagesService"}
        assert _grpc_services(tmp_path / "d", targets["catalog"]) == {
            "loom.catalog.v1.FlavorsService",
            "loom.catalog.v1.KeypairsService",
            "loom.catalog.v1.QuotasService",
        }
        assert _grpc_services(tmp_path / "d", targets["network"]) == {
            "loom.network.v1.NetworkService"
        }
        conductor = _grpc_services(tmp_path / "d", targets["conductor"])
        assert "loom.conductor.v1.ServersService" in conductor
        assert not {s for s in conductor if not s.startswith("loom.conductor.")}, conductor
        # A boot crosses all four: a token (identity), the image, the flavor (catalog), the
        # server (compute), through the gateway that routes each to its owner.
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env["OS_CLIENT_CONFIG_FILE"] = str(tmp_path / "d" / "clouds.yaml")
        openstack = str(Path(sys.executable).parent / "openstack")
        create = subprocess.run(
            [
                *(openstack, "--os-cloud", "loom", "server", "create", "--image", "loom-tiny"),
                *("--flavor", "m1.tiny", "--nic", "none", "--wait", "-f", "value", "-c", "status"),
                "vm1",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert create.returncode == 0, create.stderr
        assert create.stdout.strip() == "ACTIVE"
        # The Network v2 API reaches `loom network` through the same gateway.
        for args in (
            ("network", "create", "n1"),
            ("subnet", "create", "--network", "n1", "--subnet-range", "10.0.0.0/24", "s1"),
            ("port", "create", "--network", "n1", "p1"),
        ):
            made = subprocess.run(
                [openstack, "--os-cloud", "loom", *args, "-f", "value", "-c", "id"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert made.returncode == 0, made.stderr
        listed = subprocess.run(
            [openstack, "--os-cloud", "loom", "port", "list", "-f", "value", "-c", "Name"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert listed.stdout.split() == ["p1"], listed.stderr
        for name in ("identity", "image", "catalog", "network"):
            assert (tmp_path / "d" / "logs" / f"{name}.log").exists(), name
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_loom_up_grpc_refuses_plaintext_and_authorises_each_caller_by_its_certificate(
    loom_up: LoomUp, tmp_path: Path
) -> None:
    _, _, targets, _ = loom_up
    conductor, scheduler = targets
    data = tmp_path / "d"
    plain = subprocess.run(
        [GRPCURL, "-plaintext", conductor, "grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert plain.returncode != 0
    assert '"status": "SERVING"' not in plain.stdout
    # Every Loom part may ask for health; only the conductor may ask the scheduler for hosts.
    assert _grpcurl(data, "agent", scheduler, "grpc.health.v1.Health/Check").returncode == 0
    refused = _grpcurl(data, "agent", scheduler, "loom.scheduler.v1.SchedulerService/ListHosts")
    assert "PermissionDenied" in refused.stderr, refused.stderr
    assert "caller 'agent' may not call loom.scheduler.v1.SchedulerService" in refused.stderr
    allowed = _grpcurl(data, "conductor", scheduler, "loom.scheduler.v1.SchedulerService/ListHosts")
    assert allowed.returncode == 0, allowed.stderr
    assert '"hosts"' in allowed.stdout
    # An empty project means every project: an agent may not ask, only the gateway may.
    servers = _grpcurl(
        data,
        "agent",
        "-d",
        "{}",
        conductor,
        "loom.conductor.v1.ServersService/ListServers",
    )
    assert "PermissionDenied" in servers.stderr, servers.stderr


def test_loom_up_serves_os_aggregates_from_the_scheduler_over_mutual_tls(
    loom_up: LoomUp, tmp_path: Path
) -> None:
    _, _, targets, _ = loom_up
    _, scheduler = targets
    data = tmp_path / "d"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "LOOM_"))}
    env["OS_CLIENT_CONFIG_FILE"] = str(data / "clouds.yaml")
    openstack = str(Path(sys.executable).parent / "openstack")

    def admin(*args: str) -> str:
        done = subprocess.run(
            [openstack, "--os-cloud", "loom-admin", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    host = admin("hypervisor", "list", "-f", "value", "-c", "Hypervisor Hostname").split()[0]
    admin("aggregate", "create", "--zone", "az9", "agg9")
    admin("aggregate", "add", "host", "agg9", host)
    assert "az9" in admin("availability", "zone", "list", "-f", "value", "-c", "Zone Name")
    # The gateway may call the scheduler's aggregates; an agent may not.
    refused = _grpcurl(
        data, "agent", scheduler, "loom.scheduler.v1.AggregatesService/ListAggregates"
    )
    assert "caller 'agent' may not call loom.scheduler.v1.AggregatesService" in refused.stderr


def test_loom_up_with_qemu_turns_the_network_data_plane_on_unless_configured_off(
    tmp_path: Path,
) -> None:
    from controlplane.allinone import qemu_dataplane_env
    from controlplane.config import load_config
    from nodeagent.service import make_dataplane

    cfg = load_config(environ={}, overrides={"data_dir": str(tmp_path)})
    env = qemu_dataplane_env(cfg)
    assert env["LOOM_AGENT__NETWORK_DATAPLANE"] == "true"
    assert env["LOOM_AGENT__NETWORK_LOCAL_IP"]  # picked: default route's source or loopback
    # What the agent child then reads: a real host with a data plane and no VXLAN peers.
    agent_cfg = load_config(
        environ=env | {"LOOM_AGENT__LIBVIRT_URI": "qemu:///system"},
        overrides={"data_dir": str(tmp_path)},
    )
    plane = make_dataplane(agent_cfg, "h1", simulated=False)
    assert plane is not None
    assert plane.config.peers == ()
    assert plane.config.local_ip == env["LOOM_AGENT__NETWORK_LOCAL_IP"]

    configured = load_config(
        environ={"LOOM_AGENT__NETWORK_LOCAL_IP": "192.0.2.7"},
        overrides={"data_dir": str(tmp_path)},
    )
    assert qemu_dataplane_env(configured) == {"LOOM_AGENT__NETWORK_DATAPLANE": "true"}
    off = load_config(
        environ={"LOOM_AGENT__NETWORK_DATAPLANE": "false"}, overrides={"data_dir": str(tmp_path)}
    )
    assert qemu_dataplane_env(off) == {}
