"""A service started with `--exit-with-parent` ends with its supervisor, even one killed
outright, and a supervisor that died before the child got going is noticed at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]

# A supervisor that starts a child by vfork (no preexec_fn), as `loom up` does; the child
# calls exit_with_parent(supervisor's pid) and says so. The supervisor prints the child's
# pid, then sleeps until it is killed.
SUPERVISOR = textwrap.dedent(
    """
    import os, subprocess, sys, time
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from controlplane.runtime.lifecycle import exit_with_parent; "
         "exit_with_parent(int(sys.argv[1])); print('armed', flush=True); time.sleep(600)",
         str(os.getpid())],
        stdout=sys.stdout,
    )
    print(child.pid, flush=True)
    time.sleep(600)
    """
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'generated'}"
    return env


def test_a_child_that_exits_with_its_parent_ends_when_the_parent_is_killed_outright() -> None:
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert supervisor.stdout is not None
    child_pid = int(supervisor.stdout.readline())
    assert supervisor.stdout.readline().strip() == "armed"
    child = psutil.Process(child_pid)
    assert child.is_running()
    supervisor.kill()
    supervisor.wait()
    _, alive = psutil.wait_procs([child], timeout=30)
    assert alive == [], "the child outlived its supervisor"
    supervisor.stdout.close()


def test_a_loom_command_whose_supervisor_is_already_gone_ends_before_doing_anything() -> None:
    # Our parent is not pid 1, so naming pid 1 as the supervisor is a supervisor that died.
    proc = subprocess.run(
        [sys.executable, "-m", "controlplane.cli", "--exit-with-parent", "1", "db", "current"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -15, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
