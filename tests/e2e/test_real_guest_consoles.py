"""A real guest through the REST API, on `loom up --hypervisor qemu`: boot, console output,
the VNC console through Loom's websocket proxy, power actions, a guest that powers itself
off, a guest that reads its key and user data from its config drive, and delete leaving
nothing behind.

Each TCG boot costs about 8 s on two cores, so the module boots three guests in all. The
stack is `loom up` itself (on the test's PostgreSQL), so the all-in-one qemu mode, the
agent's HTTP image downloads with the service token, and the registered test image are
exercised too.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import libvirt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from controlplane.runtime.natsserver import free_port
from controlplane.seedfile import load_or_create
from controlplane.servicetoken import password_auth
from controlplane.testimage import MARKER
from tests.support.libvirtd import SYSTEM_URI, require_libvirtd
from tests.support.postgres import temporary_database

pytestmark = pytest.mark.qemu

ROOT = Path(__file__).resolve().parents[2]
URI = SYSTEM_URI
HOST = "qemu-e2e"


@dataclass
class QemuCloud:
    url: str
    image_id: str
    data: Path
    instances: Path
    ready_line: str

    def token(self, user: str) -> str:
        seeded = load_or_create(self.data).user(user)
        assert seeded is not None
        body = password_auth(user, seeded.password, seeded.project)
        r = httpx.post(f"{self.url}/identity/v3/auth/tokens", json=body, timeout=10)
        assert r.status_code == 201, r.text
        return r.headers["x-subject-token"]


@pytest.fixture(scope="module")
def qemu_cloud(tmp_path_factory: pytest.TempPathFactory, pg_template: str) -> Iterator[QemuCloud]:
    require_libvirtd(URI)
    with temporary_database(pg_template) as db_url:
        yield from _run_qemu_cloud(tmp_path_factory, db_url)


def _run_qemu_cloud(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[QemuCloud]:
    data = tmp_path_factory.mktemp("loom-qemu")
    # QEMU runs as libvirt-qemu: pytest's 0700 temp root would lock it out of the disks.
    instances = Path(tempfile.mkdtemp(prefix="loom-qemu-e2e-", dir="/var/tmp"))
    instances.chmod(0o755)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    env.update(
        {
            "PYTHONPATH": f"{ROOT}:{ROOT / 'generated'}",
            "LOOM_DATABASE__URL": db_url,
            "LOOM_CONDUCTOR__LISTEN": f"127.0.0.1:{free_port()}",
            "LOOM_SCHEDULER__LISTEN": f"127.0.0.1:{free_port()}",
            "LOOM_AGENT__HOST": HOST,
            "LOOM_AGENT__INSTANCES_PATH": str(instances),
            "LOOM_AGENT__HEARTBEAT_INTERVAL": "1",
            "LOOM_AGENT__POWER_SYNC_INTERVAL": "1",
            # The busybox guest ignores ACPI: a short grace before libvirt's destroy.
            "LOOM_AGENT__SHUTDOWN_TIMEOUT": "2",
            "LOOM_LOGGING__FORMAT": "json",
        }
    )
    argv = [sys.executable, "-m", "controlplane.cli", "--data-dir", str(data)]
    proc = subprocess.Popen(
        [*argv, "up", "--port", str(port), "--hypervisor", "qemu"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    ready, seen = "", []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if line.startswith("Loom is ready"):
            ready = line
            break
    try:
        if not ready:
            pytest.fail("loom up --hypervisor qemu printed no ready line:\n" + "".join(seen))
        found = re.search(r"default image loom-test-guest \(([0-9a-f-]{36})\)", ready)
        assert found, ready
        yield QemuCloud(f"http://127.0.0.1:{port}", found.group(1), data, instances, ready)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        _destroy_leftovers(instances)
        shutil.rmtree(instances, ignore_errors=True)


def _domains() -> dict[str, str]:
    """UUID → name of every domain on qemu:///system."""
    conn = libvirt.open(URI)
    try:
        return {d.UUIDString(): d.name() for d in conn.listAllDomains(0)}
    finally:
        conn.close()


def _destroy_leftovers(instances: Path) -> None:
    """Whatever a failed run left on libvirt: domains whose disks live in our folder."""
    conn = libvirt.open(URI)
    try:
        for dom in conn.listAllDomains(0):
            if str(instances) not in dom.XMLDesc(0):
                continue
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    finally:
        conn.close()


class Api:
    def __init__(self, cloud: QemuCloud, user: str = "demo", version: str = "2.96") -> None:
        self.cloud = cloud
        self.headers = {
            "X-Auth-Token": cloud.token(user),
            "OpenStack-API-Version": f"compute {version}",
        }
        self.http = httpx.Client(base_url=cloud.url, headers=self.headers, timeout=30)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.http.close()

    def post(self, path: str, body: Any, version: str | None = None) -> httpx.Response:
        extra = {"OpenStack-API-Version": f"compute {version}"} if version else {}
        return self.http.post(f"/compute/v2.1{path}", json=body, headers=extra)

    def get(self, path: str, version: str | None = None) -> httpx.Response:
        extra = {"OpenStack-API-Version": f"compute {version}"} if version else {}
        return self.http.get(f"/compute/v2.1{path}", headers=extra)

    def status(self, sid: str) -> str:
        r = self.get(f"/servers/{sid}")
        if r.status_code == 404:
            return "DELETED"
        assert r.status_code == 200, r.text
        return str(r.json()["server"]["status"])

    def wait_status(self, sid: str, want: str, within: float = 90) -> float:
        started = time.monotonic()
        status = ""
        while time.monotonic() - started < within:
            status = self.status(sid)
            if status == want:
                return time.monotonic() - started
            if status == "ERROR":
                pytest.fail(f"server {sid} went to ERROR: {self.get(f'/servers/{sid}').text}")
            time.sleep(0.3)
        pytest.fail(f"server {sid} is {status}, not {want}, after {within} s")

    def console_output(self, sid: str, length: int | None = None) -> str:
        args = {} if length is None else {"length": length}
        r = self.post(f"/servers/{sid}/action", {"os-getConsoleOutput": args})
        assert r.status_code == 200, r.text
        return str(r.json()["output"])

    def wait_marker(self, sid: str, within: float = 90) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            r = self.post(f"/servers/{sid}/action", {"os-getConsoleOutput": {}})
            if r.status_code == 200 and MARKER in r.json()["output"]:
                return
            time.sleep(0.2)
        pytest.fail(f"no {MARKER} on the console of {sid} within {within} s")

    def boot(
        self, name: str, image: str, networks: Any = "none", groups: tuple[str, ...] = ()
    ) -> tuple[str, float]:
        started = time.monotonic()
        server = {"name": name, "imageRef": image, "flavorRef": "1", "networks": networks}
        if groups:
            server["security_groups"] = [{"name": g} for g in groups]
        r = self.post("/servers", {"server": server})
        assert r.status_code == 202, r.text
        return str(r.json()["server"]["id"]), started


def _ws_url(console_url: str) -> str:
    """The websocket noVNC's vnc_lite.html would open for this console URL."""
    parts = urlsplit(console_url)
    path = parse_qs(parts.query)["path"][0]
    return f"ws://{parts.netloc}/{path}"


async def _banner(ws_url: str, origin: str | None) -> bytes:
    kwargs: dict[str, Any] = {"subprotocols": ["binary"], "open_timeout": 20}
    if origin is not None:
        kwargs["origin"] = origin
    async with connect(ws_url, **kwargs) as ws:
        assert ws.subprotocol == "binary"
        data = await asyncio.wait_for(ws.recv(), 20)
        assert isinstance(data, bytes)
        return data


def _refused_status(ws_url: str, origin: str | None = None) -> int:
    async def attempt() -> int:
        try:
            await _banner(ws_url, origin)
        except InvalidStatus as exc:
            return int(exc.response.status_code)
        return 101

    return asyncio.run(attempt())


REPLAYS = 1000


def _connections(urls: list[str], origin: str) -> int:
    """How many of these websocket URLs the console proxy let through (101), tried 50 at a
    time."""

    async def attempt_all() -> int:
        gate = asyncio.Semaphore(50)

        async def one(url: str) -> int:
            async with gate:
                try:
                    async with connect(url, origin=origin, open_timeout=20):
                        return 1
                except InvalidStatus:
                    return 0

        return sum(await asyncio.gather(*(one(u) for u in urls)))

    return asyncio.run(attempt_all())


def _forged(ws_url: str, token: str) -> list[str]:
    """REPLAYS tokens that are not the real one: random ones of the same length and the real
    one with one character changed at each position in turn."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    out = []
    for i in range(REPLAYS):
        if i % 2:
            pos = i % len(token)
            swapped = alphabet[(alphabet.index(token[pos]) + 1) % len(alphabet)]
            fake = token[:pos] + swapped + token[pos + 1 :]
        else:
            fake = secrets.token_urlsafe(len(token))[: len(token)]
        out.append(ws_url.replace(f"token={token}", f"token={fake}"))
    return out


def test_a_real_guest_boots_shows_its_console_and_vnc_and_leaves_nothing_when_deleted(
    qemu_cloud: QemuCloud,
) -> None:
    with Api(qemu_cloud) as api, Api(qemu_cloud, "admin") as admin:
        _lifecycle(qemu_cloud, api, admin)


def _lifecycle(qemu_cloud: QemuCloud, api: Api, admin: Api) -> None:
    sid, posted = api.boot("real-1", qemu_cloud.image_id)
    api.wait_status(sid, "ACTIVE")
    api.wait_marker(sid)
    boot_s = time.monotonic() - posted
    print(f"\nreal guest: POST /servers to {MARKER} on the console took {boot_s:.1f} s")
    assert boot_s < 90
    assert "loom test guest" in api.console_output(sid)
    assert len(api.console_output(sid, length=1).splitlines()) <= 1

    r = api.post(
        f"/servers/{sid}/remote-consoles", {"remote_console": {"protocol": "vnc", "type": "novnc"}}
    )
    assert r.status_code == 200, r.text
    remote = r.json()["remote_console"]
    assert (remote["protocol"], remote["type"]) == ("vnc", "novnc")
    assert remote["url"].startswith(f"{qemu_cloud.url}/vnc/vnc_lite.html?path=")
    ws_url = _ws_url(remote["url"])
    assert asyncio.run(_banner(ws_url, qemu_cloud.url)) == b"RFB 003.008\n"
    # A client that is not a browser sends no Origin, and is let through too.
    assert asyncio.run(_banner(ws_url, None)) == b"RFB 003.008\n"
    assert _refused_status(ws_url, "http://evil.example") == 403
    assert _refused_status(ws_url.replace("token=", "token=x"), qemu_cloud.url) == 404
    assert _refused_status(ws_url.split("?")[0], qemu_cloud.url) == 401
    page = httpx.get(remote["url"], timeout=10)
    assert page.status_code == 200
    assert "noVNC" in page.text

    token = parse_qs(urlsplit(ws_url).query)["token"][0]
    shown = admin.get(f"/os-console-auth-tokens/{token}", version="2.31")
    assert shown.status_code == 200, shown.text
    assert shown.json()["console"]["instance_uuid"] == sid
    assert shown.json()["console"]["port"] >= 5900
    assert api.get(f"/os-console-auth-tokens/{token}", version="2.31").status_code == 403
    # Forged tokens: random, and the real one changed in one character. None connects.
    assert _connections(_forged(ws_url, token), qemu_cloud.url) == 0

    legacy = api.post(f"/servers/{sid}/action", {"os-getVNCConsole": {"type": "novnc"}}, "2.1")
    assert legacy.status_code == 200, legacy.text
    assert legacy.json()["console"]["type"] == "novnc"

    assert api.post(f"/servers/{sid}/action", {"os-stop": None}).status_code == 202
    api.wait_status(sid, "SHUTOFF")
    # The serial log outlives the power-off.
    assert MARKER in api.console_output(sid)
    assert api.post(f"/servers/{sid}/action", {"os-start": None}).status_code == 202
    api.wait_status(sid, "ACTIVE")
    r = api.post(f"/servers/{sid}/action", {"reboot": {"type": "HARD"}})
    assert r.status_code == 202, r.text
    api.wait_status(sid, "ACTIVE")

    folder = qemu_cloud.instances / HOST / sid
    assert (folder / "disk").exists()
    assert (folder / "console.log").exists()
    assert sid.upper() in {u.upper() for u in _domains()}
    assert api.http.delete(f"/compute/v2.1/servers/{sid}").status_code == 204
    api.wait_status(sid, "DELETED")
    assert sid.upper() not in {u.upper() for u in _domains()}
    assert not folder.exists()
    assert admin.get(f"/os-console-auth-tokens/{token}", version="2.31").status_code == 404
    assert _refused_status(ws_url, qemu_cloud.url) == 404
    # The token of the deleted server, replayed: none connects.
    assert _connections([ws_url] * REPLAYS, qemu_cloud.url) == 0
    # No service logged the token.
    for log in (qemu_cloud.data / "logs").glob("*.log"):
        assert token not in log.read_text(errors="replace"), log.name


def test_a_guest_that_powers_itself_off_becomes_shutoff(qemu_cloud: QemuCloud) -> None:
    with Api(qemu_cloud) as api, Api(qemu_cloud, "admin") as admin:
        _power_off(qemu_cloud, api, admin)


def _guest_image(qemu_cloud: QemuCloud, admin: Api, name: str, cmdline: str) -> str:
    """The test guest's kernel and initramfs with another kernel command line."""
    base = admin.http.get(f"/image/v2/images/{qemu_cloud.image_id}").json()
    body = {
        "name": name,
        "disk_format": "raw",
        "container_format": "bare",
        "visibility": "public",
        "kernel_id": base["kernel_id"],
        "ramdisk_id": base["ramdisk_id"],
        "os_command_line": cmdline,
    }
    created = admin.http.post("/image/v2/images", json=body)
    assert created.status_code == 201, created.text
    image_id = str(created.json()["id"])
    upload = admin.http.put(
        f"/image/v2/images/{image_id}/file",
        content=b"\0" * (1024 * 1024),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert upload.status_code == 204, upload.text
    return image_id


def _power_off(qemu_cloud: QemuCloud, api: Api, admin: Api) -> None:
    image_id = _guest_image(
        qemu_cloud, admin, "loom-test-guest-poweroff", "console=ttyS0 loom_poweroff=2"
    )
    sid, _ = api.boot("powers-off", image_id)
    api.wait_status(sid, "ACTIVE")
    api.wait_marker(sid)
    api.wait_status(sid, "SHUTOFF", within=60)
    assert "powering off" in api.console_output(sid)
    assert api.http.delete(f"/compute/v2.1/servers/{sid}").status_code == 204
    api.wait_status(sid, "DELETED")
    assert not (qemu_cloud.instances / HOST / sid).exists()


def test_a_guest_reads_its_key_and_user_data_from_the_config_drive(qemu_cloud: QemuCloud) -> None:
    with Api(qemu_cloud) as api:
        _config_drive(qemu_cloud, api)


def _config_drive(qemu_cloud: QemuCloud, api: Api) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    openssh = key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    public = f"{openssh} cd-key@loom"
    name = f"cd-{secrets.token_hex(3)}"
    r = api.post("/os-keypairs", {"keypair": {"name": name, "public_key": public}})
    assert r.status_code in (200, 201), r.text
    user_data = base64.b64encode(b"LOOM-E2E-USERDATA-7\nmore\n").decode()
    r = api.post(
        "/servers",
        {
            "server": {
                "name": "cd-guest",
                "imageRef": qemu_cloud.image_id,
                "flavorRef": "1",
                "networks": "none",
                "key_name": name,
                "user_data": user_data,
                "config_drive": True,
            }
        },
    )
    assert r.status_code == 202, r.text
    sid = str(r.json()["server"]["id"])
    api.wait_status(sid, "ACTIVE")
    blob = base64.b64decode(openssh.split()[1])
    want = [
        f"LOOM-CONFIG-DRIVE uuid={sid} hostname=cd-guest",
        f"LOOM-SSH-KEY sha256={hashlib.sha256(blob).hexdigest()} comment=cd-key@loom",
        "LOOM-USERDATA LOOM-E2E-USERDATA-7",
    ]
    deadline = time.monotonic() + 90
    out = ""
    while time.monotonic() < deadline and not all(w in out for w in want):
        out = api.console_output(sid)
        time.sleep(0.5)
    assert all(w in out for w in want), out[-1500:]
    assert (qemu_cloud.instances / HOST / sid / "disk.config").exists()
    assert api.http.delete(f"/compute/v2.1/servers/{sid}").status_code == 204
    api.wait_status(sid, "DELETED")
    assert not (qemu_cloud.instances / HOST / sid).exists()


def _wait_pingloop(api: Api, sid: str, want: str, after: int, within: float = 60) -> int:
    """The number of the first LOOM-PINGLOOP line past `after` that says `want`."""
    deadline = time.monotonic() + within
    out = ""
    while time.monotonic() < deadline:
        out = api.console_output(sid)
        for n, state in re.findall(r"LOOM-PINGLOOP (\d+) (up|down) ", out):
            if int(n) > after and state == want:
                return int(n)
        time.sleep(0.5)
    pytest.fail(f"the guest's ping did not go {want} within {within} s:\n{out[-1500:]}")


def test_two_guests_on_a_network_ping_while_their_security_group_lets_them_and_stop_when_not(
    qemu_cloud: QemuCloud,
) -> None:
    """The default group admits its own members; the second guest joins after the first
    was built, and a rule removed or added later reaches the first guest's host."""
    with Api(qemu_cloud) as api, Api(qemu_cloud, "admin") as admin:
        net = api.http.post("/network/v2.0/networks", json={"network": {"name": "sg-e2e"}})
        assert net.status_code == 201, net.text
        net_id = net.json()["network"]["id"]
        sub = api.http.post(
            "/network/v2.0/subnets",
            json={"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.61.0.0/24"}},
        )
        assert sub.status_code == 201, sub.text
        first, _ = api.boot("sg-first", qemu_cloud.image_id, [{"uuid": net_id}])
        api.wait_status(first, "ACTIVE")
        shown = api.get(f"/servers/{first}").json()["server"]
        first_ip = shown["addresses"]["sg-e2e"][0]["addr"]
        pinger = _guest_image(
            qemu_cloud, admin, "loom-test-guest-pingloop", f"console=ttyS0 loom_pingloop={first_ip}"
        )
        second, _ = api.boot("sg-second", pinger, [{"uuid": net_id}])
        api.wait_status(second, "ACTIVE")
        try:
            # The first guest's host heard that the second joined the default group.
            up = _wait_pingloop(api, second, "up", 0, within=120)
            groups = api.http.get("/network/v2.0/security-groups", params={"name": "default"})
            default = groups.json()["security_groups"][0]
            from_members = [
                r["id"]
                for r in default["security_group_rules"]
                if r["direction"] == "ingress"
                and r["ethertype"] == "IPv4"
                and r["remote_group_id"] == default["id"]
            ]
            assert len(from_members) == 1, default
            gone = api.http.delete(f"/network/v2.0/security-group-rules/{from_members[0]}")
            assert gone.status_code == 204, gone.text
            down = _wait_pingloop(api, second, "down", up)
            icmp = api.http.post(
                "/network/v2.0/security-group-rules",
                json={
                    "security_group_rule": {
                        "security_group_id": default["id"],
                        "direction": "ingress",
                        "ethertype": "IPv4",
                        "protocol": "icmp",
                        "remote_ip_prefix": "0.0.0.0/0",
                    }
                },
            )
            assert icmp.status_code == 201, icmp.text
            _wait_pingloop(api, second, "up", down)
        finally:
            for sid in (first, second):
                assert api.http.delete(f"/compute/v2.1/servers/{sid}").status_code == 204
            for sid in (first, second):
                api.wait_status(sid, "DELETED")
        assert api.http.delete(f"/network/v2.0/networks/{net_id}").status_code == 204


def _host_pings(ip: str) -> bool:
    """One ping from this machine (the L3 host's own namespace)."""
    done = subprocess.run(
        ["busybox", "ping", "-c", "1", "-W", "1", ip], capture_output=True, check=False
    )
    return done.returncode == 0


def _wait_host_ping(ip: str, want: bool, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _host_pings(ip) == want:
            return
        time.sleep(0.5)
    pytest.fail(f"a ping from the host to {ip} did not {'answer' if want else 'stop'}")


def _namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


def test_a_floating_ip_reaches_a_guest_from_the_host_only_while_its_group_lets_it_in(
    qemu_cloud: QemuCloud,
) -> None:
    """A router with a gateway on an external network and an interface on the tenant's
    subnet: the guest reaches the host through the router's source NAT, and the host
    reaches the guest's floating IP (DNAT) once the guest's security group admits ICMP."""
    with Api(qemu_cloud) as api, Api(qemu_cloud, "admin") as admin:
        ext = admin.http.post(
            "/network/v2.0/networks",
            json={"network": {"name": "public-e2e", "router:external": True}},
        )
        assert ext.status_code == 201, ext.text
        ext_id = ext.json()["network"]["id"]
        ext_sub = admin.http.post(
            "/network/v2.0/subnets",
            json={
                "subnet": {
                    "network_id": ext_id,
                    "ip_version": 4,
                    "cidr": "198.51.100.0/24",
                    "enable_dhcp": False,
                }
            },
        )
        assert ext_sub.status_code == 201, ext_sub.text
        net = api.http.post("/network/v2.0/networks", json={"network": {"name": "fip-e2e"}})
        assert net.status_code == 201, net.text
        net_id = net.json()["network"]["id"]
        sub = api.http.post(
            "/network/v2.0/subnets",
            json={"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.62.0.0/24"}},
        )
        assert sub.status_code == 201, sub.text
        router = api.http.post(
            "/network/v2.0/routers",
            json={"router": {"name": "r-e2e", "external_gateway_info": {"network_id": ext_id}}},
        )
        assert router.status_code == 201, router.text
        router_id = router.json()["router"]["id"]
        added = api.http.put(
            f"/network/v2.0/routers/{router_id}/add_router_interface",
            json={"subnet_id": sub.json()["subnet"]["id"]},
        )
        assert added.status_code == 200, added.text
        # The guest pings the host's address on the external network: through the router's
        # source NAT (egress is allowed, and the replies belong to its connection).
        pinger = _guest_image(
            qemu_cloud,
            admin,
            "loom-test-guest-ping-host",
            "console=ttyS0 loom_pingloop=198.51.100.1",
        )
        # A group of its own (egress only): the module's other tests change `default`.
        group = api.http.post(
            "/network/v2.0/security-groups", json={"security_group": {"name": "fip-e2e"}}
        )
        assert group.status_code == 201, group.text
        group_id = group.json()["security_group"]["id"]
        sid, _ = api.boot("fip-guest", pinger, [{"uuid": net_id}], ("fip-e2e",))
        fip_id = ""
        try:
            api.wait_status(sid, "ACTIVE")
            _wait_pingloop(api, sid, "up", 0, within=120)
            ports = api.http.get("/network/v2.0/ports", params={"device_id": sid}).json()["ports"]
            fip = api.http.post(
                "/network/v2.0/floatingips",
                json={"floatingip": {"floating_network_id": ext_id, "port_id": ports[0]["id"]}},
            )
            assert fip.status_code == 201, fip.text
            fip_id = fip.json()["floatingip"]["id"]
            address = fip.json()["floatingip"]["floating_ip_address"]
            deadline = time.monotonic() + 30
            while (
                api.http.get(f"/network/v2.0/floatingips/{fip_id}").json()["floatingip"]["status"]
                != "ACTIVE"
            ):
                assert time.monotonic() < deadline, "the floating IP never went ACTIVE"
                time.sleep(0.5)
            # Its group lets nothing in yet.
            time.sleep(3)
            assert not _host_pings(address)
            icmp = api.http.post(
                "/network/v2.0/security-group-rules",
                json={
                    "security_group_rule": {
                        "security_group_id": group_id,
                        "direction": "ingress",
                        "ethertype": "IPv4",
                        "protocol": "icmp",
                        "remote_ip_prefix": "0.0.0.0/0",
                    }
                },
            )
            assert icmp.status_code == 201, icmp.text
            _wait_host_ping(address, True)
            # Released from the port: the router stops answering for it.
            released = api.http.put(
                f"/network/v2.0/floatingips/{fip_id}", json={"floatingip": {"port_id": None}}
            )
            assert released.status_code == 200, released.text
            _wait_host_ping(address, False)
            assert (
                api.http.delete(
                    f"/network/v2.0/security-group-rules/{icmp.json()['security_group_rule']['id']}"
                ).status_code
                == 204
            )
        finally:
            assert api.http.delete(f"/compute/v2.1/servers/{sid}").status_code == 204
            api.wait_status(sid, "DELETED")
            if fip_id:
                assert api.http.delete(f"/network/v2.0/floatingips/{fip_id}").status_code == 204
        removed = api.http.put(
            f"/network/v2.0/routers/{router_id}/remove_router_interface",
            json={"subnet_id": sub.json()["subnet"]["id"]},
        )
        assert removed.status_code == 200, removed.text
        assert api.http.delete(f"/network/v2.0/routers/{router_id}").status_code == 204
        assert api.http.delete(f"/network/v2.0/networks/{net_id}").status_code == 204
        assert admin.http.delete(f"/network/v2.0/networks/{ext_id}").status_code == 204
        assert api.http.delete(f"/network/v2.0/security-groups/{group_id}").status_code == 204
        # Nothing of the router is left on the host.
        deadline = time.monotonic() + 30
        while any(n.startswith("qrouter-") for n in _namespaces()):
            assert time.monotonic() < deadline, sorted(_namespaces())
            time.sleep(0.5)
