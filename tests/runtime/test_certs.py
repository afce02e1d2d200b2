"""Certificates for mutual TLS (`loom certs`), and who may call which gRPC service."""

from __future__ import annotations

import importlib
import pkgutil
import stat
from pathlib import Path
from typing import Any

import grpc
import loom
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loom.network.v1 import network_pb2, network_pb2_grpc

from controlplane.config import TlsConfig
from controlplane.runtime.callers import CALLERS, IDENTITIES, allowed
from controlplane.runtime.certs import CertError, issue
from controlplane.runtime.grpcserver import Registration, start_grpc_server


def test_certificates_are_made_once_and_kept_while_they_still_fit(tmp_path: Path) -> None:
    first = issue(tmp_path, "gateway")
    cert_bytes = first.cert.read_bytes()
    again = issue(tmp_path, "gateway")
    assert again == first
    assert again.cert.read_bytes() == cert_bytes
    assert stat.S_IMODE(first.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_bytes)
    common_name = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert common_name == "gateway"


def test_a_certificate_is_reissued_when_a_new_host_is_asked_for(tmp_path: Path) -> None:
    before = issue(tmp_path, "agent").cert.read_bytes()
    after = issue(tmp_path, "agent", ("compute-7.example", "10.1.2.3")).cert.read_bytes()
    assert after != before
    san = x509.load_pem_x509_certificate(after).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "compute-7.example" in san.value.get_values_for_type(x509.DNSName)
    assert "localhost" in san.value.get_values_for_type(x509.DNSName)


def test_an_identity_loom_does_not_know_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="unknown identity 'mallory'"):
        issue(tmp_path, "mallory")


def _loom_services() -> set[str]:
    names: set[str] = set()
    for module in pkgutil.walk_packages(loom.__path__, "loom."):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(module.name).DESCRIPTOR
            names.update(s.full_name for s in descriptor.services_by_name.values())
    return names


def test_every_loom_grpc_service_names_its_callers() -> None:
    services = _loom_services()
    assert "loom.conductor.v1.ServersService" in services
    missing = services - set(CALLERS)
    assert not missing, f"services without callers (closed to everyone): {sorted(missing)}"
    for service, callers in CALLERS.items():
        assert callers <= {*IDENTITIES, "*"}, service


def test_only_the_gateway_and_operators_act_for_projects() -> None:
    for identity in IDENTITIES:
        expected = identity in ("gateway", "operator")
        assert allowed("loom.conductor.v1.ServersService", identity) is expected, identity
    assert not allowed("loom.conductor.v1.ServersService", None)
    assert not allowed("loom.unknown.v1.Service", "operator")


async def _health(target: str, creds: grpc.ChannelCredentials) -> int:
    async with grpc.aio.secure_channel(target, creds) as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return int(resp.status)


def _creds(files_dir: Path, identity: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (files_dir / "ca.pem").read_bytes(),
        (files_dir / f"{identity}.key").read_bytes(),
        (files_dir / f"{identity}.pem").read_bytes(),
    )


async def test_a_server_with_mutual_tls_refuses_a_certificate_from_another_ca(
    tmp_path: Path,
) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    server_files = issue(ours, "scheduler")
    issue(ours, "conductor")
    issue(theirs, "conductor")
    tls = TlsConfig(ca=str(server_files.ca), cert=str(server_files.cert), key=str(server_files.key))
    running = await start_grpc_server("127.0.0.1:0", [], tls)
    target = f"localhost:{running.port}"
    try:
        assert await _health(target, _creds(ours, "conductor")) == (
            health_pb2.HealthCheckResponse.SERVING
        )
        # A client certificate signed by another CA (trusting ours, to get that far).
        foreign = grpc.ssl_channel_credentials(
            (ours / "ca.pem").read_bytes(),
            (theirs / "conductor.key").read_bytes(),
            (theirs / "conductor.pem").read_bytes(),
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _health(target, foreign)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # And none at all.
        no_cert = grpc.ssl_channel_credentials((ours / "ca.pem").read_bytes())
        with pytest.raises(grpc.aio.AioRpcError):
            await _health(target, no_cert)
    finally:
        await running.stop(0)


class _FeedOnly(network_pb2_grpc.NetworkServiceServicer):
    """Answers the security feed with nothing taken: the interceptor is what is tested."""

    async def TakePortSecurityChanges(self, request: Any, context: Any) -> Any:
        return network_pb2.TakePortSecurityChangesResponse()


async def test_only_the_compute_service_may_take_the_security_changes_bound_for_hosts(
    tmp_path: Path,
) -> None:
    server_files = issue(tmp_path, "network")
    for identity in ("conductor", "gateway"):
        issue(tmp_path, identity)
    tls = TlsConfig(ca=str(server_files.ca), cert=str(server_files.cert), key=str(server_files.key))
    registration = Registration.of(_FeedOnly(), network_pb2, network_pb2_grpc, "NetworkService")
    running = await start_grpc_server("127.0.0.1:0", [registration], tls)
    target = f"localhost:{running.port}"
    take = network_pb2.TakePortSecurityChangesRequest()
    try:
        async with grpc.aio.secure_channel(target, _creds(tmp_path, "conductor")) as channel:
            stub = network_pb2_grpc.NetworkServiceStub(channel)
            assert (await stub.TakePortSecurityChanges(take, timeout=5)).change_ids == []
        async with grpc.aio.secure_channel(target, _creds(tmp_path, "gateway")) as channel:
            stub = network_pb2_grpc.NetworkServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.TakePortSecurityChanges(take, timeout=5)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "TakePortSecurityChanges" in (refused.value.details() or "")
    finally:
        await running.stop(0)
