"""Identity tokens: Fernet tokens, the key repository and its rotation (pure: no servers)."""

from __future__ import annotations

import base64
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.config import ConfigError, load_config
from gateway.auth.keys import KeyRepository, SecretKey, token_keys
from gateway.auth.tokens import InvalidToken, TokenClaims, TokenSigner, pack_payload, unpack_payload

ADMIN_ROLES = ("admin", "member", "reader")


def _repo(path: Path) -> KeyRepository:
    repo = KeyRepository(path)
    repo.ensure()
    return repo


def _issue(
    signer: TokenSigner, now: datetime | None = None, roles: tuple[str, ...] = ("member",)
) -> str:
    token, _ = signer.issue(
        user_id=uuid.uuid4().hex, project_id=uuid.uuid4().hex, roles=roles, now=now
    )
    return token


def test_a_token_verifies_with_its_keys_and_not_with_another_repositorys(tmp_path: Path) -> None:
    signer = TokenSigner(_repo(tmp_path / "a"), 3600)
    token, issued = signer.issue(
        user_id="u" * 32, project_id=uuid.uuid4().hex, roles=("member", "reader")
    )
    claims = signer.verify(token)
    assert claims == issued
    assert claims.role_names == {"member", "reader"}
    with pytest.raises(InvalidToken, match="requires authentication"):
        TokenSigner(_repo(tmp_path / "b"), 3600).verify(token)


def test_the_repository_is_created_on_first_use_with_one_key_readable_by_its_owner_only(
    tmp_path: Path,
) -> None:
    repo = _repo(tmp_path / "keys")
    assert repo.indices() == [0]
    key = (tmp_path / "keys" / "0").read_bytes()
    repo.ensure()
    assert repo.indices() == [0]
    assert (tmp_path / "keys" / "0").read_bytes() == key
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    repo.rotate()
    repo.rotate()
    assert repo.indices() == [0, 1, 2]
    for index in repo.indices():
        assert stat.S_IMODE((tmp_path / "keys" / str(index)).stat().st_mode) == 0o600


def test_a_rotation_promotes_the_staged_key_so_a_copy_made_before_it_validates_new_tokens(
    tmp_path: Path,
) -> None:
    repo = _repo(tmp_path / "keys")
    repo.rotate()  # keys 0 (staged) and 1 (primary)
    # Another gateway with a copy of the repository made now, before the next rotation.
    copy = tmp_path / "copy"
    copy.mkdir()
    for index in repo.indices():
        (copy / str(index)).write_bytes((repo.path / str(index)).read_bytes())
    staged = (repo.path / "0").read_bytes()
    assert repo.rotate() == 2
    assert (repo.path / "2").read_bytes() == staged
    token = _issue(TokenSigner(repo, 3600))
    assert TokenSigner(KeyRepository(copy), 3600).verify(token).role_names == {"member"}


def test_a_token_signed_by_a_rotated_out_key_still_present_validates(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "keys")
    signer = TokenSigner(repo, 3600)
    before = _issue(signer)
    repo.rotate()
    repo.rotate()  # the key that signed `before` is now the secondary 1; 2 signs
    assert repo.indices() == [0, 1, 2]
    after = _issue(signer)
    assert signer.verify(before).role_names == {"member"}
    assert signer.verify(after).role_names == {"member"}
    # The new token is signed by the new primary: a gateway holding only key 1 refuses it.
    only_old = tmp_path / "only-old"
    only_old.mkdir()
    (only_old / "1").write_bytes((repo.path / "1").read_bytes())
    with pytest.raises(InvalidToken):
        TokenSigner(KeyRepository(only_old), 3600).verify(after)


def test_a_token_signed_by_a_removed_key_is_refused_without_a_restart(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "keys")
    signer = TokenSigner(repo, 3600)
    token = _issue(signer)
    assert signer.verify(token)
    repo.rotate(max_active_keys=2)  # the signing key is promoted to 1, still present
    assert signer.verify(token)
    repo.rotate(max_active_keys=2)  # ... and now removed: keys 0 and 2 remain
    assert repo.indices() == [0, 2]
    with pytest.raises(InvalidToken, match="requires authentication"):
        signer.verify(token)


def test_a_tampered_token_is_refused(tmp_path: Path) -> None:
    signer = TokenSigner(_repo(tmp_path / "keys"), 3600)
    token = _issue(signer)
    raw = bytearray(base64.urlsafe_b64decode(token))
    for offset in (0, 5, 30, len(raw) // 2, len(raw) - 1):  # version, time, iv, data, hmac
        forged = bytearray(raw)
        forged[offset] ^= 0x01
        with pytest.raises(InvalidToken):
            signer.verify(base64.urlsafe_b64encode(bytes(forged)).decode())
    for junk in ("", "x.y", token[:-4], token + "AAAA", "é" * 10):
        with pytest.raises(InvalidToken):
            signer.verify(junk)


def test_a_token_stops_working_at_its_expiry(tmp_path: Path) -> None:
    signer = TokenSigner(_repo(tmp_path / "keys"), 60)
    now = datetime.now(UTC)
    token, claims = signer.issue(user_id="u", project_id="p", roles=("member",), now=now)
    assert claims.expires - claims.issued == timedelta(seconds=60)
    assert signer.verify(token, now=now + timedelta(seconds=59))
    with pytest.raises(InvalidToken, match="expired"):
        signer.verify(token, now=now + timedelta(seconds=61))
    with pytest.raises(InvalidToken, match="expired"):
        signer.verify(_issue(signer, now=now - timedelta(seconds=61)))


def test_a_lowered_ttl_shortens_tokens_already_issued(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "keys")
    now = datetime.now(UTC)
    token = _issue(TokenSigner(repo, 3600), now=now - timedelta(seconds=120))
    assert TokenSigner(repo, 3600).verify(token)
    with pytest.raises(InvalidToken, match="expired"):
        TokenSigner(repo, 60).verify(token)


def test_a_project_scoped_admin_token_stays_under_255_characters(tmp_path: Path) -> None:
    signer = TokenSigner(_repo(tmp_path / "keys"), 3600)
    scoped = _issue(signer, roles=ADMIN_ROLES)
    unscoped, _ = signer.issue(user_id=uuid.uuid4().hex, project_id="", roles=())
    assert len(scoped) == 184
    assert len(unscoped) == 140


def test_gateways_given_the_same_token_secret_accept_each_others_tokens() -> None:
    secret = b"a-shared-secret-of-some-length"
    token = _issue(TokenSigner(SecretKey(secret), 3600))
    assert TokenSigner(SecretKey(secret), 3600).verify(token)
    with pytest.raises(InvalidToken):
        TokenSigner(SecretKey(b"another-secret-entirely"), 3600).verify(token)


def test_token_secret_selects_the_derived_key_and_excludes_a_repository(tmp_path: Path) -> None:
    with_secret = load_config(environ={"LOOM_GATEWAY__TOKEN_SECRET": "s" * 16})
    assert isinstance(token_keys(with_secret.gateway, tmp_path), SecretKey)
    assert not (tmp_path / "fernet-keys").exists()
    configured = load_config(
        environ={"LOOM_GATEWAY__FERNET_KEY_REPOSITORY": str(tmp_path / "elsewhere")}
    )
    assert isinstance(token_keys(configured.gateway, tmp_path), KeyRepository)
    assert (tmp_path / "elsewhere" / "0").is_file()
    with pytest.raises(ConfigError, match="exclusive"):
        load_config(
            environ={
                "LOOM_GATEWAY__TOKEN_SECRET": "s" * 16,
                "LOOM_GATEWAY__FERNET_KEY_REPOSITORY": str(tmp_path),
            }
        )
    with pytest.raises(ConfigError, match="token_secret"):
        load_config(environ={"LOOM_GATEWAY__TOKEN_SECRET": "short"})


def test_a_file_that_is_not_a_key_stops_the_gateway_naming_it(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "1").write_text("not a key")
    (keys / ".1.tmp").write_text("ignored")
    cfg = load_config(environ={"LOOM_GATEWAY__FERNET_KEY_REPOSITORY": str(keys)})
    with pytest.raises(Exception, match=r"keys/1 does not hold a Fernet key"):
        token_keys(cfg.gateway, tmp_path)


_ids = st.one_of(
    st.builds(lambda: uuid.uuid4().hex),
    st.text(max_size=300),
    st.text(alphabet="0123456789abcdefABCDEF-", min_size=30, max_size=36),
)


@given(
    user_id=_ids,
    project_id=_ids,
    roles=st.lists(st.text(max_size=300), max_size=5),
    methods=st.sets(st.sampled_from(["password", "token"])),
)
def test_every_payload_comes_back_as_it_was_packed(
    user_id: str, project_id: str, roles: list[str], methods: set[str]
) -> None:
    issued = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    claims = TokenClaims(
        user_id=user_id,
        project_id=project_id,
        roles=tuple(roles),
        issued=issued,
        expires=issued + timedelta(hours=1),
        audit_id=base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode(),
        methods=tuple(m for m in ("password", "token") if m in methods),
    )
    assert unpack_payload(pack_payload(claims), int(issued.timestamp())) == claims
