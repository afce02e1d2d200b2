"""A service token for Loom's own services, kept fresh in a file.

`loom up` authenticates as the seeded service user (`loom-service`, admin in the `service`
project; older seed files without it fall back to `admin`) against the gateway's
Identity v3 API and writes the token to a 0600 file the agent reads on every image
download (`agent.image_token_file`). It rewrites the file when half the token's life has
passed, so the agent never presents an expired token. The token never reaches a log.
"""

from __future__ import annotations

import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from controlplane.seedfile import SERVICE_USER, Seed


def password_auth(user: str, password: str, project: str) -> dict[str, object]:
    """An Identity v3 password authentication scoped to a project, all in the default
    domain: the body of POST /v3/auth/tokens."""
    return {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": user, "domain": {"id": "default"}, "password": password}
                },
            },
            "scope": {"project": {"name": project, "domain": {"id": "default"}}},
        }
    }


class ServiceTokenError(RuntimeError):
    """No token could be had; the message names the user and the HTTP status, never secrets."""


def write_secret_file(path: Path, text: str) -> None:
    """Atomically replaces path with text, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class ServiceToken:
    def __init__(self, identity_url: str, seed: Seed, path: Path) -> None:
        user = seed.user(SERVICE_USER) or seed.user("admin")
        if user is None:
            raise ServiceTokenError("the seed file holds neither loom-service nor admin")
        self._user = user
        self._url = identity_url.rstrip("/") + "/v3/auth/tokens"
        self.path = path
        self.refresh_at = 0.0

    def _issue(self) -> tuple[str, float]:
        body = password_auth(self._user.name, self._user.password, self._user.project)
        try:
            resp = httpx.post(self._url, json=body, timeout=10.0)
        except httpx.HTTPError as exc:
            raise ServiceTokenError(f"identity service unreachable: {type(exc).__name__}") from exc
        if resp.status_code != 201:
            raise ServiceTokenError(
                f"identity service refused {self._user.name}: HTTP {resp.status_code}"
            )
        expires = datetime.fromisoformat(resp.json()["token"]["expires_at"].replace("Z", "+00:00"))
        lifetime = (expires - datetime.now(UTC)).total_seconds()
        return resp.headers["x-subject-token"], max(lifetime, 0.0)

    def refresh(self) -> None:
        """Writes a fresh token; the next refresh falls due at half its lifetime."""
        token, lifetime = self._issue()
        write_secret_file(self.path, token + "\n")
        self.refresh_at = time.monotonic() + max(lifetime / 2, 30.0)

    def refresh_if_due(self) -> bool:
        if time.monotonic() < self.refresh_at:
            return False
        self.refresh()
        return True

    def token(self) -> str:
        return self.path.read_text().strip()
