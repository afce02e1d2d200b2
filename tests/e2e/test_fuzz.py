"""Schemathesis, against a running Loom (gateway, conductor, scheduler, agents) over HTTP
as a tenant's tools would reach it: generated requests for every operation of
/openapi.json (compute, image, identity, network and the console proxy's pages) must never get a
5xx, no answer over a size limit (tests/e2e/fuzz_checks.py) and no traceback in any
service's log. `make fuzz` runs the same with at least 10,000 cases."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from controlplane.seedfile import load_or_create
from controlplane.servicetoken import password_auth
from tests.support.stack import ROOT, Stack

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
# Examples per operation: about 25 times the number of operations in all.
EXAMPLES = int(os.environ.get("LOOM_FUZZ_EXAMPLES", "25"))


def _admin_token(cloud: Stack) -> str:
    seeded = load_or_create(cloud.data_dir).user("admin")
    assert seeded is not None
    body = password_auth("admin", seeded.password, seeded.project)
    r = httpx.post(f"{cloud.gateway_url}/identity/v3/auth/tokens", json=body, timeout=10)
    assert r.status_code == 201, r.text
    return r.headers["x-subject-token"]


# make fuzz's 10,000 cases take several minutes on two cores.
@pytest.mark.timeout(1800)
def test_generated_requests_to_every_operation_never_get_a_server_error(
    cloud: Stack, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{cloud.gateway_url}/openapi.json",
            "--header",
            f"X-Auth-Token: {_admin_token(cloud)}",
            "--checks",
            "not_a_server_error,response_within_size_limit",
            "--max-examples",
            str(EXAMPLES),
            "--phases",
            "examples,fuzzing",
            "--seed",
            "20261206",
            "--suppress-health-check",
            "all",
            "--no-color",
            # os-hosts' power actions answer 501 by design (Loom does not power hosts),
            # as Nova's API does with the libvirt driver: not a failure to find.
            "--exclude-path-regex",
            "/os-hosts/[^/]+/(reboot|shutdown|startup)$",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.e2e.fuzz_checks", "PYTHONPATH": str(ROOT)},
    )
    out = result.stdout + result.stderr
    generated = re.search(r"(\d+) generated", out)
    assert generated, out[-3000:]
    print(f"\nschemathesis: {generated.group(0)} cases")
    assert int(generated.group(1)) >= 10 * EXAMPLES, out[-3000:]
    # What a failure was about is in the services' logs (schemathesis' own report may be
    # longer than an assertion shows).
    tracebacks = [
        f"{log.name}: {line[:2000]}"
        for log in sorted(cloud.data_dir.glob("*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if "Traceback" in line
    ]
    assert result.returncode == 0, "\n".join(tracebacks)[:4000] + out[-4000:]
    assert "Server error" not in out
    assert tracebacks == []
