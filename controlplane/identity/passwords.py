"""Password hashing: salted scrypt, slow on purpose, compared in constant time."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os

# Cost parameters (n=2**14, r=8, p=1) cost about 16 MiB and tens of milliseconds per check.
_N, _R, _P = 2**14, 8, 1
_DKLEN = 32


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=_DKLEN, maxmem=64 * 1024 * 1024
    )


def hash_password(password: str) -> str:
    """`scrypt$n$r$p$salt$hash`, so the cost can rise later without breaking old hashes."""
    salt = os.urandom(16)
    digest = _derive(password, salt, _N, _R, _P)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = _derive(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(expected, got)


async def hash_password_async(password: str) -> str:
    # scrypt is deliberately slow: keep it off the event loop.
    return await asyncio.to_thread(hash_password, password)


async def verify_password_async(password: str, stored: str) -> bool:
    return await asyncio.to_thread(verify_password, password, stored)
