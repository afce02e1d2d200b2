"""Pure pieces of the gateway: tokens and microversions (validation: test_validation.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.auth.context import expand_roles
from gateway.auth.tokens import InvalidToken, TokenSigner, load_secret
from gateway.microversion import Microversion, VersionNotAcceptable, negotiate

SECRET = b"0123456789abcdef0123456789abcdef"


def _issue(signer: TokenSigner, now: datetime | None = None) -> str:
    token, _ = signer.issue(
        user_id="u",
        user_name="n",
        project_id="p",
        project_name="pn",
        roles=(("r1", "member"),),
        now=now,
    )
    return token


def test_a_token_verifies_with_its_secret_and_not_with_another() -> None:
    token = _issue(TokenSigner(SECRET, 3600))
    assert TokenSigner(SECRET, 3600).verify(token).role_names == {"member"}
    with pytest.raises(InvalidToken):
        TokenSigner(b"another-secret-of-32-bytes-long!", 3600).verify(token)


def test_a_token_stops_working_at_its_expiry() -> None:
    signer = TokenSigner(SECRET, 60)
    issued = datetime.now(UTC) - timedelta(seconds=61)
    with pytest.raises(InvalidToken, match="expired"):
        signer.verify(_issue(signer, now=issued))


def test_a_tampered_payload_is_refused() -> None:
    token = _issue(TokenSigner(SECRET, 3600))
    payload, _, sig = token.partition(".")
    tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + sig
    with pytest.raises(InvalidToken):
        TokenSigner(SECRET, 3600).verify(tampered)


def test_the_generated_secret_is_written_once_and_reused(tmp_path: Path) -> None:
    first = load_secret("", tmp_path)
    assert load_secret("", tmp_path) == first
    assert len(first) >= 32
    assert (tmp_path / "token-secret").stat().st_mode & 0o077 == 0


def test_admin_implies_member_and_reader() -> None:
    roles = expand_roles([("a", "admin")], {"admin": "a", "member": "m", "reader": "r"})
    assert roles == (("a", "admin"), ("m", "member"), ("r", "reader"))


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({"openstack-api-version": "compute 2.97"}, VersionNotAcceptable),
        ({"x-openstack-nova-api-version": "2.x"}, ValueError),
        ({"openstack-api-version": "compute 02.1"}, ValueError),
    ],
)
def test_bad_microversions_raise(headers: dict[str, str], error: type[Exception]) -> None:
    with pytest.raises(error):
        negotiate(headers)


def test_microversions_compare_numerically_not_as_text() -> None:
    assert Microversion.parse("2.10") > Microversion.parse("2.9")
    assert negotiate({"openstack-api-version": "compute 2.9"}).at_least("2.9")
