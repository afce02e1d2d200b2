"""The committed generated/ code is what protos/ produce with the locked grpcio-tools, imports
by proto package, and runs on every grpcio and protobuf that pyproject.toml admits."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

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


def test_generated_modules_import_by_their_proto_package() -> None:
    from loom.compute.v1 import compute_pb2
    from loom.conductor.v1 import conductor_pb2_grpc
    from loom.scheduler.v1 import scheduler_pb2

    assert compute_pb2.DESCRIPTOR.package == "loom.compute.v1"
    assert scheduler_pb2.DESCRIPTOR.package == "loom.scheduler.v1"
    assert hasattr(conductor_pb2_grpc, "ServersServiceStub")


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
