"""Identity tokens: Fernet tokens, as Keystone makes them, expiring.

A token is a Fernet token (AES-128-CBC encrypted, HMAC-SHA256 signed, timestamped) whose
plaintext is a compact payload: user id, project id (empty when unscoped), the role names
held on that project (with the roles they imply), the authentication methods, the lifetime
and an audit id. Any gateway holding the keys (gateway/auth/keys.py) validates it without a
lookup, which keeps the gateway stateless. Names shown in a token body (user, project,
role ids) are not in the token: they are looked up when a token is validated, as Keystone
does. Revocation is by expiry only (token_ttl_s); roles are those held when it was issued;
the audit id is there for a revocation list to name a token by.

Payload, version 1 (integers big-endian):

    B    version (1)
    B    methods, a bit set (1: password, 2: token)
    I    lifetime in seconds: expires_at = the Fernet timestamp (issued_at) + lifetime
    16s  audit id (random)
    str  user id
    str  project id ("" when unscoped)
    B    role count, then that many str role names

    str: one byte, then
         0x00-0xFD  that many bytes of UTF-8
         0xFE       a 2-byte length, then that many bytes of UTF-8
         0xFF       16 bytes: a UUID whose 32-digit lowercase hex form is the string

A struct, not JSON: Loom's ids are 32 hex digits, and packing them as 16 bytes keeps a
project-scoped admin token at 184 characters, where compact JSON (msgpack is not a Loom
dependency) came to about 270, past the 255 that clients and Keystone's tokens keep under.
"""

from __future__ import annotations

import base64
import secrets
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Protocol

from cryptography.fernet import InvalidToken as FernetInvalidToken
from cryptography.fernet import MultiFernet
from loom.identity.v1 import identity_pb2

from gateway.auth.keys import TokenKeys

VERSION = 1
METHODS = ("password", "token")
_HEAD = struct.Struct(">BBI16s")
_LEN16 = struct.Struct(">H")
_LONG, _UUID = 0xFE, 0xFF


@dataclass(frozen=True)
class TokenClaims:
    user_id: str
    project_id: str
    # Role names, including the roles implied by those held.
    roles: tuple[str, ...]
    issued: datetime
    expires: datetime
    audit_id: str
    methods: tuple[str, ...] = ("password",)

    @cached_property
    def role_names(self) -> frozenset[str]:
        return frozenset(self.roles)

    @property
    def issued_at(self) -> str:
        return _iso(self.issued)

    @property
    def expires_at(self) -> str:
        return _iso(self.expires)


class InvalidToken(Exception):
    """The token is malformed, forged or expired."""


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def _pack_str(text: str) -> bytes:
    if len(text) == 32:
        try:
            as_uuid = uuid.UUID(hex=text)
        except ValueError:
            pass
        else:
            if as_uuid.hex == text:
                return bytes([_UUID]) + as_uuid.bytes
    raw = text.encode()
    if len(raw) < _LONG:
        return bytes([len(raw)]) + raw
    return bytes([_LONG]) + _LEN16.pack(len(raw)) + raw


def _unpack_str(data: bytes, pos: int) -> tuple[str, int]:
    tag = data[pos]
    pos += 1
    if tag == _UUID:
        end = pos + 16
        if end > len(data):
            raise ValueError("truncated id")
        return uuid.UUID(bytes=data[pos:end]).hex, end
    if tag == _LONG:
        (length,) = _LEN16.unpack_from(data, pos)
        pos += _LEN16.size
    else:
        length = tag
    end = pos + length
    if end > len(data):
        raise ValueError("truncated string")
    return data[pos:end].decode(), end


def pack_payload(claims: TokenClaims) -> bytes:
    methods = sum(1 << i for i, m in enumerate(METHODS) if m in claims.methods)
    lifetime = int((claims.expires - claims.issued).total_seconds())
    audit = base64.urlsafe_b64decode(claims.audit_id + "==")
    parts = [
        _HEAD.pack(VERSION, methods, lifetime, audit),
        _pack_str(claims.user_id),
        _pack_str(claims.project_id),
        bytes([len(claims.roles)]),
        *(_pack_str(r) for r in claims.roles),
    ]
    return b"".join(parts)


def unpack_payload(data: bytes, issued_ts: int) -> TokenClaims:
    """The claims of a payload; ValueError (or struct.error) when it is malformed."""
    version, methods, lifetime, audit = _HEAD.unpack_from(data, 0)
    if version != VERSION:
        raise ValueError(f"unknown token payload version {version}")
    user_id, pos = _unpack_str(data, _HEAD.size)
    project_id, pos = _unpack_str(data, pos)
    count, pos = data[pos], pos + 1
    roles: list[str] = []
    for _ in range(count):
        role, pos = _unpack_str(data, pos)
        roles.append(role)
    if pos != len(data):
        raise ValueError("trailing bytes")
    issued = datetime.fromtimestamp(issued_ts, UTC)
    return TokenClaims(
        user_id=user_id,
        project_id=project_id,
        roles=tuple(roles),
        issued=issued,
        expires=issued + timedelta(seconds=lifetime),
        audit_id=base64.urlsafe_b64encode(audit).rstrip(b"=").decode(),
        methods=tuple(m for i, m in enumerate(METHODS) if methods & (1 << i)),
    )


class RevocationList(Protocol):
    """What the gateway keeps of the identity service's revocations
    (gateway/auth/revocations.py)."""

    def revoked(self, claims: TokenClaims) -> bool: ...

    def add(self, revocation: identity_pb2.Revocation) -> None: ...

    def refresh_soon(self) -> None: ...

    async def refresh_if_due(self) -> None: ...


class TokenSigner:
    """Issues and verifies Fernet tokens with the keys in force (`keys.fernet()`); with a
    revocation list, a revoked token does not verify."""

    def __init__(
        self, keys: TokenKeys, ttl_s: int, revocations: RevocationList | None = None
    ) -> None:
        self._keys = keys
        self._ttl_s = ttl_s
        self.revocations = revocations

    def issue(
        self,
        *,
        user_id: str,
        project_id: str,
        roles: Iterable[str],
        methods: tuple[str, ...] = ("password",),
        now: datetime | None = None,
        expires: datetime | None = None,
    ) -> tuple[str, TokenClaims]:
        """A new token; `expires` (a token made from another keeps that one's expiry) may
        only shorten its lifetime."""
        # Fernet timestamps are whole seconds, and the token's issued_at is its timestamp.
        issued_ts = int((now or datetime.now(UTC)).timestamp())
        issued = datetime.fromtimestamp(issued_ts, UTC)
        lifetime_end = issued + timedelta(seconds=self._ttl_s)
        claims = TokenClaims(
            user_id=user_id,
            project_id=project_id,
            roles=tuple(roles),
            issued=issued,
            expires=min(lifetime_end, expires) if expires is not None else lifetime_end,
            audit_id=base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode(),
            methods=tuple(m for m in METHODS if m in methods),
        )
        token = self._keys.fernet().encrypt_at_time(pack_payload(claims), issued_ts)
        return token.decode(), claims

    def verify(self, token: str, now: datetime | None = None) -> TokenClaims:
        """The token's claims; InvalidToken when forged, signed by a key no longer held,
        malformed, expired or revoked."""
        now_ts = int((now or datetime.now(UTC)).timestamp())
        fernet = self._keys.fernet()
        try:
            raw = token.strip().encode("ascii")
            # Fernet's own timestamp check bounds every token by the lifetime configured
            # now (a lowered token_ttl_s shortens live tokens); the payload's is exact.
            payload = fernet.decrypt_at_time(raw, ttl=self._ttl_s, current_time=now_ts)
            issued_ts = fernet.extract_timestamp(raw)
        except (FernetInvalidToken, UnicodeEncodeError):
            raise InvalidToken(_why(fernet, token, now_ts)) from None
        try:
            claims = unpack_payload(payload, issued_ts)
        except (ValueError, IndexError, struct.error) as exc:
            raise InvalidToken("The token is malformed.") from exc
        if claims.expires.timestamp() <= now_ts:
            raise InvalidToken("The token has expired.")
        if self.revocations is not None and self.revocations.revoked(claims):
            raise InvalidToken("The token has been revoked.")
        return claims


def _why(fernet: MultiFernet, token: str, now_ts: int) -> str:
    """Why Fernet refused a token: only an authentic one can be said to have expired."""
    try:
        issued_ts = fernet.extract_timestamp(token.strip().encode("ascii"))
    except (FernetInvalidToken, UnicodeEncodeError):
        return "The request you have made requires authentication."
    if issued_ts <= now_ts:
        return "The token has expired."
    return "The token is not valid yet."
