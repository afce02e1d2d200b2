"""Configuration: defaults, a TOML file, LOOM_* variables and overrides, each layer over
the one below it, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from controlplane.config import ConfigError, LoomConfig, async_database_url, load_config


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
        ({"LOOM_TRACING__EXPORTER": "jaeger"}, "tracing.exporter"),
        ({"LOOM_TRACING__EXPORTER": "file:"}, "tracing.exporter"),
        ({"LOOM_TRACING__EXPORTER": "grpc://collector:4317"}, "tracing.exporter"),
        ({"LOOM_TRACING__EXPORTER": "http://"}, "tracing.exporter"),
        ({"LOOM_TRACING__SAMPLE_RATIO": "1.5"}, "tracing.sample_ratio"),
    ],
)
def test_a_bad_value_is_refused_with_the_key_named(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(environ=environ)


def test_tracing_is_off_unless_an_exporter_is_named() -> None:
    assert load_config(environ={}).tracing.exporter == ""


@pytest.mark.parametrize(
    "exporter",
    [
        "file:/var/log/loom/spans.jsonl",
        "file:spans.jsonl",
        "http://127.0.0.1:4318",
        "https://otel.example:4318/v1/traces",
    ],
)
def test_a_span_file_or_an_otlp_http_url_is_accepted_as_the_exporter(exporter: str) -> None:
    cfg = load_config(environ={"LOOM_TRACING__EXPORTER": exporter})
    assert cfg.tracing.exporter == exporter


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_plain_database_urls_map_to_the_async_drivers() -> None:
    assert async_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert async_database_url("sqlite:////x/y.db") == "sqlite+aiosqlite:////x/y.db"


def _file(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "loom.toml"
    f.write_text(text)
    return f


@pytest.mark.parametrize(
    ("in_file", "in_env", "in_overrides", "expected"),
    [
        (False, False, False, 3),
        (True, False, False, 5),
        (True, True, False, 7),
        (True, True, True, 9),
        (False, False, True, 9),
    ],
    ids=[
        "the default when nothing sets it",
        "the file over the default",
        "the environment over the file",
        "an explicit override over the environment",
        "an explicit override over the default",
    ],
)
def test_each_layer_wins_over_the_ones_below_it(
    tmp_path: Path, in_file: bool, in_env: bool, in_overrides: bool, expected: int
) -> None:
    f = _file(tmp_path, "[conductor]\nmax_build_attempts = 5\n")
    cfg = load_config(
        f if in_file else None,
        environ={"LOOM_CONDUCTOR__MAX_BUILD_ATTEMPTS": "7"} if in_env else {},
        overrides={"conductor": {"max_build_attempts": 9}} if in_overrides else None,
    )
    assert cfg.conductor.max_build_attempts == expected


def test_layers_merge_key_by_key_within_a_section(tmp_path: Path) -> None:
    f = _file(tmp_path, "[conductor]\nmax_build_attempts = 5\nservice_down_time = 30\n")
    cfg = load_config(
        f,
        environ={"LOOM_CONDUCTOR__MAX_BUILD_ATTEMPTS": "7", "LOOM_CONDUCTOR__OUTBOX_BATCH": "64"},
        overrides={"conductor": {"max_limit": 50}},
    )
    assert cfg.conductor.service_down_time == 30
    assert cfg.conductor.max_build_attempts == 7
    assert cfg.conductor.outbox_batch == 64
    assert cfg.conductor.max_limit == 50
    assert cfg.conductor.listen == "127.0.0.1:50051"


@pytest.mark.parametrize(
    ("environ", "weighers"),
    [
        ({"LOOM_SCHEDULER__WEIGHERS": '{"free_ram": 2.0}'}, {"free_ram": 2.0}),
        ({"LOOM_SCHEDULER__WEIGHERS": "{ free_ram = 2.0 }"}, {"free_ram": 2.0}),
        (
            {"LOOM_SCHEDULER__WEIGHERS__FREE_RAM": "2.0", "LOOM_SCHEDULER__WEIGHERS__IO": "-1"},
            {"free_ram": 2.0, "io": -1.0},
        ),
        (
            {"LOOM_SCHEDULER__WEIGHERS": '{"free_ram": 2.0}', "LOOM_SCHEDULER__WEIGHERS__IO": "3"},
            {"free_ram": 2.0, "io": 3.0},
        ),
    ],
    ids=[
        "a JSON table",
        "a TOML table",
        "one variable per entry",
        "a table and an entry of its own",
    ],
)
def test_a_table_comes_from_the_environment(
    environ: dict[str, str], weighers: dict[str, float]
) -> None:
    assert load_config(environ=environ).scheduler.weighers == weighers


def test_a_list_comes_from_the_environment_as_json_or_toml() -> None:
    json_list = load_config(environ={"LOOM_SCHEDULER__FILTERS": '["capacity", "server_group"]'})
    toml_list = load_config(environ={"LOOM_SCHEDULER__FILTERS": "['capacity', 'server_group']"})
    assert (
        json_list.scheduler.filters == toml_list.scheduler.filters == ("capacity", "server_group")
    )


def test_variable_names_are_matched_whatever_their_case() -> None:
    cfg = load_config(environ={"loom_Conductor__Max_Build_Attempts": "4"})
    assert cfg.conductor.max_build_attempts == 4


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("LOOM_CONDUCTOR__MAX_BUILD_ATEMPTS", "conductor.max_build_atempts"),
        ("LOOM_CONDUCTR__MAX_BUILD_ATTEMPTS", "LOOM_CONDUCTR__MAX_BUILD_ATTEMPTS"),
        ("LOOM_DATADIR", "LOOM_DATADIR"),
        ("LOOM_DATA_DIR__PATH", "LOOM_DATA_DIR__PATH"),
    ],
    ids=[
        "a misspelt key in a section",
        "a misspelt section",
        "a misspelt top-level key",
        "a key under a plain value",
    ],
)
def test_a_variable_that_names_no_setting_is_refused(name: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(environ={name: "5"})


def test_variables_without_the_loom_prefix_are_not_read() -> None:
    cfg = load_config(environ={"CONDUCTOR__MAX_BUILD_ATTEMPTS": "zero", "HOME": "/root"})
    assert cfg.conductor.max_build_attempts == 3


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[conductr]\nmax_build_attempts = 5\n", "conductr"),
        ("[conductor]\nmax_build_atempts = 5\n", "conductor.max_build_atempts"),
        ("[conductor]\nmax_build_attempts = 0\n", "conductor.max_build_attempts"),
    ],
    ids=["an unknown section", "an unknown key", "a value out of range"],
)
def test_a_bad_file_is_refused_with_the_key_named(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(_file(tmp_path, text), environ={})


def test_a_file_that_is_not_toml_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(_file(tmp_path, "[conductor\n"), environ={})


def test_a_directory_given_as_the_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        load_config(tmp_path, environ={})


def test_the_process_environment_is_read_unless_a_mapping_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOOM_CONDUCTOR__MAX_BUILD_ATTEMPTS", "11")
    assert load_config().conductor.max_build_attempts == 11
    assert load_config(environ={}).conductor.max_build_attempts == 3


def test_a_config_built_directly_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_CONDUCTOR__MAX_BUILD_ATTEMPTS", "11")
    monkeypatch.setenv("LOOM_NO_SUCH_SECTION__KEY", "1")
    assert LoomConfig().conductor.max_build_attempts == 3
    assert LoomConfig.model_validate({}).conductor.max_build_attempts == 3
    assert LoomConfig(data_dir="/x").data_dir == "/x"


def test_the_config_is_immutable() -> None:
    cfg = load_config(environ={})
    with pytest.raises(ValidationError, match="frozen"):
        cfg.data_dir = "/elsewhere"
    with pytest.raises(ValidationError, match="frozen"):
        cfg.conductor.max_build_attempts = 5


def test_each_service_has_its_own_metrics_port_and_one_override_keeps_the_others() -> None:
    defaults = load_config(environ={}).metrics
    services = (
        "conductor",
        "scheduler",
        "agent",
        "gateway",
        "identity",
        "image",
        "catalog",
        "network",
    )
    ports = {defaults.listen_for(s) for s in services}
    assert len(ports) == len(services)
    cfg = load_config(environ={"LOOM_METRICS__LISTEN__CONDUCTOR": "0.0.0.0:9999"}).metrics
    assert cfg.listen_for("conductor") == "0.0.0.0:9999"
    assert cfg.listen_for("scheduler") == defaults.listen_for("scheduler")
    # A service named nowhere takes a free port until it is given one.
    assert cfg.listen_for("no-such-service") == "127.0.0.1:0"
    assert (
        load_config(environ={"LOOM_METRICS__LISTEN__AGENT": ""}).metrics.listen_for("agent") == ""
    )


def test_a_metrics_address_that_is_not_host_and_port_is_refused_naming_the_service() -> None:
    with pytest.raises(ConfigError, match=r"metrics.listen.*gateway"):
        load_config(environ={"LOOM_METRICS__LISTEN__GATEWAY": "9184"})


def test_an_empty_variable_sets_an_empty_value_rather_than_failing_as_toml() -> None:
    # "" was taken for the start of a TOML list or table ("" is in any string).
    assert load_config(environ={"LOOM_NATS__URL": ""}).nats.url == ""


def test_the_gateway_reaches_each_domain_through_the_conductor_while_it_hosts_them() -> None:
    cfg = load_config(environ={"LOOM_CONDUCTOR__LISTEN": "10.0.0.1:1"})
    for domain in ("compute", "identity", "image", "catalog", "network"):
        assert cfg.domain_target(domain) == "10.0.0.1:1", domain


def test_a_domain_the_conductor_does_not_host_is_reached_on_its_own_listen_address() -> None:
    cfg = load_config(
        environ={
            "LOOM_CONDUCTOR__HOSTED_DOMAINS": '["catalog"]',
            "LOOM_IDENTITY__LISTEN": "10.0.0.2:2",
            "LOOM_GATEWAY__IMAGE_TARGET": "ipv4:10.0.0.3:3,10.0.0.4:3",
        }
    )
    assert cfg.domain_target("identity") == "10.0.0.2:2"
    # An explicit gateway target wins, whoever hosts the domain.
    assert cfg.domain_target("image") == "ipv4:10.0.0.3:3,10.0.0.4:3"
    assert cfg.domain_target("catalog") == cfg.conductor.listen
    assert cfg.domain_target("network") == "127.0.0.1:50056"


def test_a_domain_the_conductor_cannot_host_is_refused() -> None:
    with pytest.raises(ConfigError, match="hosted_domains"):
        load_config(environ={"LOOM_CONDUCTOR__HOSTED_DOMAINS": '["scheduler"]'})
