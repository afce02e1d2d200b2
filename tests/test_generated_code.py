"""The committed generated/ code is what protos/ produce, and imports by proto package."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_current() -> None:
    result = subprocess.run(
        ["scripts/check_generated.sh"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_modules_import_by_their_proto_package() -> None:
    from loom.compute.v1 import compute_pb2
    from loom.conductor.v1 import conductor_pb2_grpc
    from loom.scheduler.v1 import scheduler_pb2

    assert compute_pb2.DESCRIPTOR.package == "loom.compute.v1"
    assert scheduler_pb2.DESCRIPTOR.package == "loom.scheduler.v1"
    assert hasattr(conductor_pb2_grpc, "ServersServiceStub")
