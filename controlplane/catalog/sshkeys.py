"""SSH and x509 key material: generating pairs, validating imports, Nova's fingerprints."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa


class InvalidKey(ValueError):
    """The public key or certificate cannot be parsed."""


@dataclass(frozen=True)
class KeyMaterial:
    public_key: str
    fingerprint: str
    private_key: str = ""


def _colon_hex(digest: bytes) -> str:
    return ":".join(f"{b:02x}" for b in digest)


def ssh_fingerprint(public_key: str) -> str:
    """MD5 of the key blob, colon separated: what `ssh-keygen -E md5 -l` and Nova print."""
    parts = public_key.strip().split()
    if len(parts) < 2:
        raise InvalidKey("Keypair data is invalid: not an OpenSSH public key")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError as exc:
        raise InvalidKey("Keypair data is invalid: the key is not base64") from exc
    return _colon_hex(hashlib.md5(blob, usedforsecurity=False).digest())


def validate_ssh_public_key(public_key: str) -> KeyMaterial:
    text = public_key.strip()
    try:
        serialization.load_ssh_public_key(text.encode())
    except (ValueError, TypeError) as exc:
        raise InvalidKey(f"Keypair data is invalid: {exc}") from exc
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for unknown types
        raise InvalidKey(f"Keypair data is invalid: {exc}") from exc
    return KeyMaterial(public_key=text, fingerprint=ssh_fingerprint(text))


def validate_x509_certificate(pem: str) -> KeyMaterial:
    try:
        cert = x509.load_pem_x509_certificate(pem.strip().encode())
    except ValueError as exc:
        raise InvalidKey(f"Keypair data is invalid: {exc}") from exc
    # Nova fingerprints certificates with SHA-1 of the DER encoding.
    return KeyMaterial(
        public_key=pem.strip(), fingerprint=_colon_hex(cert.fingerprint(hashes.SHA1()))
    )


def generate_ssh_keypair(comment: str = "Generated-by-Loom") -> KeyMaterial:
    """An RSA 2048 pair, the kind every SSH client accepts; the private key in PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
        + f" {comment}"
    )
    return KeyMaterial(public_key=public, fingerprint=ssh_fingerprint(public), private_key=private)
