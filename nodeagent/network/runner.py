"""Runs the host's network commands (ip, bridge, iptables), optionally in a namespace.

Every part of the data plane takes a `Runner`, so one agent process can drive the host
itself or, in tests, a network namespace standing in for a host.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any


class CommandError(RuntimeError):
    """A command failed; the message names it and carries the end of its stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)} exited {returncode}: {stderr.strip()[-300:]}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class Runner:
    """Runs argv on the host, or inside network namespace `netns` when it is set."""

    netns: str = ""

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    def run(self, argv: list[str], *, check: bool = True, stdin: str | None = None) -> str:
        full = self.argv(argv)
        try:
            proc = subprocess.run(
                full, input=stdin, capture_output=True, text=True, check=False, timeout=60
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandError(full, -1, "timed out after 60 s") from exc
        if check and proc.returncode != 0:
            raise CommandError(full, proc.returncode, proc.stderr)
        return proc.stdout

    def ok(self, argv: list[str]) -> bool:
        """True when argv exits 0 (used for existence checks such as `iptables -C`)."""
        full = self.argv(argv)
        try:
            done = subprocess.run(full, capture_output=True, check=False, timeout=60)
        except subprocess.TimeoutExpired as exc:
            raise CommandError(full, -1, "timed out after 60 s") from exc
        return done.returncode == 0

    def links(self) -> list[dict[str, Any]]:
        """`ip -d link show` as parsed JSON: one dict per link of the namespace."""
        out = self.run(["ip", "-j", "-d", "link", "show"])
        links: list[dict[str, Any]] = json.loads(out or "[]")
        return links

    def link_exists(self, name: str) -> bool:
        return self.ok(["ip", "link", "show", "dev", name])
