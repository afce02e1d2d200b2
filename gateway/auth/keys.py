"""Fernet keys for identity tokens: a key repository laid out as Keystone's.

The repository is a directory of key files named by integers, each holding one Fernet key
(readable by its owner only). The highest-numbered key is the primary: it signs new tokens.
Every key in the directory verifies, so a token outlives a rotation for as long as the key
that signed it stays. Key `0` is the staged key: it verifies but, once any other key
exists, never signs; a rotation promotes it to primary, so a repository copied to every
gateway after one rotation already holds the primary of the next.

    0  staged   (verifies; becomes the primary at the next rotation)
    1  secondary (verifies tokens signed before the last rotation)
    2  primary  (signs and verifies)

The directory's modification time is checked on each use: adding, renaming or removing a
key file (all a rotation does) is seen without a restart. A key file edited in place is
not; replace it instead.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Protocol

from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from controlplane.config import GatewayConfig

log = logging.getLogger(__name__)

REPO_DIR = "fernet-keys"
STAGED = 0
# Keystone's default: staged, primary and one secondary, so a token survives one rotation.
DEFAULT_MAX_ACTIVE_KEYS = 3
_RACY_NS = 2_000_000_000


class KeyRepositoryError(Exception):
    """The key repository is unusable; the message names the path, never a key."""


class TokenKeys(Protocol):
    def fernet(self) -> MultiFernet:
        """The keys now in force: the primary first (it signs), all of them verify."""
        ...


class SecretKey:
    """One fixed key derived from `gateway.token_secret`: gateways configured with the same
    secret validate each other's tokens, as before Fernet. No rotation: changing the
    secret ends every live token."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("token secret must be at least 16 bytes")
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"loom identity token key"
        ).derive(secret)
        self._fernet = MultiFernet([Fernet(base64.urlsafe_b64encode(key))])

    def fernet(self) -> MultiFernet:
        return self._fernet


def _write_new_key(directory: Path, index: int) -> bool:
    """Writes a fresh key as `index`, 0600; False (and nothing written) if it exists.
    link() never overwrites, so gateways starting together end up with one key."""
    tmp = directory / f".{index}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(Fernet.generate_key())
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, directory / str(index))
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


class KeyRepository:
    """A Keystone-style Fernet key repository (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: int | None = None
        self._fernet: MultiFernet | None = None

    def indices(self) -> list[int]:
        """The key files' numbers, ascending; other files (temporaries) are ignored."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(
            int(n) for n in names if n.isascii() and n.isdigit() and (self.path / n).is_file()
        )

    def ensure(self) -> None:
        """Creates the repository (0700) with one key (0600) unless it holds keys already."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.indices() and _write_new_key(self.path, STAGED):
            log.info("created token key repository", extra={"path": str(self.path)})

    def _load(self) -> MultiFernet:
        keys: list[Fernet] = []
        for index in reversed(self.indices()):  # the primary (highest) first: it signs
            path = self.path / str(index)
            try:
                if path.stat().st_mode & 0o077:
                    log.warning("token key file is readable by others", extra={"path": str(path)})
                keys.append(Fernet(path.read_bytes().strip()))
            except FileNotFoundError:
                continue  # removed by a rotation since the listing
            except ValueError as exc:
                raise KeyRepositoryError(f"{path} does not hold a Fernet key") from exc
        if not keys:
            raise KeyRepositoryError(f"{self.path} holds no token keys")
        return MultiFernet(keys)

    def fernet(self) -> MultiFernet:
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except FileNotFoundError as exc:
            raise KeyRepositoryError(f"{self.path} does not exist") from exc
        if self._fernet is None or stamp != self._seen:
            self._fernet = self._load()
            # A change within the same clock tick as the load would leave the time as it
            # was (as git's "racy" index entries): trust only a time that has aged.
            self._seen = stamp if time.time_ns() - stamp > _RACY_NS else None
        return self._fernet

    def rotate(self, max_active_keys: int = DEFAULT_MAX_ACTIVE_KEYS) -> int:
        """Promotes the staged key to primary, stages a new key and removes the oldest
        secondaries beyond `max_active_keys` (staged and primary included). Returns the new
        primary's number. Tokens signed by a removed key stop validating."""
        if max_active_keys < 2:
            raise ValueError("max_active_keys must be at least 2 (staged and primary)")
        self.ensure()
        indices = self.indices()
        primary = max(indices) + 1
        if STAGED in indices:
            os.rename(self.path / str(STAGED), self.path / str(primary))
        else:
            _write_new_key(self.path, primary)
        _write_new_key(self.path, STAGED)
        secondaries = [i for i in self.indices() if i not in (STAGED, primary)]
        excess = len(secondaries) + 2 - max_active_keys
        for index in secondaries[: max(excess, 0)]:
            (self.path / str(index)).unlink()
        return primary


def repository_path(cfg: GatewayConfig, data_path: Path) -> Path:
    """gateway.fernet_key_repository, or <data_dir>/fernet-keys."""
    return Path(cfg.fernet_key_repository) if cfg.fernet_key_repository else data_path / REPO_DIR


def token_keys(cfg: GatewayConfig, data_path: Path) -> TokenKeys:
    """The keys the gateway's tokens use: derived from gateway.token_secret when it is set,
    else the key repository (created with one key on first use)."""
    if cfg.token_secret:
        return SecretKey(cfg.token_secret.encode())
    repo = KeyRepository(repository_path(cfg, data_path))
    repo.ensure()
    repo.fernet()  # a broken repository stops the gateway at start, not at the first login
    return repo
