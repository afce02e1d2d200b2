"""Identity tokens: self-contained, HMAC-SHA256 signed, expiring.

A token is `<base64url(json claims)>.<base64url(hmac)>`. Any gateway replica holding
the same secret validates it without a lookup, which keeps the gateway stateless.
Revocation is by expiry only (token_ttl_s); roles are those held when it was issued.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

SECRET_FILE = "token-secret"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class TokenClaims:
    user_id: str
    user_name: str
    project_id: str
    project_name: str
    # (id, name) pairs, including the roles implied by those held.
    roles: tuple[tuple[str, str], ...]
    issued_at: str
    expires_at: str
    audit_id: str
    methods: tuple[str, ...] = ("password",)

    @cached_property
    def role_names(self) -> frozenset[str]:
        return frozenset(name for _, name in self.roles)

    @property
    def expires(self) -> datetime:
        return datetime.fromisoformat(self.expires_at.replace("Z", "+00:00"))


class InvalidToken(Exception):
    """The token is malformed, forged or expired."""


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


class TokenSigner:
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        if len(secret) < 16:
            raise ValueError("token secret must be at least 16 bytes")
        self._secret = secret
        self._ttl = timedelta(seconds=ttl_s)

    def issue(
        self,
        *,
        user_id: str,
        user_name: str,
        project_id: str,
        project_name: str,
        roles: tuple[tuple[str, str], ...],
        methods: tuple[str, ...] = ("password",),
        now: datetime | None = None,
    ) -> tuple[str, TokenClaims]:
        issued = now or datetime.now(UTC)
        claims = TokenClaims(
            user_id=user_id,
            user_name=user_name,
            project_id=project_id,
            project_name=project_name,
            roles=roles,
            issued_at=_iso(issued),
            expires_at=_iso(issued + self._ttl),
            audit_id=_b64(secrets.token_bytes(16)),
            methods=methods,
        )
        payload = _b64(json.dumps(asdict(claims), separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}", claims

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def verify(self, token: str, now: datetime | None = None) -> TokenClaims:
        payload, _, signature = token.strip().partition(".")
        if not payload or not signature or not hmac.compare_digest(signature, self._sign(payload)):
            raise InvalidToken("The request you have made requires authentication.")
        try:
            raw = json.loads(_unb64(payload))
            claims = TokenClaims(
                **{
                    **raw,
                    "roles": tuple(tuple(r) for r in raw["roles"]),
                    "methods": tuple(raw["methods"]),
                }
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidToken("The token is malformed.") from exc
        if claims.expires <= (now or datetime.now(UTC)):
            raise InvalidToken("The token has expired.")
        return claims


def load_secret(configured: str, data_path: Path) -> bytes:
    """The configured secret, or one generated once into the data directory."""
    if configured:
        return configured.encode()
    data_path.mkdir(parents=True, exist_ok=True)
    path = data_path / SECRET_FILE
    if not path.exists():
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
        # link() never overwrites: with several gateways racing, all end up with one secret.
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip().encode()
