"""Real-guest tests skip where libvirtd is absent on a workstation, and fail in CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.libvirtd import require_libvirtd


def _nowhere(tmp_path: Path) -> str:
    return f"qemu+unix:///system?socket={tmp_path}/no-such-socket"


def test_in_ci_an_unreachable_libvirtd_fails_the_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="may not skip"):
        require_libvirtd(_nowhere(tmp_path))


def test_outside_ci_an_unreachable_libvirtd_skips_the_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not reachable"):
        require_libvirtd(_nowhere(tmp_path))


def test_a_reachable_libvirtd_lets_the_test_run() -> None:
    require_libvirtd()  # CI and make services start it; a skip or fail here is the answer.
