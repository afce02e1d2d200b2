"""Console endpoints' shapes, microversions, bad bodies and policy, on the in-process
gateway (every case here is decided before the conductor is asked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from controlplane.config import load_config
from gateway.app import build_app
from gateway.compute.consoles import console_url
from gateway.consoles.novnc import MISSING, resolve
from gateway.consoles.proxy import origin_allowed, origin_of
from gateway.service import make_gateway
from tests.gateway.conftest import Cloud

SID = "6f1b5c8e-1d7e-4a57-9d3a-2b8c1f0e9a11"
ACTION = f"/compute/v2.1/servers/{SID}/action"
REMOTE = f"/compute/v2.1/servers/{SID}/remote-consoles"


def _nova_error(r: httpx.Response, status: int, name: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()[name]
    assert body["code"] == status
    return body


async def test_remote_consoles_do_not_exist_before_2_6(cloud: Cloud) -> None:
    body = {"remote_console": {"protocol": "vnc", "type": "novnc"}}
    r = await cloud.client.post(REMOTE, json=body, headers=await cloud.headers(version="2.5"))
    _nova_error(r, 404, "itemNotFound")


@pytest.mark.parametrize(
    ("version", "console", "says"),
    [
        ("2.6", {"protocol": "vnc"}, "'type' is a required property"),
        ("2.6", {"type": "novnc"}, "'protocol' is a required property"),
        ("2.6", {"protocol": "telnet", "type": "novnc"}, "is not one of"),
        ("2.6", {"protocol": "mks", "type": "webmks"}, "is not one of"),
        ("2.6", {"protocol": "vnc", "type": "novnc", "x": 1}, "Additional properties"),
        ("2.6", {"protocol": "spice", "type": "spice-html5"}, "Unavailable console type"),
        ("2.8", {"protocol": "mks", "type": "webmks"}, "Unavailable console type"),
        ("2.6", {"protocol": "vnc", "type": "xvpvnc"}, "Unavailable console type"),
    ],
)
async def test_remote_console_bodies_nova_refuses_are_400(
    cloud: Cloud, version: str, console: dict[str, Any], says: str
) -> None:
    r = await cloud.client.post(
        REMOTE, json={"remote_console": console}, headers=await cloud.headers(version=version)
    )
    assert says in _nova_error(r, 400, "badRequest")["message"]


@pytest.mark.parametrize(
    "args",
    [
        {"length": "abc"},
        {"length": -2},
        {"length": "-2"},
        {"length": 1.5},
        {"length": True},
        {"lines": 3},
        None,
        "10",
    ],
)
async def test_console_output_arguments_nova_refuses_are_400(cloud: Cloud, args: Any) -> None:
    r = await cloud.client.post(
        ACTION, json={"os-getConsoleOutput": args}, headers=await cloud.headers()
    )
    _nova_error(r, 400, "badRequest")


async def test_the_legacy_vnc_action_is_gone_from_2_6_and_checks_its_type_before(
    cloud: Cloud,
) -> None:
    r = await cloud.client.post(
        ACTION,
        json={"os-getVNCConsole": {"type": "novnc"}},
        headers=await cloud.headers(version="2.6"),
    )
    _nova_error(r, 404, "itemNotFound")
    for args, says in (
        ({"type": "spice-html5"}, "is not one of"),
        ({}, "'type' is a required property"),
        ({"type": "xvpvnc"}, "Unavailable console type xvpvnc"),
    ):
        r = await cloud.client.post(
            ACTION, json={"os-getVNCConsole": args}, headers=await cloud.headers(version="2.5")
        )
        assert says in _nova_error(r, 400, "badRequest")["message"]


async def test_a_reader_gets_no_console_of_any_kind(cloud: Cloud) -> None:
    await cloud.make_user("rita", "reader", "demo")
    h = {
        "X-Auth-Token": await cloud.token("rita", project="demo", password="pw-rita"),
        "OpenStack-API-Version": "compute 2.6",
    }
    for path, body in (
        (ACTION, {"os-getConsoleOutput": {}}),
        (REMOTE, {"remote_console": {"protocol": "vnc", "type": "novnc"}}),
    ):
        r = await cloud.client.post(path, json=body, headers=h)
        assert "Policy doesn't allow" in _nova_error(r, 403, "forbidden")["message"]


async def test_a_reader_is_refused_a_remote_console_before_its_body_is_read(
    cloud: Cloud,
) -> None:
    await cloud.make_user("rita", "reader", "demo")
    h = {
        "X-Auth-Token": await cloud.token("rita", project="demo", password="pw-rita"),
        "OpenStack-API-Version": "compute 2.6",
    }
    r = await cloud.client.post(REMOTE, json={}, headers=h)
    assert "Policy doesn't allow" in _nova_error(r, 403, "forbidden")["message"]


async def test_console_tokens_are_shown_to_admins_only(cloud: Cloud) -> None:
    r = await cloud.client.get(
        "/compute/v2.1/os-console-auth-tokens/abc", headers=await cloud.headers(version="2.31")
    )
    assert "os-console-auth-tokens" in _nova_error(r, 403, "forbidden")["message"]
    r = await cloud.client.get("/compute/v2.1/os-console-auth-tokens/abc")
    assert r.status_code == 401


NOVNC_INSTALLED = Path("/usr/share/novnc/vnc_lite.html").exists()


async def test_the_novnc_page_is_served_from_the_installed_client(cloud: Cloud) -> None:
    if not NOVNC_INSTALLED:
        pytest.skip("apt-get install novnc")
    r = await cloud.client.get("/vnc/vnc_lite.html")
    assert r.status_code == 200
    assert "noVNC" in r.text
    assert (await cloud.client.get("/vnc/core/rfb.js")).status_code == 200
    assert (await cloud.client.get("/vnc/no-such-file.js")).status_code == 404


async def test_without_novnc_the_page_says_to_install_it(tmp_path: Path, pg_url: str) -> None:
    cfg = load_config(
        environ={},
        overrides={
            "data_dir": str(tmp_path / "d"),
            "gateway": {"novnc_dir": str(tmp_path / "none")},
        },
    )
    gateway = make_gateway(cfg)
    transport = httpx.ASGITransport(app=build_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://loom.test") as client:
        r = await client.get("/vnc/vnc_lite.html")
    await gateway.conductor.close()
    assert r.status_code == 404
    assert r.text == MISSING
    assert "apt-get install novnc" in r.text


def test_a_novnc_path_outside_the_client_folder_is_never_served(tmp_path: Path) -> None:
    (tmp_path / "client").mkdir()
    (tmp_path / "client" / "vnc_lite.html").write_text("page")
    (tmp_path / "secret").write_text("no")
    assert (
        resolve(tmp_path / "client", "vnc_lite.html")
        == (tmp_path / "client" / "vnc_lite.html").resolve()
    )
    assert resolve(tmp_path / "client", "../secret") is None
    assert resolve(tmp_path / "client", "/etc/passwd") is None
    assert resolve(tmp_path / "client", ".") is None


class _Req:
    """Just enough of a Request for console_url: the app's gateway config and base URL."""

    def __init__(self, public_url: str) -> None:
        cfg = load_config(environ={}, overrides={"gateway": {"public_url": public_url}})

        class _State:
            gateway = type("G", (), {"cfg": cfg.gateway})()

        self.app = type("A", (), {"state": _State()})()
        self.base_url = "http://ignored/"


@pytest.mark.parametrize(
    ("public_url", "ws_path"),
    [
        ("http://loom.example:8774", "vnc/websockify?token=T-1_x"),
        ("https://cloud.example/loom/", "loom/vnc/websockify?token=T-1_x"),
    ],
)
def test_the_console_url_is_the_novnc_page_told_where_the_proxy_is(
    public_url: str, ws_path: str
) -> None:
    url = console_url(_Req(public_url), "T-1_x")  # type: ignore[arg-type]
    parts = urlsplit(url)
    assert url.startswith(public_url.rstrip("/") + "/vnc/vnc_lite.html?path=")
    assert parse_qs(parts.query)["path"] == [ws_path]


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        (None, (), True),
        ("http://loom.example:8774", (), True),
        ("HTTP://Loom.Example:8774", (), True),
        ("http://loom.example", (), False),
        ("https://loom.example:8774", (), False),
        ("http://evil.example:8774", (), False),
        ("https://console.example", ("https://console.example:443",), True),
        ("null", (), False),
    ],
)
def test_the_proxy_accepts_only_its_own_or_allowed_origins(
    origin: str | None, allowed: tuple[str, ...], ok: bool
) -> None:
    assert origin_allowed(origin, "http://loom.example:8774/", allowed) is ok


def test_an_origin_is_compared_without_default_ports() -> None:
    assert origin_of("https://a.example:443/x") == "https://a.example"
    assert origin_of("http://a.example:8080") == "http://a.example:8080"
