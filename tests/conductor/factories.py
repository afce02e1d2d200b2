"""Rows inserted directly, so each test states only what matters to it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import Flavor, Image, Instance, Keypair, Service

PROJECT = "project-a"
USER = "user-a"


async def add(sessions: async_sessionmaker[AsyncSession], *rows: Any) -> None:
    async with sessions() as session, session.begin():
        session.add_all(rows)


def make_flavor(flavorid: str = "1", **over: Any) -> Flavor:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "flavorid": flavorid,
        "name": f"m1.{flavorid}",
        "vcpus": 1,
        "memory_mb": 512,
        "root_gb": 1,
        "ephemeral_gb": 0,
        "swap_mb": 0,
        "rxtx_factor": 1.0,
        "is_public": True,
        "disabled": False,
        "extra_specs": {},
        "created_at": now,
    }
    values.update(over)
    return Flavor(**values)


def make_image(image_id: str | None = None, **over: Any) -> Image:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "id": image_id or str(uuid.uuid4()),
        "name": "cirros",
        "status": "active",
        "disk_format": "qcow2",
        "container_format": "bare",
        "size": 1024,
        "os_hash_algo": "sha512",
        "os_hash_value": "ab" * 64,
        "min_disk": 0,
        "min_ram": 0,
        "visibility": "public",
        "protected": False,
        "owner": PROJECT,
        "properties": {"hw_disk_bus": "virtio"},
        "tags": [],
        "deleted": False,
        "created_at": now,
    }
    values.update(over)
    return Image(**values)


def make_keypair(name: str = "key", user_id: str = USER) -> Keypair:
    return Keypair(
        user_id=user_id,
        project_id=PROJECT,
        name=name,
        fingerprint="00:11",
        public_key="ssh-ed25519 AAAA test",
        type="ssh",
        created_at=datetime.now(UTC),
    )


def make_instance(**over: Any) -> Instance:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "name": "vm",
        "project_id": PROJECT,
        "user_id": USER,
        "vm_state": "active",
        "task_state": None,
        "power_state": 1,
        "flavor_id": "1",
        "flavor_name": "m1.1",
        "vcpus": 1,
        "memory_mb": 512,
        "root_gb": 1,
        "ephemeral_gb": 0,
        "swap_mb": 0,
        "flavor_extra_specs": {},
        "image_id": str(uuid.uuid4()),
        "kernel_id": "",
        "ramdisk_id": "",
        "host": "host-1",
        "node": "host-1",
        "metadata_": {},
        "reservation_id": "r-test0000",
        "launch_index": 0,
        "hostname": "vm",
        "tags": [],
        "addresses": [],
        "attempts": 1,
        "failed_hosts": [],
        "alternates": [],
        "create_request_id": "",
        "created_at": now,
        "updated_at": now,
        "deleted": False,
        "locked": False,
        "access_ipv4": "",
        "access_ipv6": "",
        "config_drive": "",
    }
    values.update(over)
    return Instance(**values)


def make_service(host: str, binary: str = "loom-compute", **over: Any) -> Service:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "host": host,
        "binary": binary,
        "zone": "nova",
        "disabled": False,
        "forced_down": False,
        "last_seen_up": now,
        "report_count": 1,
        "version": "",
        "compute_endpoint": "",
        "created_at": now,
    }
    values.update(over)
    return Service(**values)
