"""Configuration: TOML, LOOM_* overrides, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.config import ConfigError, async_database_url, load_config


def test_defaults_need_nothing_and_point_at_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    cfg = load_config(environ={}, overrides={"data_dir": str(tmp_path)})
    assert cfg.database_url == f"sqlite+aiosqlite:///{tmp_path / 'loom.db'}"
    assert cfg.conductor.max_build_attempts == 3
    assert cfg.scheduler.cpu_allocation_ratio == 16.0
    assert cfg.agent.command_pull_expiry == 30.0


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    f = tmp_path / "loom.toml"
    f.write_text('[conductor]\nmax_build_attempts = 5\n[scheduler]\nfilters = ["capacity"]\n')
    cfg = load_config(
        f,
        environ={
            "LOOM_CONDUCTOR__MAX_BUILD_ATTEMPTS": "7",
            "LOOM_SCHEDULER__WEIGHERS": "{ free_ram = -1.0 }",
        },
    )
    assert cfg.conductor.max_build_attempts == 7
    assert cfg.scheduler.filters == ("capacity",)
    assert cfg.scheduler.weighers == {"free_ram": -1.0}


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"LOOM_CONDUCTOR__MAX_BUILD_ATTEMPTS": "zero"}, "conductor.max_build_attempts"),
        ({"LOOM_GATEWAY__PORT": "70000"}, "gateway.port"),
        ({"LOOM_CONDUCTOR__NO_SUCH_KEY": "1"}, "conductor.no_such_key"),
        ({"LOOM_LOGGING__LEVEL": "LOUD"}, "logging.level"),
        ({"LOOM_AGENT__COMMAND_PULL_EXPIRY": "0"}, "agent.command_pull_expiry"),
    ],
)
def test_a_bad_value_is_refused_with_the_key_named(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(environ=environ)


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_plain_database_urls_map_to_the_async_drivers() -> None:
    assert async_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert async_database_url("sqlite:////x/y.db") == "sqlite+aiosqlite:////x/y.db"


def test_each_service_has_its_own_metrics_port_and_one_override_keeps_the_others() -> None:
    defaults = load_config(environ={}).metrics
    ports = {defaults.listen_for(s) for s in ("conductor", "scheduler", "agent", "gateway")}
    assert len(ports) == 4
    cfg = load_config(environ={"LOOM_METRICS__LISTEN__CONDUCTOR": "0.0.0.0:9999"}).metrics
    assert cfg.listen_for("conductor") == "0.0.0.0:9999"
    assert cfg.listen_for("scheduler") == defaults.listen_for("scheduler")
    # A service split out later takes a free port until it is given one.
    assert cfg.listen_for("identity") == "127.0.0.1:0"
    assert (
        load_config(environ={"LOOM_METRICS__LISTEN__AGENT": ""}).metrics.listen_for("agent") == ""
    )


def test_a_metrics_address_that_is_not_host_and_port_is_refused_naming_the_service() -> None:
    with pytest.raises(ConfigError, match=r"metrics.listen.*gateway"):
        load_config(environ={"LOOM_METRICS__LISTEN__GATEWAY": "9184"})


def test_an_empty_variable_sets_an_empty_value_rather_than_failing_as_toml() -> None:
    # "" was taken for the start of a TOML list or table ("" is in any string).
    assert load_config(environ={"LOOM_NATS__URL": ""}).nats.url == ""
