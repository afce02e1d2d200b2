"""Consoles through the REST API on a fleet of test:/// hosts, which offer no consoles:
every refusal is a clean Nova error, never a 500; tokens and the proxy refuse what they
should. (Real consoles: test_real_guest_consoles.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from controlplane.seedfile import load_or_create
from controlplane.servicetoken import password_auth
from tests.support import polling
from tests.support.stack import Stack


def _token(cloud: Stack, user: str, password: str | None = None, project: str | None = None) -> str:
    seeded = load_or_create(cloud.data_dir).user(user)
    body = password_auth(
        user,
        password or (seeded.password if seeded else ""),
        project or (seeded.project if seeded else ""),
    )
    r = httpx.post(f"{cloud.gateway_url}/identity/v3/auth/tokens", json=body, timeout=10)
    assert r.status_code == 201, r.text
    return r.headers["x-subject-token"]


def _client(cloud: Stack, user: str, version: str = "2.96") -> httpx.Client:
    return httpx.Client(
        base_url=f"{cloud.gateway_url}/compute/v2.1",
        headers={
            "X-Auth-Token": _token(cloud, user),
            "OpenStack-API-Version": f"compute {version}",
        },
        timeout=30,
    )


def _boot(cloud: Stack, demo: httpx.Client) -> str:
    with httpx.Client(
        base_url=f"{cloud.gateway_url}/image/v2",
        headers={"X-Auth-Token": _token(cloud, "admin")},
        timeout=30,
    ) as images:
        r = images.post(
            "/images",
            json={
                "name": "tiny",
                "disk_format": "raw",
                "container_format": "bare",
                "visibility": "public",
            },
        )
        assert r.status_code == 201, r.text
        image_id = r.json()["id"]
        up = images.put(
            f"/images/{image_id}/file",
            content=b"\0" * 4096,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert up.status_code == 204, up.text
    r = demo.post(
        "/servers",
        json={"server": {"name": "c", "imageRef": image_id, "flavorRef": "1", "networks": "none"}},
    )
    assert r.status_code == 202, r.text
    sid = str(r.json()["server"]["id"])

    def active() -> bool:
        status = demo.get(f"/servers/{sid}").json()["server"]["status"]
        assert status != "ERROR"
        return status == "ACTIVE"

    polling.wait_until(active, polling.boot_s(), f"server {sid} ACTIVE", every=0.2)
    return sid


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    (body,) = r.json().values()
    assert body["code"] == status
    return dict(body)


def _ws_status(url: str) -> int:
    async def attempt() -> int:
        try:
            async with connect(url, open_timeout=10):
                return 101
        except InvalidStatus as exc:
            return int(exc.response.status_code)

    return asyncio.run(attempt())


def test_consoles_on_hosts_without_them_are_clean_nova_errors(cloud: Stack) -> None:
    with _client(cloud, "demo") as demo, _client(cloud, "admin") as admin:
        sid = _boot(cloud, demo)
        r = demo.post(f"/servers/{sid}/action", json={"os-getConsoleOutput": {"length": 5}})
        assert _error(r, 404)["message"] == "Guest does not have a console available."
        # More lines than the contract's int32 can say is "everything", not a 500.
        r = demo.post(
            f"/servers/{sid}/action", json={"os-getConsoleOutput": {"length": "99999999999"}}
        )
        _error(r, 404)
        r = demo.post(
            f"/servers/{sid}/remote-consoles",
            json={"remote_console": {"protocol": "vnc", "type": "novnc"}},
        )
        assert _error(r, 400)["message"] == "Unavailable console type vnc."
        r = demo.post(
            f"/servers/{sid}/action",
            json={"os-getVNCConsole": {"type": "novnc"}},
            headers={"OpenStack-API-Version": "compute 2.1"},
        )
        assert _error(r, 400)["message"].startswith("Unavailable console type")
        # An admin reaches any project's server, and meets the same clean refusal.
        r = admin.post(f"/servers/{sid}/action", json={"os-getConsoleOutput": None})
        assert r.status_code == 400  # Nova's schema wants an object here

        r = admin.get("/os-console-auth-tokens/no-such-token")
        assert _error(r, 404)["message"] == "The token is invalid or has expired."
        r = admin.get(
            "/os-console-auth-tokens/no-such-token",
            headers={"OpenStack-API-Version": "compute 2.30"},
        )
        _error(r, 404)

        missing = "00000000-0000-0000-0000-000000000001"
        r = demo.post(f"/servers/{missing}/action", json={"os-getConsoleOutput": {}})
        _error(r, 404)
        assert demo.delete(f"/servers/{sid}").status_code == 204

    ws = cloud.gateway_url.replace("http://", "ws://") + "/vnc/websockify"
    assert _ws_status(f"{ws}?token=forged") == 404
    assert _ws_status(ws) == 401


def test_a_member_of_another_project_gets_no_console_of_this_one(cloud: Stack) -> None:
    with _client(cloud, "demo") as demo, _client(cloud, "admin") as admin:
        sid = _boot(cloud, demo)
        # admin's own token is scoped to the admin project; a member there is a stranger.
        project = admin.get(
            f"{cloud.gateway_url}/identity/v3/projects", params={"name": "admin"}
        ).json()["projects"][0]["id"]
        users = httpx.Client(
            base_url=f"{cloud.gateway_url}/identity/v3",
            headers={"X-Auth-Token": _token(cloud, "admin")},
            timeout=10,
        )
        with users:
            uid = users.post(
                "/users",
                json={
                    "user": {"name": "otto", "password": "pw-otto", "default_project_id": project}
                },
            ).json()["user"]["id"]
            rid = users.get("/roles", params={"name": "member"}).json()["roles"][0]["id"]
            assert users.put(f"/projects/{project}/users/{uid}/roles/{rid}").status_code == 204
        stranger = httpx.Client(
            base_url=f"{cloud.gateway_url}/compute/v2.1",
            headers={
                "X-Auth-Token": _token(cloud, "otto", "pw-otto", "admin"),
                "OpenStack-API-Version": "compute 2.6",
            },
            timeout=10,
        )
        with stranger:
            r = stranger.post(f"/servers/{sid}/action", json={"os-getConsoleOutput": {}})
            _error(r, 404)
            r = stranger.post(
                f"/servers/{sid}/remote-consoles",
                json={"remote_console": {"protocol": "vnc", "type": "novnc"}},
            )
            _error(r, 404)
            r = stranger.get(
                "/os-console-auth-tokens/x", headers={"OpenStack-API-Version": "compute 2.31"}
            )
            _error(r, 403)
