"""clouds.yaml and openrc files for the seeded users, so the openstack CLI works at once."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import yaml

from controlplane.seedfile import Seed


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_client_config(data_path: Path, seed: Seed, public_url: str, region: str) -> Path:
    """Writes clouds.yaml (clouds `loom` for demo, `loom-admin` for admin) and an openrc
    per user into the data directory; returns the clouds.yaml path."""
    auth_url = f"{public_url.rstrip('/')}/identity/v3"
    clouds: dict[str, object] = {}
    for cloud, user_name in (("loom", "demo"), ("loom-admin", "admin")):
        user = seed.user(user_name)
        if user is None:
            continue
        clouds[cloud] = {
            "auth": {
                "auth_url": auth_url,
                "username": user.name,
                "password": user.password,
                "project_name": user.project,
                "user_domain_name": "Default",
                "project_domain_name": "Default",
            },
            "region_name": region,
            "interface": "public",
            "identity_api_version": 3,
        }
        rc = "\n".join(
            f"export {k}={shlex.quote(v)}"
            for k, v in (
                ("OS_AUTH_URL", auth_url),
                ("OS_USERNAME", user.name),
                ("OS_PASSWORD", user.password),
                ("OS_PROJECT_NAME", user.project),
                ("OS_USER_DOMAIN_NAME", "Default"),
                ("OS_PROJECT_DOMAIN_NAME", "Default"),
                ("OS_REGION_NAME", region),
                ("OS_IDENTITY_API_VERSION", "3"),
                ("OS_INTERFACE", "public"),
            )
        )
        suffix = "" if user_name == "demo" else f"-{user_name}"
        _write_private(data_path / f"openrc{suffix}", rc + "\n")
    path = data_path / "clouds.yaml"
    _write_private(path, yaml.safe_dump({"clouds": clouds}, sort_keys=False))
    return path
