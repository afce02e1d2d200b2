"""Scheduler processes for whole-service tests: `loom scheduler` as a child, on a free port."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.runtime.natsserver import free_port
from tests.support import polling

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class SchedulerProcess:
    process: subprocess.Popen[bytes]
    address: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_scheduler(db_url: str, nats_url: str, log_dir: Path, name: str) -> SchedulerProcess:
    """Starts `loom scheduler`; returns once its gRPC health check says SERVING."""
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'generated'}",
        "LOOM_DATABASE__URL": db_url,
        "LOOM_NATS__URL": nats_url,
        "LOOM_SCHEDULER__LISTEN": address,
        "LOOM_METRICS__LISTEN__SCHEDULER": f"127.0.0.1:{free_port()}",
        "LOOM_DATA_DIR": str(log_dir / name),
    }
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "controlplane.cli", "scheduler"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    proc = SchedulerProcess(process, address, log)
    try:
        _wait_serving(proc)
    except BaseException:
        proc.stop()
        raise
    return proc


def _wait_serving(proc: SchedulerProcess) -> None:
    with grpc.insecure_channel(proc.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            if proc.process.poll() is not None:
                raise RuntimeError(f"scheduler exited early:\n{proc.log.read_text()}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            except grpc.RpcError:
                return False
            return bool(status == health_pb2.HealthCheckResponse.SERVING)

        try:
            polling.wait_until(serving, polling.SERVICE_READY_S, "the scheduler serving")
        except AssertionError as exc:
            raise TimeoutError(f"{exc}:\n{proc.log.read_text()}") from exc
