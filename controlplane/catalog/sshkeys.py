"""SSH and x509 key material: generating pairs, validating imports, Nova's fingerprints."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The user principal name (UPN) otherName of a client certificate, which Windows' WinRM
# maps to a local user.
_UPN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
_CERT_DAYS = 3650


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


def _der_utf8(text: str) -> bytes:
    """A DER UTF8String (the otherName's value), for short strings only."""
    raw = text.encode()
    if len(raw) > 127:
        raise InvalidKey("Keypair data is invalid: the user id is too long for a certificate")
    return bytes([0x0C, len(raw)]) + raw


def generate_x509_keypair(user_id: str) -> KeyMaterial:
    """A self-signed client certificate for `user_id` (CN, and UPN user@localhost), valid
    ten years; the private key is the key and certificate as base64 PKCS#12 without a
    password, which is what WinRM clients import."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user_id)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=_CERT_DAYS))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.OtherName(_UPN_OID, _der_utf8(f"{user_id}@localhost"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    bundle = pkcs12.serialize_key_and_certificates(
        None, key, cert, None, serialization.NoEncryption()
    )
    return KeyMaterial(
        public_key=pem,
        fingerprint=_colon_hex(cert.fingerprint(hashes.SHA1())),
        private_key=base64.b64encode(bundle).decode(),
    )
