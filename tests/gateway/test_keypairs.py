"""Compute keypairs per microversion, per user."""

from __future__ import annotations

import base64

from tests.gateway.conftest import Cloud
from tests.gateway.shapes import assert_shape

PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBZ2kFHqVtD6Bw4qK1hJ5QEFgXDvRmiXoHTZ5bRJ0q4S t@x"
KP = "/compute/v2.1/os-keypairs"


async def test_before_2_2_a_generated_keypair_is_200_with_its_private_key(cloud: Cloud) -> None:
    h = await cloud.headers()
    r = await cloud.client.post(KP, json={"keypair": {"name": "gen"}}, headers=h)
    assert r.status_code == 200
    assert_shape("keypair_create_v2.1", r.json())
    assert "PRIVATE KEY" in r.json()["keypair"]["private_key"]
    listed = await cloud.client.get(KP, headers=h)
    assert_shape("keypairs_list_v2.1", listed.json())
    shown = await cloud.client.get(f"{KP}/gen", headers=h)
    assert_shape("keypair_show_v2.1", shown.json())
    assert (await cloud.client.delete(f"{KP}/gen", headers=h)).status_code == 202


async def test_from_2_2_create_is_201_with_a_type_and_delete_is_204(cloud: Cloud) -> None:
    h = await cloud.headers(version="2.2")
    r = await cloud.client.post(KP, json={"keypair": {"name": "imp", "public_key": PUB}}, headers=h)
    assert r.status_code == 201
    assert_shape("keypair_create_v2.2", r.json())
    assert "private_key" not in r.json()["keypair"]
    assert r.json()["keypair"]["type"] == "ssh"
    shown = await cloud.client.get(f"{KP}/imp", headers=h)
    assert_shape("keypair_show_v2.2", shown.json())
    assert (await cloud.client.delete(f"{KP}/imp", headers=h)).status_code == 204
    assert (await cloud.client.get(f"{KP}/imp", headers=h)).status_code == 404


async def test_from_2_92_a_public_key_is_required(cloud: Cloud) -> None:
    r = await cloud.client.post(
        KP, json={"keypair": {"name": "gen"}}, headers=await cloud.headers(version="2.92")
    )
    assert r.status_code == 400
    assert "'public_key' is a required property" in r.json()["badRequest"]["message"]


async def test_an_invalid_public_key_is_400_and_a_duplicate_409(cloud: Cloud) -> None:
    h = await cloud.headers(version="2.10")
    bad = await cloud.client.post(
        KP, json={"keypair": {"name": "b", "public_key": "ssh-rsa zzz"}}, headers=h
    )
    assert bad.status_code == 400
    assert "Keypair data is invalid" in bad.json()["badRequest"]["message"]
    ok = {"keypair": {"name": "d", "public_key": PUB}}
    assert (await cloud.client.post(KP, json=ok, headers=h)).status_code == 201
    dup = await cloud.client.post(KP, json=ok, headers=h)
    assert dup.status_code == 409
    assert dup.json()["conflictingRequest"]["message"] == "Key pair 'd' already exists."


async def test_keypairs_page_from_2_35(cloud: Cloud) -> None:
    h = await cloud.headers(version="2.35")
    for name in ("a", "b", "c"):
        body = {"keypair": {"name": name, "public_key": PUB}}
        assert (await cloud.client.post(KP, json=body, headers=h)).status_code == 201
    page = await cloud.client.get(f"{KP}?limit=2", headers=h)
    assert_shape("keypairs_list_v2.35", page.json())
    assert [k["keypair"]["name"] for k in page.json()["keypairs"]] == ["a", "b"]
    assert "marker=b" in page.json()["keypairs_links"][0]["href"]
    rest = await cloud.client.get(f"{KP}?limit=2&marker=b", headers=h)
    assert [k["keypair"]["name"] for k in rest.json()["keypairs"]] == ["c"]


async def test_users_never_see_each_other_s_keypairs_but_an_admin_may_from_2_10(
    cloud: Cloud,
) -> None:
    demo = await cloud.headers(version="2.10")
    assert (
        await cloud.client.post(
            KP, json={"keypair": {"name": "mine", "public_key": PUB}}, headers=demo
        )
    ).status_code == 201
    await cloud.make_user("bob", "member", "demo")
    bob = {
        "X-Auth-Token": await cloud.token("bob", project="demo", password="pw-bob"),
        "OpenStack-API-Version": "compute 2.10",
    }
    assert (await cloud.client.get(KP, headers=bob)).json()["keypairs"] == []
    assert (await cloud.client.get(f"{KP}/mine", headers=bob)).status_code == 404
    token = (
        await cloud.client.get(
            "/identity/v3/auth/tokens", headers={**demo, "X-Subject-Token": demo["X-Auth-Token"]}
        )
    ).json()
    demo_id = token["token"]["user"]["id"]
    peek = await cloud.client.get(f"{KP}?user_id={demo_id}", headers=bob)
    assert peek.status_code == 403
    admin = await cloud.headers("admin", version="2.10")
    seen = await cloud.client.get(f"{KP}?user_id={demo_id}", headers=admin)
    assert [k["keypair"]["name"] for k in seen.json()["keypairs"]] == ["mine"]


async def test_from_2_2_an_x509_keypair_without_a_certificate_is_generated(cloud: Cloud) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    h = await cloud.headers(version="2.2")
    r = await cloud.client.post(KP, json={"keypair": {"name": "win", "type": "x509"}}, headers=h)
    assert r.status_code == 201, r.text
    assert_shape("keypair_create_v2.2", r.json())
    kp = r.json()["keypair"]
    assert kp["type"] == "x509"
    cert = x509.load_pem_x509_certificate(kp["public_key"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == kp["user_id"]
    assert cert.issuer == cert.subject
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert kp["fingerprint"] == cert.fingerprint(hashes.SHA1()).hex(":")
    # The private key is the key and certificate as base64 PKCS#12, without a password.
    key, bundled, _ = pkcs12.load_key_and_certificates(base64.b64decode(kp["private_key"]), None)
    assert bundled == cert
    assert key is not None
    assert key.public_key() == cert.public_key()
    shown = await cloud.client.get(f"{KP}/win", headers=h)
    assert shown.json()["keypair"]["public_key"] == kp["public_key"]
