"""Unmodified OpenStack clients (the openstack CLI, novaclient) against a live gateway
on a free port, using the clouds.yaml the gateway writes at start."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.config import load_config
from controlplane.runtime.natsserver import free_port
from controlplane.seedfile import Seed, load_or_create
from gateway import service
from tests.support import polling
from tests.support.catalog import running_catalog

OPENSTACK = str(Path(sys.executable).parent / "openstack")


@dataclass
class LiveCloud:
    url: str
    data: Path
    seed: Seed

    async def cli(self, *args: str, cloud: str = "loom", ok: bool = True) -> str:
        env = {
            **os.environ,
            "OS_CLIENT_CONFIG_FILE": str(self.data / "clouds.yaml"),
            "HOME": str(self.data),
        }
        proc = await asyncio.create_subprocess_exec(
            OPENSTACK,
            "--os-cloud",
            cloud,
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if ok:
            assert proc.returncode == 0, f"openstack {' '.join(args)}: {err.decode()}"
        return out.decode()

    async def cli_json(self, *args: str, cloud: str = "loom") -> object:
        return json.loads(await self.cli(*args, "-f", "json", cloud=cloud))


@pytest.fixture
async def live(pg_url: str, tmp_path: Path) -> AsyncIterator[LiveCloud]:
    data = tmp_path / "data"
    async with running_catalog(pg_url, data) as cat:
        port = free_port()
        cfg = load_config(
            environ={},
            overrides={
                "data_dir": str(data),
                "conductor": {"listen": cat.target},
                "gateway": {"port": port},
            },
        )
        stop = asyncio.Event()
        task = asyncio.create_task(service.serve(cfg, stop))

        async def serving() -> bool:
            if not (data / "clouds.yaml").exists():
                return False
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            return False

        await polling.eventually(serving, polling.SERVICE_READY_S, "the gateway serving")
        try:
            yield LiveCloud(url=f"http://127.0.0.1:{port}", data=data, seed=load_or_create(data))
        finally:
            stop.set()
            await task


async def test_openstack_cli_issues_a_token_and_lists_flavors(live: LiveCloud) -> None:
    token = await live.cli_json("token", "issue")
    assert isinstance(token, dict)
    assert token["id"]
    assert token["project_id"]
    assert token["user_id"]
    flavors = await live.cli_json("flavor", "list")
    assert isinstance(flavors, list)
    assert {f["Name"] for f in flavors} >= {"m1.tiny", "m1.small", "m1.xlarge"}
    tiny = next(f for f in flavors if f["Name"] == "m1.tiny")
    assert (tiny["RAM"], tiny["VCPUs"], tiny["Disk"]) == (512, 1, 1)


async def test_openstack_cli_creates_and_lists_a_keypair(live: LiveCloud) -> None:
    # With compute 2.92+ the CLI generates the pair itself and prints the private key.
    generated = await live.cli("keypair", "create", "k1")
    assert "PRIVATE KEY" in generated
    pub = live.data / "k2.pub"
    pub.write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBZ2kFHqVtD6Bw4qK1hJ5QEFgXDvRmiXoHTZ5bRJ0q4S k2\n"
    )
    imported = await live.cli_json("keypair", "create", "--public-key", str(pub), "k2")
    assert isinstance(imported, dict)
    assert imported["name"] == "k2"
    listed = await live.cli_json("keypair", "list")
    assert isinstance(listed, list)
    assert [k["Name"] for k in listed] == ["k1", "k2"]
    assert listed[0]["Fingerprint"].count(":") == 15


async def test_openstack_cli_manages_projects_users_and_roles(live: LiveCloud) -> None:
    admin = "loom-admin"
    project = await live.cli_json("project", "create", "team-a", cloud=admin)
    assert isinstance(project, dict)
    assert project["name"] == "team-a"
    user = await live.cli_json(
        "user", "create", "--project", "team-a", "--password", "s3cret-pw", "alice", cloud=admin
    )
    assert isinstance(user, dict)
    assert user["name"] == "alice"
    await live.cli("role", "add", "--user", "alice", "--project", "team-a", "member", cloud=admin)
    assignments = await live.cli_json(
        "role",
        "assignment",
        "list",
        "--user",
        "alice",
        "--project",
        "team-a",
        "--names",
        cloud=admin,
    )
    assert isinstance(assignments, list)
    assert [a["Role"] for a in assignments] == ["member"]
    projects = await live.cli_json("project", "list", cloud=admin)
    assert isinstance(projects, list)
    assert {"admin", "demo", "team-a"} <= {p["Name"] for p in projects}


async def test_openstack_cli_uploads_lists_and_downloads_an_image(live: LiveCloud) -> None:
    payload = live.data / "disk.img"
    payload.write_bytes(b"loom-image-bytes" * 4096)
    image = await live.cli_json(
        "image",
        "create",
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "--file",
        str(payload),
        "cirros",
    )
    assert isinstance(image, dict)
    assert image["status"] == "active"
    listed = await live.cli_json("image", "list")
    assert isinstance(listed, list)
    assert [i["Name"] for i in listed] == ["cirros"]
    out = live.data / "back.img"
    await live.cli("image", "save", "--file", str(out), "cirros")
    assert out.read_bytes() == payload.read_bytes()


async def test_novaclient_at_2_96_lists_flavors_and_manages_keypairs(live: LiveCloud) -> None:
    from keystoneauth1 import session
    from keystoneauth1.identity import v3
    from novaclient import client as nova

    demo = live.seed.user("demo")
    assert demo is not None

    def run() -> tuple[list[str], str, list[str]]:
        auth = v3.Password(
            auth_url=f"{live.url}/identity/v3",
            username="demo",
            password=demo.password,
            project_name="demo",
            user_domain_id="default",
            project_domain_id="default",
        )
        nc = nova.Client("2.96", session=session.Session(auth=auth))
        flavors = [f.name for f in nc.flavors.list()]
        pub = (
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBZ2kFHqVtD6Bw4qK1hJ5QEFgXDvRmiXoHTZ5bRJ0q4S"
            " nova@test"
        )
        kp = nc.keypairs.create("nk", public_key=pub)
        names = [k.name for k in nc.keypairs.list()]
        nc.keypairs.delete("nk")
        return flavors, kp.fingerprint, names

    flavors, fingerprint, names = await asyncio.to_thread(run)
    assert "m1.small" in flavors
    assert fingerprint.count(":") == 15
    assert names == ["nk"]


async def test_openstack_cli_shows_the_catalog_and_manages_server_groups(live: LiveCloud) -> None:
    endpoints = await live.cli_json("endpoint", "list", cloud="loom-admin")
    assert isinstance(endpoints, list)
    assert {e["Service Type"] for e in endpoints} == {
        "identity",
        "compute",
        "image",
        "placement",
        "network",
    }
    group = await live.cli_json("server", "group", "create", "--policy", "anti-affinity", "g1")
    assert isinstance(group, dict)
    assert group["policy"] == "anti-affinity"
    groups = await live.cli_json("server", "group", "list")
    assert isinstance(groups, list)
    assert [g["Name"] for g in groups] == ["g1"]
    await live.cli("server", "group", "delete", "g1")
    assert await live.cli_json("server", "group", "list") == []
