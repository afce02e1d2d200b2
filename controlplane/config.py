"""Loom's configuration: defaults, a TOML file, environment variables, explicit overrides.

`load_config` layers them through pydantic-settings; each layer wins over the ones after it:

1. explicit overrides (the `loom` command's flags: ``--db``, ``--data-dir``, ...);
2. environment variables ``LOOM_<SECTION>__<KEY>`` (for example ``LOOM_DATABASE__URL`` or
   ``LOOM_CONDUCTOR__MAX_BUILD_ATTEMPTS``); lists and tables are JSON or TOML values
   (``LOOM_SCHEDULER__FILTERS='["capacity"]'``, ``LOOM_SCHEDULER__WEIGHERS='{ free_ram = 2.0 }'``),
   and a table's entries can be set one by one (``LOOM_SCHEDULER__WEIGHERS__FREE_RAM=2.0``);
3. the TOML file (``--config``);
4. the defaults below.

Values are validated; a bad value, an unknown key (in the file or in a ``LOOM_*`` variable)
or an unreadable file stops the process with a `ConfigError` naming the key. `LoomConfig`
built directly (``LoomConfig()``, ``LoomConfig.model_validate(...)``) holds exactly what it
is given over the defaults and reads neither the environment nor a file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)


class ConfigError(Exception):
    """The configuration is unreadable or invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(_Section):
    # Empty means SQLite in the data directory (the embedded default).
    url: str = ""
    echo: bool = False
    # Connections each process keeps open (and its ceiling: the pool does not overflow).
    # Kept open per process, no overflow. Several services and replicas share one
    # server's max_connections (100 by default), so each keeps a modest pool.
    pool_size: int = Field(default=10, ge=1, le=200)
    # Test each pooled connection with a round trip before handing it out. Off by default:
    # it cost every transaction a SELECT 1 and two autocommit switches. Without it, the
    # first statement on a connection the server dropped (a restart, a failover) fails,
    # the pool discards every connection older than that, and the retry gets a fresh one.
    pool_pre_ping: bool = False
    # Seconds after which a pooled connection is replaced (0 keeps them for good).
    pool_recycle_s: int = Field(default=3600, ge=0)


class NatsConfig(_Section):
    # Empty means: start an embedded nats-server child with JetStream. Several servers (the
    # nodes of a cluster) are comma-separated, "nats://a:4222,nats://b:4222,nats://c:4222":
    # a client connects to one and, when it goes, reconnects to another.
    url: str = ""
    # Copies JetStream keeps of each of Loom's streams (and their consumers): 1 on a single
    # server, 3 on a cluster of three or more (a stream then survives one node lost). Set
    # on every control-plane process alike: each creates or updates the streams at start.
    stream_replicas: int = Field(default=1, ge=1, le=5)
    # File-backed streams fsync every write when True ("sync_interval: always").
    sync_always: bool = True
    # Seconds JetStream remembers message ids for deduplication.
    duplicate_window_s: int = Field(default=600, ge=1)
    # A client pings its server this often, and takes the connection for dead (and
    # reconnects) when this many pings are unanswered: a link that drops packets silently
    # is noticed within about ping_interval_s x max_outstanding_pings, and a reconnect gets
    # through as soon as the link is back, instead of after TCP's retransmission backoff.
    ping_interval_s: float = Field(default=5.0, gt=0, le=300)
    max_outstanding_pings: int = Field(default=3, ge=1, le=100)
    user: str = ""
    password: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # Seconds a consumer's delivery may stay unacked before JetStream redelivers it; 0
    # keeps each consumer's own (30 s for an agent's commands, 60 s for the conductor's).
    # Applies when a durable consumer is created.
    ack_wait_s: float = Field(default=0.0, ge=0, le=3600)
    # Fault injection for chaos scenarios (controlplane/runtime/busfaults.py): every
    # fetched message handled twice, and this fraction of them never acked.
    fault_duplicate: bool = False
    fault_drop_before_ack: float = Field(default=0.0, ge=0, le=1)

    @property
    def servers(self) -> list[str]:
        """The URLs in `url`, in order (empty when it is empty)."""
        return [u.strip() for u in self.url.split(",") if u.strip()]


class TlsConfig(_Section):
    # gRPC TLS; empty paths mean plaintext on loopback.
    ca: str = ""
    cert: str = ""
    key: str = ""
    require_client_auth: bool = True


# The domain services a conductor process can host beside compute (see docs/design.md,
# "Where each domain runs").
HostableDomain = Literal["identity", "image", "catalog", "network"]
HOSTABLE_DOMAINS: tuple[HostableDomain, ...] = ("identity", "image", "catalog", "network")


class ConductorConfig(_Section):
    listen: str = "127.0.0.1:50051"
    # gRPC target of the schedulers; empty means scheduler.listen. For several scheduler
    # processes: "ipv4:HOST:PORT,HOST:PORT" (calls are spread over them round robin, and a
    # scheduler that is gone is skipped).
    scheduler_target: str = ""
    # The domains this conductor serves on its own gRPC port, beside compute. All of them by
    # default (one process, as `loom up`); () when each runs as `loom identity`, `loom
    # image`, `loom catalog` and `loom network` on its own listen address.
    hosted_domains: tuple[HostableDomain, ...] = HOSTABLE_DOMAINS
    max_build_attempts: int = Field(default=3, ge=1, le=20)
    # Seconds a shelved server keeps its host before it is offloaded: 0 offloads at once
    # (as part of the shelve), -1 never (Nova's shelved_offload_time).
    shelved_offload_time: int = Field(default=0, ge=-1)
    # Seconds a deleted server is kept (SOFT_DELETED, powered off, still counted in its
    # project's quota and holding its host's claim) so `restore` can bring it back, before
    # the conductor's reclaim pass deletes it; 0 deletes at once (Nova's
    # reclaim_instance_interval).
    reclaim_instance_interval: int = Field(default=0, ge=0)
    # Seconds without a heartbeat before a host is considered down.
    service_down_time: int = Field(default=60, ge=2)
    # Outbox relay: how many rows one publish batch carries.
    outbox_batch: int = Field(default=256, ge=1)
    # Batches of schedule messages one conductor places at once (see SchedulingWorker.run).
    # On the 2-core benchmark machine 1 did better than 2 (fewer, larger batches).
    scheduling_lanes: int = Field(default=1, ge=1, le=16)
    # Upper bound on list page sizes (Nova's max_limit).
    max_limit: int = Field(default=1000, ge=1)
    # Nova's defaults for new projects; -1 is unlimited.
    default_quota_instances: int = 10
    default_quota_cores: int = 20
    default_quota_ram: int = 51200
    default_quota_key_pairs: int = 100
    default_quota_metadata_items: int = 128
    default_quota_server_groups: int = 10
    default_quota_server_group_members: int = 10
    # Moves (resize, cold migration): whether a resize may land on the host it leaves
    # (Nova's allow_resize_to_same_host, default false), and after how many seconds a
    # moved server waiting in VERIFY_RESIZE is confirmed by the conductor (Nova's
    # resize_confirm_window; 0 = never).
    allow_resize_to_same_host: bool = False
    resize_confirm_window: int = Field(default=0, ge=0)


class DomainServiceConfig(_Section):
    """A domain service run as a process of its own (`loom identity`, ...): where it serves
    gRPC. Unused while the conductor hosts the domain."""

    listen: str


class IdentityConfig(DomainServiceConfig):
    listen: str = "127.0.0.1:50053"


class ImageConfig(DomainServiceConfig):
    listen: str = "127.0.0.1:50054"
    # The most projects one shared image is offered to, and the most tags one image
    # carries (Glance's image_member_quota and image_tag_quota); past them, 413.
    member_limit: int = Field(default=128, ge=0)
    tag_limit: int = Field(default=128, ge=0)


class CatalogConfig(DomainServiceConfig):
    listen: str = "127.0.0.1:50055"


class NetworkConfig(DomainServiceConfig):
    listen: str = "127.0.0.1:50056"
    # "Get me a network" (server create with networks "auto" in a project that sees no
    # network): the project's network gets one subnet of this size from this pool, the
    # first that overlaps none of the project's other subnets.
    auto_allocate_pool: str = "10.128.0.0/9"
    auto_allocate_prefixlen: int = Field(default=24, ge=8, le=29)
    # The host whose agent serves every router: its namespace, the NAT of its gateway and
    # floating IPs (one L3 host, as a single network node). Empty: no router can have a
    # gateway and no floating IP can be associated. `loom up` names its first host.
    l3_host: str = ""


class SchedulerConfig(_Section):
    listen: str = "127.0.0.1:50052"
    # Filters run in this order; names come from the filter registry. The request's own
    # constraints run whether named or not: requested_hosts (added first), same_host,
    # different_host and server_group (added last), since the API accepted them.
    filters: tuple[str, ...] = (
        "enabled_and_up",
        "availability_zone",
        "same_host",
        "different_host",
        "aggregate_multitenancy_isolation",
        "aggregate_image_properties_isolation",
        "aggregate_instance_extra_specs",
        "capacity",
        "server_group",
    )
    # Weighers and their multipliers; names come from the weigher registry.
    weighers: dict[str, float] = Field(default_factory=lambda: {"free_ram": 1.0})
    num_alternates: int = Field(default=2, ge=0, le=20)
    # Pick randomly among this many best hosts, so concurrent schedulers collide less.
    host_subset_size: int = Field(default=1, ge=1)
    cpu_allocation_ratio: float = Field(default=16.0, gt=0)
    ram_allocation_ratio: float = Field(default=1.5, gt=0)
    disk_allocation_ratio: float = Field(default=1.0, gt=0)
    # Compute hosts are down when silent this long (or forced down). The scheduler owns
    # host liveness; the conductor reads it from the scheduler (docs/design.md).
    service_down_time: int = Field(default=60, ge=2)
    # The zone of hosts in no aggregate with availability_zone metadata.
    default_availability_zone: str = Field(default="nova", min_length=1, max_length=255)


class AgentConfig(_Section):
    # libvirt URI; test:/// builds a per-host node XML under the data directory.
    libvirt_uri: str = "test:///default"
    # Host name of a single agent; empty means the machine's hostname.
    host: str = ""
    # gRPC ComputeService listen address; port 0 picks a free port.
    listen: str = "127.0.0.1:0"
    # gRPC target of the conductors (the fleet view an agent reconciles against); empty
    # means conductor.listen. Same forms as gateway.conductor_target.
    conductor_target: str = ""
    heartbeat_interval: float = Field(default=10.0, gt=0)
    # Seconds each pull request for the host's commands stays open on the server. An idle
    # host sends one pull request per expiry; nothing waits it out: agents pull afresh at
    # once after a NATS reconnect, and stopping cancels the open pull request.
    command_pull_expiry: float = Field(default=30.0, gt=0)
    # Simulated host size (test:/// only).
    sim_vcpus: int = Field(default=32, ge=1)
    sim_memory_mb: int = Field(default=131072, ge=256)
    sim_disk_gb: int = Field(default=2048, ge=1)
    # Seconds each call that changes a domain (build, start, stop, reboot, delete...)
    # takes in a simulated host's hypervisor, as a slow real one's (test:/// only; 0: at
    # once). Chaos scenarios use it to show that heartbeats never wait behind hypervisor
    # calls (R4) and to kill an agent while a call is in progress (R2).
    sim_hypervisor_latency_s: float = Field(default=0.0, ge=0, le=3600)
    reserved_host_memory_mb: int = Field(default=512, ge=0)
    reserved_host_disk_gb: int = Field(default=0, ge=0)
    availability_zone: str = ""
    # Seconds a graceful shutdown may take before the domain is destroyed.
    shutdown_timeout: int = Field(default=60, ge=0)
    power_sync_interval: float = Field(default=10.0, gt=0)
    # Where images and guest disks live (real hypervisors).
    instances_path: str = ""
    image_cache_max_age_s: int = Field(default=86400, ge=0)
    # Seconds between image cache prunes (unused images older than the max age go).
    image_cache_prune_interval_s: float = Field(default=600.0, gt=0)
    vnc_listen: str = "127.0.0.1"
    # kvm or qemu (TCG) for real hypervisors; auto decides by probing (see nodeagent).
    virt_type: Literal["auto", "qemu", "kvm"] = "auto"
    # The image service's base URL (Image v2 under /v2); empty reads the shared data
    # directory's image store, <data_dir>/images/<id>, instead.
    image_url: str = ""
    # A file holding the X-Auth-Token for the image service, read on every download
    # so a rotated token needs no restart. Empty sends no token.
    image_token_file: str = ""
    # The network data plane (nodeagent/network, docs/networking.md): bridges, VXLAN, taps,
    # DHCP, metadata and security groups for instances' ports. Off, ports are only
    # described in the domain XML; a real host then refuses to build an instance with ports.
    # Simulated (test:///) hosts always skip the data plane, on or off, and log so.
    # `loom up --hypervisor qemu` turns it on unless it is set to false here (its VTEP:
    # network_local_ip, else the default route's source address, else 127.0.0.1).
    network_dataplane: bool = False
    # This host's VTEP address and the device VXLAN leaves by (empty: routing decides).
    network_local_ip: str = ""
    network_underlay_device: str = ""
    # The VTEP addresses of the other hosts: each network floods to all of them.
    network_vxlan_peers: list[str] = Field(default_factory=list)
    # Where DHCP state (hosts, options, leases, pid files) lives; empty: <data_dir>/network.
    network_state_dir: str = ""


# The longest a token may live: revocations are kept this long (controlplane/identity).
MAX_TOKEN_TTL_S = 7 * 24 * 3600


class GatewayConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8774, ge=0, le=65535)
    # gRPC target of the conductors; empty means conductor.listen. For several conductor
    # processes: "ipv4:HOST:PORT,HOST:PORT" (calls are spread over them round robin).
    conductor_target: str = ""
    # gRPC targets of the identity, image, catalog and network services; empty means the conductor's
    # target while the conductor hosts that domain (conductor.hosted_domains), else the
    # domain's own listen address (identity.listen, ...). Same forms as conductor_target.
    identity_target: str = ""
    image_target: str = ""
    catalog_target: str = ""
    network_target: str = ""
    # gRPC target of the schedulers (host aggregates); empty means scheduler.listen.
    scheduler_target: str = ""
    # Public base URL for links and the catalog; empty derives it from host and port.
    public_url: str = ""
    # Identity tokens are Fernet tokens (as Keystone's). Their keys live in a key
    # repository: a directory of numbered key files (the highest signs, all verify; see
    # gateway/auth/keys.py), rotated with `loom token-rotate`. Empty means
    # <data_dir>/fernet-keys, created with one key on first use.
    fernet_key_repository: str = ""
    # Instead of the repository: one fixed key derived from this secret (16 bytes or
    # more), so gateways given the same secret accept each other's tokens. No rotation:
    # changing it ends every live token. Not together with fernet_key_repository.
    token_secret: str = ""
    token_ttl_s: int = Field(default=3600, ge=60, le=MAX_TOKEN_TTL_S)
    # Request bodies past this many bytes get 413 before any of it is parsed (112 KiB, as
    # OpenStack's APIs default to). Image data uploads stream and are not bounded by it.
    max_request_body_bytes: int = Field(default=114688, ge=1024)
    console_token_ttl_s: int = Field(default=600, ge=10)
    # Origins (scheme://host[:port]) whose pages may open the console proxy's websocket,
    # besides the gateway's own public URL.
    console_allowed_origins: tuple[str, ...] = ()
    # Where Debian's novnc package puts the noVNC web client.
    novnc_dir: str = "/usr/share/novnc"
    region: str = "RegionOne"

    @field_validator("token_secret")
    @classmethod
    def _secret_long_enough(cls, v: str) -> str:
        if v and len(v.encode()) < 16:
            raise ValueError("must be at least 16 bytes (or empty: use the key repository)")
        return v

    @model_validator(mode="after")
    def _one_key_source(self) -> GatewayConfig:
        if self.token_secret and self.fernet_key_repository:
            raise ValueError(
                "token_secret and fernet_key_repository are exclusive: set one of them"
            )
        return self


# Where each service serves /metrics unless told otherwise: distinct ports, so every service
# of one machine (`loom up`, or one of each started by hand) can listen at once.
DEFAULT_METRICS_LISTEN: dict[str, str] = {
    "conductor": "127.0.0.1:9181",
    "scheduler": "127.0.0.1:9182",
    "agent": "127.0.0.1:9183",
    "gateway": "127.0.0.1:9184",
    "identity": "127.0.0.1:9185",
    "image": "127.0.0.1:9186",
    "catalog": "127.0.0.1:9187",
    "network": "127.0.0.1:9188",
}
# A service named nowhere above or in the configuration takes a free port (it logs which).
FALLBACK_METRICS_LISTEN = "127.0.0.1:0"


class MetricsConfig(_Section):
    # HOST:PORT of each service's Prometheus endpoint (/metrics), by service name, over
    # DEFAULT_METRICS_LISTEN: LOOM_METRICS__LISTEN__CONDUCTOR=0.0.0.0:9181. Port 0 picks a
    # free port (logged); "" turns the endpoint off.
    listen: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_METRICS_LISTEN))
    # Time every gRPC call Loom makes (loom_grpc_client_handling_seconds), besides the ones
    # it serves.
    grpc_client_latency: bool = True

    @field_validator("listen", mode="before")
    @classmethod
    def _over_defaults(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        for service, listen in v.items():
            if listen and not _is_host_port(str(listen)):
                raise ValueError(f"{service}: {listen!r} is not HOST:PORT")
        return {**DEFAULT_METRICS_LISTEN, **v}

    def listen_for(self, service: str) -> str:
        return self.listen.get(service, FALLBACK_METRICS_LISTEN)


def _is_host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep and host) and port.isdigit() and 0 <= int(port) <= 65535


class TracingConfig(_Section):
    # Where spans go: "" (off: no tracer, no interceptors, nothing on the boot path),
    # "file:PATH" (JSON lines, one span a line, appended by every process; see
    # controlplane/runtime/tracing.py) or an OTLP/HTTP collector URL (http[s]://HOST:PORT,
    # spans posted to its /v1/traces unless the URL names that path itself).
    exporter: str = ""
    # Each process's spans carry service.name = prefix + its service (loom-conductor, ...).
    service_name_prefix: str = "loom-"
    # Share of traces recorded (the root decides; children follow their parent's choice).
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)

    @field_validator("exporter")
    @classmethod
    def _known_exporter(cls, v: str) -> str:
        v = v.strip()
        if not v:
            return v
        if v.startswith("file:"):
            if not v[len("file:") :].strip():
                raise ValueError("file: needs a path (file:/var/log/loom/spans.jsonl)")
            return v
        scheme, sep, rest = v.partition("://")
        if sep and scheme in ("http", "https") and rest.split("/", 1)[0]:
            return v
        raise ValueError("must be empty (off), file:PATH or an OTLP/HTTP URL (http[s]://HOST:PORT)")


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


_ENV_PREFIX = "LOOM_"
_ENV_DELIMITER = "__"


@dataclass(frozen=True)
class _Layers:
    toml_file: Path | None
    environ: Mapping[str, str]


# What the load_config call in progress layers under its overrides. pydantic-settings picks
# sources in a classmethod that takes no per-call arguments, so they travel in a context
# variable, which leaves LoomConfig built anywhere else reading nothing.
_layers: ContextVar[_Layers | None] = ContextVar("loom_config_layers", default=None)


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source, over a given mapping instead of os.environ.

    Two additions: lists and tables may be TOML values as well as JSON, and a LOOM_* variable
    that names no setting is an error (pydantic-settings looks up the names of fields only and
    skips every other variable, so a misspelt section would be silently lost).
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls, case_sensitive=False)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # case_sensitive=False: pydantic-settings matches lower-cased names.
        return {name.lower(): value for name, value in self._environ.items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)  # type: ignore[arg-type]
        except ValueError:
            pass
        try:
            return tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            return value  # validation refuses it, naming the key

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        prefix = self.env_prefix.lower()
        unknown = [
            name.upper()
            for name in self.env_vars
            if name.startswith(prefix) and not self._names_a_setting(name[len(prefix) :])
        ]
        if unknown:
            raise SettingsError(f"{', '.join(sorted(unknown))}: no such setting")
        return values

    def _names_a_setting(self, name: str) -> bool:
        head, *rest = name.split(_ENV_DELIMITER)
        field = self.settings_cls.model_fields.get(head)
        # Keys under a section are checked by the section (extra="forbid"); a plain value
        # such as data_dir has none.
        return field is not None and (not rest or self.field_is_complex(field))


class LoomConfig(BaseSettings):
    """The whole configuration, immutable. `load_config` reads it; built directly, it holds
    the arguments over the defaults and nothing else."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix=_ENV_PREFIX,
        env_nested_delimiter=_ENV_DELIMITER,
        # Keys in the file and in overrides are exact, as in the sections; only variable
        # names are matched case-insensitively (see _Environment).
        case_sensitive=True,
    )

    data_dir: str = ".loom"
    # Where each process also writes its SQL statement count as a file, for benchmarks
    # (the same counter /metrics serves as loom_sql_statements_total); empty: off.
    stats_dir: str = ""
    database: DatabaseConfig = DatabaseConfig()
    nats: NatsConfig = NatsConfig()
    tls: TlsConfig = TlsConfig()
    conductor: ConductorConfig = ConductorConfig()
    identity: IdentityConfig = IdentityConfig()
    image: ImageConfig = ImageConfig()
    catalog: CatalogConfig = CatalogConfig()
    network: NetworkConfig = NetworkConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    agent: AgentConfig = AgentConfig()
    gateway: GatewayConfig = GatewayConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()

    @field_validator("data_dir")
    @classmethod
    def _data_dir_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        layers = _layers.get()
        if layers is None:
            # Built directly: the arguments over the defaults, whatever the process environment.
            return (init_settings,)
        # Highest priority first: explicit overrides, LOOM_* variables, the file.
        sources: tuple[PydanticBaseSettingsSource, ...] = (
            init_settings,
            _Environment(settings_cls, layers.environ),
        )
        if layers.toml_file is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=layers.toml_file),)
        return sources

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    def domain_target(self, domain: HostableDomain | Literal["compute"]) -> str:
        """Where a client reaches one domain's gRPC services: the gateway's setting for it,
        else the conductor while it hosts the domain, else the domain's own listen address."""
        conductor = self.gateway.conductor_target or self.conductor.listen
        if domain == "compute":
            return conductor
        explicit = getattr(self.gateway, f"{domain}_target")
        if explicit:
            return str(explicit)
        if domain in self.conductor.hosted_domains:
            return conductor
        return str(getattr(self, domain).listen)

    @property
    def database_url(self) -> str:
        """The async SQLAlchemy URL: SQLite in the data directory unless configured."""
        return async_database_url(self.database.url or f"sqlite:///{self.data_path / 'loom.db'}")


def async_database_url(url: str) -> str:
    """Maps plain URLs to the async drivers Loom uses (psycopg 3, aiosqlite)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///") or url == "sqlite://":
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    return url


def sync_database_url(url: str) -> str:
    """The same database through a synchronous driver (for Alembic)."""
    return url.replace("+aiosqlite", "").replace("postgresql+psycopg_async", "postgresql+psycopg")


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> LoomConfig:
    """Reads the TOML file (if any), applies LOOM_* variables (from `environ`, by default the
    process environment), then explicit overrides; raises ConfigError naming the bad key."""
    toml_file = None if path is None else Path(path)
    # pydantic-settings skips a file that is not there; Loom asked for it, so it is an error.
    if toml_file is not None and not toml_file.exists():
        raise ConfigError(f"config file {toml_file} does not exist")
    if toml_file is not None and not toml_file.is_file():
        raise ConfigError(f"config file {toml_file} is not a file")
    token = _layers.set(_Layers(toml_file, os.environ if environ is None else environ))
    try:
        return LoomConfig(**(overrides or {}))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {toml_file} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {toml_file} is unreadable: {exc.strerror}") from exc
    except SettingsError as exc:
        detail = f"{exc}: {exc.__cause__}" if exc.__cause__ else str(exc)
        raise ConfigError(f"invalid configuration: {detail}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
    finally:
        _layers.reset(token)
