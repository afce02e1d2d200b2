"""The `loom` command takes its shared options where people type them: before the
subcommand or after it, and `--help` of each subcommand lists the ones that apply."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from controlplane import cli
from tests.support import postgres

ROOT = Path(__file__).resolve().parents[1]


def _loom(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane.cli", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'generated'}", "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--db", "postgresql://h/d", "--nats", "nats://h:1", "--data-dir", "/x"],
        ["--db", "postgresql://h/d", "--nats", "nats://h:1", "--data-dir", "/x", "up"],
        ["--db", "postgresql://h/d", "up", "--nats", "nats://h:1", "--data-dir", "/x"],
    ],
    ids=["after the command", "before the command", "some before and some after"],
)
def test_shared_options_parse_the_same_before_and_after_the_command(argv: list[str]) -> None:
    args = cli._parser().parse_args(argv)
    assert cli._overrides(args) == {
        "data_dir": "/x",
        "database": {"url": "postgresql://h/d"},
        "nats": {"url": "nats://h:1"},
    }


def test_up_trace_names_the_exporter_of_every_service() -> None:
    args = cli._parser().parse_args(["up", "--trace", "file:/tmp/spans.jsonl"])
    assert cli._overrides(args) == {"tracing": {"exporter": "file:/tmp/spans.jsonl"}}


def test_up_refuses_a_trace_target_that_is_neither_a_file_nor_a_url(tmp_path: Path) -> None:
    done = _loom("up", "--trace", "udp://somewhere", "--data-dir", str(tmp_path))
    assert done.returncode == 2
    assert "tracing.exporter" in done.stderr
    assert not (tmp_path / "logs").exists()  # refused before anything started


def test_an_option_given_before_the_command_is_not_reset_by_the_command() -> None:
    args = cli._parser().parse_args(["--db", "sqlite:///a.db", "db", "upgrade"])
    assert args.db == "sqlite:///a.db"


@pytest.mark.parametrize(
    ("command", "listed", "not_listed"),
    [
        (
            ["up"],
            ["--db", "--nats", "--data-dir", "--config", "--hosts", "--hypervisor", "--trace"],
            [],
        ),
        (["agent"], ["--db", "--nats", "--simulate"], ["--hypervisor"]),
        (["gateway"], ["--db", "--nats", "--port"], []),
        (["db", "upgrade"], ["--db", "--data-dir", "--config"], ["--nats"]),
        (["db", "current"], ["--db"], ["--nats"]),
        (["token-rotate"], ["--data-dir", "--config", "--max-active-keys"], ["--db", "--nats"]),
    ],
)
def test_each_commands_help_lists_the_options_that_apply_to_it(
    command: list[str], listed: list[str], not_listed: list[str]
) -> None:
    result = _loom(*command, "--help")
    assert result.returncode == 0, result.stderr
    for option in listed:
        assert option in result.stdout, f"{option} missing from `loom {' '.join(command)} -h`"
    for option in not_listed:
        assert option not in result.stdout


def test_db_upgrade_with_db_after_the_command_migrates_that_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'named.db'}"
    result = _loom("db", "upgrade", "--db", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "named.db").exists()
    assert not (tmp_path / ".loom").exists(), "the default database was used instead"
    current = _loom("db", "current", "--db", url, cwd=tmp_path)
    assert current.stdout.strip() == result.stdout.split()[-1]


def test_db_upgrade_with_db_after_the_command_migrates_that_postgresql_database(
    tmp_path: Path,
) -> None:
    postgres.ensure_postgres_running()
    with postgres.temporary_database() as url:
        before = _loom("db", "current", "--db", url, cwd=tmp_path)
        assert before.stdout.strip() == "(empty)", before.stderr
        result = _loom("db", "upgrade", "--db", url, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        after = _loom("db", "current", "--db", url, cwd=tmp_path)
        assert after.stdout.strip() not in ("", "(empty)")


def test_token_rotate_promotes_the_staged_key_and_keeps_at_most_the_active_keys(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "data" / "fernet-keys"
    first = _loom("token-rotate", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in keys.iterdir()) == ["0", "1"]
    staged = (keys / "0").read_bytes()
    for _ in range(3):
        again = _loom("--data-dir", str(tmp_path / "data"), "token-rotate", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
    assert "key 4" in again.stdout
    assert sorted(p.name for p in keys.iterdir()) == ["0", "3", "4"]
    assert staged not in {(keys / n).read_bytes() for n in ("0", "3", "4")}
    assert all((keys / n).stat().st_mode & 0o777 == 0o600 for n in ("0", "3", "4"))


def test_token_rotate_refuses_when_a_token_secret_replaces_the_repository(tmp_path: Path) -> None:
    config = tmp_path / "loom.toml"
    config.write_text('[gateway]\ntoken_secret = "0123456789abcdef0123"\n')
    result = _loom(
        "token-rotate", "--config", str(config), "--data-dir", str(tmp_path), cwd=tmp_path
    )
    assert result.returncode == 2
    assert "token_secret" in result.stderr
    assert not (tmp_path / "fernet-keys").exists()
