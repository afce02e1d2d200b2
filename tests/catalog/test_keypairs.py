"""KeypairsService: generation, import validation, fingerprints and paging."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from loom.catalog.v1 import keypairs_pb2

from tests.catalog.conftest import Stubs

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBZ2kFHqVtD6Bw4qK1hJ5QEFgXDvRmiXoHTZ5bRJ0q4S me@x"


def _ssh_keygen_md5(public_key: str, tmp_path: Path) -> str:
    path = tmp_path / "key.pub"
    path.write_text(public_key + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-E", "md5", "-l", "-f", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()[1].removeprefix("MD5:")


def _ssh_keygen_public(private: Path) -> list[str]:
    out = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(private)], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[:2]


async def test_an_imported_key_has_ssh_keygen_s_md5_fingerprint(
    stubs: Stubs, tmp_path: Path
) -> None:
    reply = await stubs.keypairs.CreateKeypair(
        keypairs_pb2.CreateKeypairRequest(user_id="u", name="k", public_key=ED25519, project_id="p")
    )
    assert reply.private_key == ""
    assert reply.keypair.fingerprint == _ssh_keygen_md5(ED25519, tmp_path)


async def test_a_generated_pair_returns_a_private_key_matching_its_public_key(
    stubs: Stubs, tmp_path: Path
) -> None:
    reply = await stubs.keypairs.CreateKeypair(
        keypairs_pb2.CreateKeypairRequest(user_id="u", name="gen", project_id="p")
    )
    private = tmp_path / "id"
    private.write_text(reply.private_key)
    private.chmod(0o600)
    derived = _ssh_keygen_public(private)
    assert derived == reply.keypair.public_key.split()[:2]
    assert reply.keypair.fingerprint == _ssh_keygen_md5(reply.keypair.public_key, tmp_path)


@pytest.mark.parametrize(
    ("name", "key", "code"),
    [
        ("bad", "ssh-rsa not-base64!!", grpc.StatusCode.INVALID_ARGUMENT),
        ("bad/name", ED25519, grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["a garbled key", "a slash in the name"],
)
async def test_invalid_imports_are_refused(
    stubs: Stubs, name: str, key: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.keypairs.CreateKeypair(
            keypairs_pb2.CreateKeypairRequest(
                user_id="u", name=name, public_key=key, project_id="p"
            )
        )
    assert err.value.code() == code


async def test_a_duplicate_name_already_exists_but_only_per_user(stubs: Stubs) -> None:
    req = keypairs_pb2.CreateKeypairRequest(
        user_id="u1", name="k", public_key=ED25519, project_id="p"
    )
    await stubs.keypairs.CreateKeypair(req)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.keypairs.CreateKeypair(req)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    other = keypairs_pb2.CreateKeypairRequest(
        user_id="u2", name="k", public_key=ED25519, project_id="p"
    )
    assert (await stubs.keypairs.CreateKeypair(other)).keypair.user_id == "u2"


async def test_keypairs_page_by_name_and_deleting_twice_is_not_found(stubs: Stubs) -> None:
    for name in ("c", "a", "b"):
        await stubs.keypairs.CreateKeypair(
            keypairs_pb2.CreateKeypairRequest(
                user_id="u", name=name, public_key=ED25519, project_id="p"
            )
        )
    page = await stubs.keypairs.ListKeypairs(keypairs_pb2.ListKeypairsRequest(user_id="u", limit=2))
    assert ([k.name for k in page.keypairs], page.next_marker) == (["a", "b"], "b")
    rest = await stubs.keypairs.ListKeypairs(
        keypairs_pb2.ListKeypairsRequest(user_id="u", marker="b")
    )
    assert [k.name for k in rest.keypairs] == ["c"]
    await stubs.keypairs.DeleteKeypair(keypairs_pb2.DeleteKeypairRequest(user_id="u", name="a"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.keypairs.DeleteKeypair(keypairs_pb2.DeleteKeypairRequest(user_id="u", name="a"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
