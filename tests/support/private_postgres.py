"""A PostgreSQL server of the test's own (initdb in a temporary folder, its own port), so a
test may stop it and start it again without touching the machine's shared server.

PostgreSQL refuses to run as root: the cluster belongs to the `postgres` system user
(Debian's packages make it), and its commands run as that user."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from controlplane.runtime.natsserver import free_port


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL's server programs are not installed (initdb not found)")
    return Path(found[-1]).parent


class PrivatePostgres:
    """One cluster, trust authentication on 127.0.0.1:port; start, stop and start again."""

    def __init__(self) -> None:
        # Directly under the temporary folder, readable on the way down: the `postgres`
        # user cannot pass through a root-only test folder.
        self.root = Path(tempfile.mkdtemp(prefix="loom-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.sockets = self.root / "run"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._bin = _bindir()

    def _as_postgres(self, *argv: str) -> subprocess.CompletedProcess[str]:
        prefix = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
        return subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, check=True, timeout=120
        )

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
        self._as_postgres(
            str(self._bin / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=200"
        )
        self._as_postgres(
            str(self._bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "immediate") -> None:
        """immediate: as a crash (no shutdown checkpoint); fast: a clean stop."""
        self._as_postgres(str(self._bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return self.data.joinpath("postmaster.pid").exists()

    def create_database(self, name: str) -> str:
        self._as_postgres(
            str(self._bin / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-qc",
            f'CREATE DATABASE "{name}"',
        )
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def destroy(self) -> None:
        if self.running():
            with contextlib.suppress(subprocess.CalledProcessError):
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
