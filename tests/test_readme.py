"""Every shell block in README.md works as printed, run as a newcomer would run it: in a fresh
copy of this checkout, with `make run` started there as the quick start says.

A block is run unless the comment line just above it says otherwise:

- `<!-- readme-test: loom-up -->`: run while the copy's `make run` is serving;
- `<!-- readme-test: skip REASON -->`: not run here; pytest lists it as skipped, with REASON.

Unmarked blocks run in that same copy too, in README order (they may use its `.venv`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.runtime.natsserver import free_port
from tests.support import polling

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_MARKER = re.compile(r"^<!-- readme-test: (?P<kind>[a-z-]+)(?: (?P<reason>.+?))? -->$")
_READY_WITHIN_S = 600.0  # a fresh copy installs its own venv first
_BLOCK_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    kind: str  # "run", "loom-up" or "skip"
    reason: str
    script: str

    @property
    def id(self) -> str:
        first = next((c for c in self.script.splitlines() if c.strip()), "")
        return f"line{self.line}:{first[:50]}"


def readme_blocks(text: str) -> list[Block]:
    """The ```sh blocks of `text`, each with the marker on the line above it (if any)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```sh":
            i += 1
            continue
        start = i
        end = start + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"README.md:{start + 1}: a ```sh block is never closed")
        above = lines[start - 1].strip() if start > 0 else ""
        kind, reason = "run", ""
        if above.startswith("<!-- readme-test"):
            found = _MARKER.match(above)
            if not found or found["kind"] not in ("loom-up", "skip"):
                raise ValueError(f"README.md:{start}: unknown readme-test marker {above!r}")
            kind, reason = found["kind"], found["reason"] or ""
            if kind == "skip" and not reason:
                raise ValueError(f"README.md:{start}: a skipped block must say why")
        blocks.append(Block(start + 1, kind, reason, "\n".join(lines[start + 1 : end]) + "\n"))
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text())


def _checkout_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def _clean_env(**extra: str) -> dict[str, str]:
    """What a newcomer's root shell has: no Loom settings, no venv, no OpenStack variables."""
    dropped = ("LOOM_", "OS_", "VIRTUAL_ENV", "PYTHONPATH", "PYTEST_", "UV_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env.update(extra)
    return env


@dataclass(frozen=True)
class Served:
    copy: Path
    url: str
    ready: str


@pytest.fixture(scope="module")
def served_copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A copy of this checkout (what git would commit, edits included), where `make run` has
    installed everything from scratch and is serving on a free port."""
    copy = tmp_path_factory.mktemp("readme") / "loom"
    for name in _checkout_files():
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    port = free_port()
    log_path = copy.parent / "make-run.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            ["make", "run"],
            cwd=copy,
            env=_clean_env(LOOM_GATEWAY__PORT=str(port)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ready = ""
    try:

        def ready_line() -> str:
            if proc.poll() is not None:
                return "(exited)"
            found = [x for x in log_path.read_text().splitlines() if x.startswith("Loom is ready")]
            return found[0] if found else ""

        try:
            ready = polling.wait_until(ready_line, _READY_WITHIN_S, "`make run` ready", every=0.5)
        except AssertionError:
            ready = ""
        if not ready.startswith("Loom is ready"):
            pytest.fail(f"`make run` printed no ready line:\n{log_path.read_text()[-4000:]}")
        yield Served(copy, f"http://127.0.0.1:{port}", ready)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _run_block(block: Block, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.script],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=_BLOCK_TIMEOUT_S,
        check=False,
    )


def test_the_readme_has_blocks_that_run_against_a_served_loom() -> None:
    kinds = {b.kind for b in BLOCKS}
    assert "loom-up" in kinds, "the quick start's boot is no longer tested"
    assert "run" in kinds


def test_a_marker_without_a_known_kind_or_a_skip_without_a_reason_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown readme-test marker"):
        readme_blocks("<!-- readme-test: sometimes -->\n```sh\ntrue\n```\n")
    with pytest.raises(ValueError, match="must say why"):
        readme_blocks("<!-- readme-test: skip -->\n```sh\ntrue\n```\n")
    (block,) = readme_blocks("<!-- readme-test: skip it serves -->\n```sh\nmake run\n```\n")
    assert (block.kind, block.reason, block.line) == ("skip", "it serves", 2)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_a_readme_shell_block_works_as_printed(
    block: Block, request: pytest.FixtureRequest
) -> None:
    if block.kind == "skip":
        pytest.skip(f"README.md:{block.line}: {block.reason}")
    served: Served = request.getfixturevalue("served_copy")
    result = _run_block(block, served.copy)
    assert result.returncode == 0, (
        f"README.md:{block.line} failed ({result.returncode}):\n{block.script}\n"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )
