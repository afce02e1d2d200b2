"""The first-start seed document: default roles, projects, users and flavors.

It lives in the data directory as YAML so an operator can edit it before the first
start. The conductor reads it to seed the catalog; the gateway reads it to write
``clouds.yaml`` and ``openrc`` for the seeded users. Both may start first, so the file
is created exclusively: whichever process writes it first wins and the other reads it.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SEED_FILE = "seed.yaml"
# The user Loom's own services (the agent's image downloads) authenticate as.
SERVICE_USER = "loom-service"
SERVICE_PROJECT = "service"


@dataclass(frozen=True)
class SeedUser:
    name: str
    password: str
    project: str
    role: str


@dataclass(frozen=True)
class SeedFlavor:
    id: str
    name: str
    vcpus: int
    ram: int
    disk: int


@dataclass(frozen=True)
class Seed:
    roles: tuple[str, ...]
    projects: tuple[str, ...]
    users: tuple[SeedUser, ...]
    flavors: tuple[SeedFlavor, ...] = field(default=())

    def user(self, name: str) -> SeedUser | None:
        return next((u for u in self.users if u.name == name), None)


# Nova's historical default flavors (id, name, vCPUs, RAM MiB, root disk GiB).
_DEFAULT_FLAVORS = (
    ("1", "m1.tiny", 1, 512, 1),
    ("2", "m1.small", 1, 2048, 20),
    ("3", "m1.medium", 2, 4096, 40),
    ("4", "m1.large", 4, 8192, 80),
    ("5", "m1.xlarge", 8, 16384, 160),
)


def default_document() -> dict[str, Any]:
    """A fresh seed document; passwords are random so no two installations share one."""
    return {
        "roles": ["admin", "member", "reader"],
        "projects": ["admin", "demo", SERVICE_PROJECT],
        "users": [
            {
                "name": "admin",
                "password": secrets.token_urlsafe(18),
                "project": "admin",
                "role": "admin",
            },
            {
                "name": "demo",
                "password": secrets.token_urlsafe(18),
                "project": "demo",
                "role": "member",
            },
            {
                "name": SERVICE_USER,
                "password": secrets.token_urlsafe(24),
                "project": SERVICE_PROJECT,
                "role": "admin",
            },
        ],
        "flavors": [
            {"id": i, "name": n, "vcpus": c, "ram": r, "disk": d}
            for i, n, c, r, d in _DEFAULT_FLAVORS
        ],
    }


def parse(doc: dict[str, Any]) -> Seed:
    """Turns the YAML document into a Seed; a malformed document raises ValueError."""
    try:
        return Seed(
            roles=tuple(str(r) for r in doc.get("roles", [])),
            projects=tuple(str(p) for p in doc.get("projects", [])),
            users=tuple(
                SeedUser(
                    name=str(u["name"]),
                    password=str(u["password"]),
                    project=str(u["project"]),
                    role=str(u["role"]),
                )
                for u in doc.get("users", [])
            ),
            flavors=tuple(
                SeedFlavor(
                    id=str(f["id"]),
                    name=str(f["name"]),
                    vcpus=int(f["vcpus"]),
                    ram=int(f["ram"]),
                    disk=int(f["disk"]),
                )
                for f in doc.get("flavors", [])
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed seed document: {exc!r}") from exc


def load_or_create(data_path: Path) -> Seed:
    """Reads the seed file, writing the default one first when it is missing."""
    data_path.mkdir(parents=True, exist_ok=True)
    path = data_path / SEED_FILE
    if not path.exists():
        text = (
            "# Loom's first-start catalog. Edit before the first start; later edits only\n"
            "# add what is missing (nothing is ever removed or overwritten).\n"
            + yaml.safe_dump(default_document(), sort_keys=False)
        )
        tmp = path.with_name(f".{SEED_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        # link() is atomic and refuses to overwrite: when two processes race, exactly one
        # document wins and both read that one, never a half-written file.
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping")
    return parse(loaded)
