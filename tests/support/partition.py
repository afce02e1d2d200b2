"""Cutting one process off from a set of TCP ports (a network partition), with iptables.

The process is started inside a cgroup (v2) of its own (`Partition.enter`, run in the
child before it execs). `cut` then drops, in both directions, every packet of the
process's established connections to those ports (matched by their local ports) and every
new packet the cgroup's sockets send to them, so a reconnect cannot get through either.
Nothing is closed: the connections stall as they would behind a broken link, and resume
(TCP retransmits) once `heal` removes the rules. Needs root, iptables and a cgroup v2
hierarchy."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

import psutil


def cgroup2_root() -> Path:
    """Where the cgroup v2 hierarchy is mounted (the unified one on a hybrid host)."""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    raise RuntimeError("No cgroup v2 hierarchy is mounted: a partition cannot be made here.")


class Partition:
    def __init__(self, name: str) -> None:
        self.name = name
        self.cgroup = cgroup2_root() / name
        self.cgroup.mkdir(exist_ok=True)
        self._rules: list[list[str]] = []

    def enter(self) -> None:
        """Moves the calling process into the cgroup (a Popen preexec_fn)."""
        (self.cgroup / "cgroup.procs").write_text(str(os.getpid()))

    def cut(self, pid: int, ports: Iterable[int]) -> int:
        """Drops the traffic between process `pid` and `ports`; returns how many of its
        established connections were cut."""
        wanted = set(ports)
        local = sorted(
            {
                c.laddr.port
                for c in psutil.Process(pid).net_connections(kind="tcp")
                if c.raddr and c.raddr.port in wanted
            }
        )
        rules = [
            ["OUTPUT", "-m", "cgroup", "--path", self.name, "-p", "tcp", "--dport", str(p)]
            for p in sorted(wanted)
        ]
        rules += [["INPUT", "-p", "tcp", "--dport", str(p)] for p in local]
        for rule in rules:
            subprocess.run(["iptables", "-I", *rule, "-j", "DROP"], check=True)
            self._rules.append(rule)
        return len(local)

    def heal(self) -> None:
        while self._rules:
            rule = self._rules.pop()
            subprocess.run(["iptables", "-D", *rule, "-j", "DROP"], check=False)

    def remove(self) -> None:
        """Heals, and removes the cgroup once no process is left in it."""
        self.heal()
        with contextlib.suppress(OSError):
            self.cgroup.rmdir()
