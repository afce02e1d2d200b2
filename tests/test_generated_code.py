"""The committed generated/ code is what protos/ produce with the locked grpcio-tools, imports
by proto package, and runs on every grpcio and protobuf that pyproject.toml admits."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "generated" / "loom"


def _floor(requirement_name: str) -> tuple[int, ...]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        m = re.fullmatch(rf"{re.escape(requirement_name)}(\[[^\]]*\])?>=([0-9.]+)", dep)
        if m:
            return _version(m.group(2))
    raise AssertionError(f"pyproject.toml has no floor for {requirement_name}")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _locked(package: str) -> tuple[int, ...]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions = [p["version"] for p in lock["package"] if p["name"] == package]
    assert len(versions) == 1, f"uv.lock pins {package} {len(versions)} times"
    return _version(versions[0])


def _stamped(pattern: str, glob: str) -> set[tuple[int, ...]]:
    return {
        _version(m.group(1))
        for path in GENERATED.rglob(glob)
        if (m := re.search(pattern, path.read_text()))
    }


def test_generated_code_is_current() -> None:
    result = subprocess.run(
        ["scripts/check_generated.sh"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_bytecode_caches_left_by_imports_do_not_make_generated_code_stale() -> None:
    cache = GENERATED / "common" / "__pycache__"
    probe = cache / "loom-check-probe.pyc"
    created = not cache.exists()
    cache.mkdir(exist_ok=True)
    probe.write_bytes(b"")
    try:
        result = subprocess.run(
            ["scripts/check_generated.sh"], cwd=ROOT, capture_output=True, text=True, check=False
        )
    finally:
        probe.unlink()
        if created:
            cache.rmdir()
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "package", "services"),
    [
        ("loom.identity.v1.identity_pb2", "loom.identity.v1", {"IdentityService"}),
        ("loom.image.v1.images_pb2", "loom.image.v1", {"ImagesService"}),
        ("loom.catalog.v1.flavors_pb2", "loom.catalog.v1", {"FlavorsService"}),
        ("loom.catalog.v1.keypairs_pb2", "loom.catalog.v1", {"KeypairsService"}),
        ("loom.catalog.v1.quotas_pb2", "loom.catalog.v1", {"QuotasService"}),
        ("loom.conductor.v1.servers_pb2", "loom.conductor.v1", {"ServersService"}),
        ("loom.conductor.v1.server_groups_pb2", "loom.conductor.v1", {"ServerGroupsService"}),
        ("loom.conductor.v1.consoles_pb2", "loom.conductor.v1", {"ConsolesService"}),
        ("loom.conductor.v1.fleet_pb2", "loom.conductor.v1", {"FleetService"}),
        ("loom.conductor.v1.conductor_bus_pb2", "loom.conductor.v1", set()),
        ("loom.scheduler.v1.scheduler_pb2", "loom.scheduler.v1", {"SchedulerService"}),
        ("loom.compute.v1.compute_pb2", "loom.compute.v1", {"ComputeService"}),
        ("loom.compute.v1.agent_bus_pb2", "loom.compute.v1", set()),
    ],
)
def test_each_domain_has_its_own_proto_package_and_one_file_per_service(
    module: str, package: str, services: set[str]
) -> None:
    descriptor = importlib.import_module(module).DESCRIPTOR
    assert descriptor.package == package
    assert set(descriptor.services_by_name) == services


def test_the_stubs_were_made_by_the_locked_grpcio_tools() -> None:
    # A stub made by another grpcio-tools differs in its version stamp, so a fresh install
    # would find generated/ stale although protos/ never changed.
    stamps = _stamped(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", "*_pb2_grpc.py")
    assert stamps == {_locked("grpcio-tools")}


def test_pyproject_admits_no_grpcio_or_protobuf_older_than_the_stubs_need() -> None:
    # The stubs raise at import on a grpcio older than the tools that made them, and on a
    # protobuf runtime older than their gencode.
    (grpc_stamp,) = _stamped(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", "*_pb2_grpc.py")
    (gencode,) = _stamped(r"# Protobuf Python Version: ([0-9.]+)", "*_pb2.py")
    assert _floor("grpcio") >= grpc_stamp
    assert _floor("protobuf") >= gencode


def test_the_breaking_check_refuses_a_renumbered_field_and_passes_a_compatible_tree(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", repo / "protos")
    shutil.copy(ROOT / "buf.yaml", repo / "buf.yaml")
    (repo / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "check_breaking.sh", repo / "scripts" / "check_breaking.sh")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    env = {
        **os.environ,
        "BUF": str(ROOT / ".venv" / "bin" / "buf"),
        "LOOM_BREAKING_AGAINST": "HEAD",
    }

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["scripts/check_breaking.sh"], cwd=repo, env=env, capture_output=True, text=True
        )

    same = check()
    assert same.returncode == 0, same.stdout + same.stderr
    assert "compatible with HEAD" in same.stdout
    keypairs = repo / "protos" / "loom" / "catalog" / "v1" / "keypairs.proto"
    keypairs.write_text(keypairs.read_text().replace("string name = 1;", "string name = 11;", 1))
    broken = check()
    assert broken.returncode != 0
    assert 'field "1" with name "name" on message "Keypair" was deleted' in broken.stdout
