"""The `loom` command: every service, the all-in-one launcher and database upgrades."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from controlplane.config import HOSTABLE_DOMAINS, ConfigError, LoomConfig, load_config
from controlplane.runtime import tracing
from controlplane.runtime.callers import IDENTITIES
from controlplane.runtime.lifecycle import exit_with_parent, install_stop_signals
from controlplane.runtime.logs import setup_logging
from controlplane.runtime.metrics import MetricsListenError
from controlplane.runtime.process import start_process_metrics

log = logging.getLogger("loom")

# Each long-running service module offers `async def serve(cfg, stop, **options)`:
# it runs until `stop` is set, logs one "ready" line once serving, then shuts down cleanly.
SERVICES = {
    "conductor": "controlplane.conductor.service",
    "identity": "controlplane.identity.service",
    "image": "controlplane.image.service",
    "catalog": "controlplane.catalog.service",
    "network": "controlplane.network.service",
    "scheduler": "controlplane.scheduler.service",
    "agent": "nodeagent.service",
    "gateway": "gateway.service",
}


def _add_common(p: argparse.ArgumentParser, *, nats: bool, top: bool) -> None:
    """The options every command shares. They are accepted before the command and after it
    (`loom --db URL up` and `loom up --db URL`); below the top level their default is
    "absent", so a value given before the command is never reset to None after it."""
    default = None if top else argparse.SUPPRESS
    p.add_argument(
        "--config",
        default=default,
        help="TOML configuration file (LOOM_* variables override it)",
    )
    p.add_argument("--data-dir", default=default, help="data directory (default ./.loom)")
    p.add_argument(
        "--db", default=default, help="database URL (default: SQLite in the data directory)"
    )
    if nats:
        p.add_argument(
            "--nats", default=default, help="NATS URL (default for `up`: an embedded nats-server)"
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loom", description="Loom cloud fabric controller")
    _add_common(p, nats=True, top=True)
    p.add_argument(
        "--exit-with-parent",
        type=int,
        metavar="PID",
        help="end when the supervisor PID (this process's parent) ends; `loom up` sets it",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, *, nats: bool = True) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        _add_common(parser, nats=nats, top=False)
        return parser

    up = command("up", "run every service, all-in-one, in the foreground")
    up.add_argument("--hosts", type=int, default=3, help="simulated hypervisor hosts")
    up.add_argument("--port", type=int, default=None, help="gateway port (default 8774)")
    up.add_argument(
        "--hypervisor",
        choices=["test", "qemu"],
        default="test",
        help="test: simulated hosts on libvirt test:///; qemu: real guests on qemu:///system",
    )
    up.add_argument(
        "--trace",
        metavar="TARGET",
        default=None,
        help="record OpenTelemetry spans of every service: file:PATH (JSON lines) or an "
        "OTLP/HTTP collector URL (http://HOST:4318); sets tracing.exporter",
    )
    up.add_argument(
        "--split-domains",
        action="store_true",
        help="run identity, image, catalog and network as processes of their own (as in "
        "production) instead of inside the conductor",
    )

    command("conductor", "run the conductor (and the domains in conductor.hosted_domains)")
    for domain in HOSTABLE_DOMAINS:
        command(
            domain,
            f"run the {domain} service alone, on {domain}.listen (for a conductor that does "
            "not host it: conductor.hosted_domains)",
            nats=False,
        )
    command("scheduler", "run the scheduler")
    agent = command("agent", "run a node agent (or a simulated fleet of them)")
    agent.add_argument("--simulate", type=int, default=0, help="run N simulated hosts")
    agent.add_argument("--host-prefix", default="sim", help="name prefix of simulated hosts")
    gw = command("gateway", "run the REST gateway")
    gw.add_argument("--port", type=int, default=None, help="listen port (default 8774)")

    prep = sub.add_parser(
        "prepare-host",
        help="make this machine ready for real QEMU guests: /dev/kvm, virtlogd, libvirtd",
        description="Gives /dev/kvm to libvirt's QEMU user and starts virtlogd and libvirtd "
        "when they are not running (as root); says plainly what it cannot fix. Exits 1 "
        "unless libvirtd answers with nothing left to fix. `loom up --hypervisor qemu` and "
        "`make services` do the same.",
    )
    prep.add_argument("--uri", default="qemu:///system", help="libvirt URI to check")

    certs_cmd = sub.add_parser(
        "certs",
        help="make the CA and the certificates of Loom's identities for mutual TLS",
        description="Makes (or keeps) a private CA and one certificate per Loom identity in "
        "DIR, for mutual TLS between Loom's own parts: each service authorises its callers "
        "by their certificate's identity. Idempotent: a certificate is reissued only when "
        "missing, expiring within 30 days or lacking a --host. Copy ca.pem and each "
        "identity's .pem and .key to the machine that runs it, and set tls.ca, tls.cert "
        "and tls.key there. `loom up` makes its own under <data_dir>/tls.",
    )
    for option, text in (("--config", "TOML configuration file"), ("--data-dir", "data directory")):
        certs_cmd.add_argument(option, default=argparse.SUPPRESS, help=text)
    certs_cmd.add_argument(
        "--dir", default=None, help="where the files go (default <data_dir>/tls)"
    )
    certs_cmd.add_argument(
        "--host",
        action="append",
        default=[],
        help="a host name or address the certificates are valid for, besides localhost and "
        "the loopback addresses (repeat it; give every address a service listens on)",
    )
    certs_cmd.add_argument(
        "identities",
        nargs="*",
        metavar="IDENTITY",
        help=f"identities to certify (default: all: {', '.join(IDENTITIES)})",
    )

    rotate = sub.add_parser(
        "token-rotate",
        help="rotate the identity token keys: the staged key signs from now on",
        description="Promotes the staged key (0) of the Fernet key repository "
        "(gateway.fernet_key_repository, default <data_dir>/fernet-keys) to primary, stages "
        "a new key and removes the oldest keys beyond --max-active-keys. Tokens signed by a "
        "removed key stop validating. With several gateways, copy the repository to each "
        "after every rotation; gateways see the change without a restart.",
    )
    for option, text in (("--config", "TOML configuration file"), ("--data-dir", "data directory")):
        rotate.add_argument(option, default=argparse.SUPPRESS, help=text)
    rotate.add_argument(
        "--max-active-keys",
        type=int,
        default=3,
        help="keys kept, staged and primary included (default 3: tokens survive one rotation)",
    )

    nats_conf = sub.add_parser(
        "nats-config",
        help="print the nats-server configuration of one node of a JetStream cluster",
        description="Prints (to stdout) the configuration of one nats-server node of a "
        "JetStream cluster for Loom: server_name, client and route listen addresses, "
        "routes to the other nodes (authenticated with one route password), JetStream "
        "storing under --store-dir with sync_interval: always, and Loom's NATS users "
        "(conductor, scheduler, and agent limited to --agent-host's subjects). Passwords "
        "are made on first use in --secrets-dir (0600): run it once per node with the same "
        "directory (copy it to each node's machine), and give each Loom process its user's "
        "password (nats.user, nats.password). Run nats-server -c FILE on each node.",
    )
    nats_conf.add_argument("--name", required=True, help="this node's server_name (unique)")
    nats_conf.add_argument(
        "--host", default="127.0.0.1", help="address this node listens on (clients and routes)"
    )
    nats_conf.add_argument("--port", type=int, default=4222, help="client port (default 4222)")
    nats_conf.add_argument(
        "--cluster-port", type=int, default=6222, help="route port (default 6222)"
    )
    nats_conf.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="another node's route address (repeat it for every other node)",
    )
    nats_conf.add_argument("--store-dir", required=True, help="JetStream's store directory")
    nats_conf.add_argument(
        "--secrets-dir", required=True, help="where the route and user passwords are kept"
    )
    nats_conf.add_argument(
        "--agent-host",
        action="append",
        default=[],
        metavar="HOST",
        help="a compute host whose subjects the agent user may use (repeat it)",
    )
    nats_conf.add_argument(
        "--monitor-port", type=int, default=8222, help="/healthz and /varz port (0: off)"
    )

    db = command("db", "database schema", nats=False)
    dbsub = db.add_subparsers(dest="db_command", required=True)
    for name, help_text in (
        ("upgrade", "apply the migrations (idempotent)"),
        ("current", "print the applied revision"),
    ):
        db_command = dbsub.add_parser(name, help=help_text, description=help_text)
        _add_common(db_command, nats=False, top=False)
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    over: dict[str, Any] = {}
    if args.data_dir:
        over["data_dir"] = args.data_dir
    if args.db:
        over.setdefault("database", {})["url"] = args.db
    if args.nats:
        over.setdefault("nats", {})["url"] = args.nats
    if getattr(args, "port", None) is not None:
        over.setdefault("gateway", {})["port"] = args.port
    if getattr(args, "trace", None) is not None:
        over.setdefault("tracing", {})["exporter"] = args.trace
    return over


def _run_service(cfg: LoomConfig, name: str, options: dict[str, Any]) -> int:
    try:
        start_process_metrics(cfg, name)
    except MetricsListenError as exc:
        print(f"loom: {exc}", file=sys.stderr)
        return 2
    # Before the service module is imported and makes its channels and servers: they
    # install the tracing interceptors only when tracing is on.
    tracing.setup(cfg.tracing, name)
    module = importlib.import_module(SERVICES[name])
    serve: Callable[..., Awaitable[None]] = module.serve

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await serve(cfg, stop, **options)

    # uvloop: every service is an event loop full of small socket reads and writes
    # (psycopg, NATS, gRPC, HTTP); its loop does them with less Python per operation.
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    finally:
        tracing.shutdown()  # the spans still buffered
    return 0


def _prepare_host(uri: str) -> int:
    from nodeagent.hostprep import prepare_qemu_host

    report = prepare_qemu_host(uri)
    for line in report.changed:
        print(f"loom: {line}")
    for line in report.problems:
        print(f"loom: {line}", file=sys.stderr)
    if report.libvirtd_reachable:
        print(f"loom: libvirtd answers at {uri}")
    return 0 if report.ready else 1


def _rotate_token_keys(cfg: LoomConfig, max_active_keys: int) -> int:
    from gateway.auth.keys import KeyRepository, repository_path

    if cfg.gateway.token_secret:
        print(
            "loom: gateway.token_secret is set: tokens use the one key derived from it; "
            "unset it to use a key repository, which rotates",
            file=sys.stderr,
        )
        return 2
    if max_active_keys < 2:
        print("loom: --max-active-keys must be at least 2", file=sys.stderr)
        return 2
    repo = KeyRepository(repository_path(cfg.gateway, cfg.data_path))
    primary = repo.rotate(max_active_keys)
    print(f"loom: key {primary} of {repo.path} is the primary; keys now {repo.indices()}")
    return 0


def _make_certs(cfg: LoomConfig, directory: str | None, hosts: list[str], names: list[str]) -> int:
    from controlplane.runtime.certs import CertError, issue

    target = Path(directory) if directory else cfg.data_path / "tls"
    try:
        for name in names or IDENTITIES:
            files = issue(target, name, tuple(hosts))
            print(f"{name}: tls.ca = {files.ca}, tls.cert = {files.cert}, tls.key = {files.key}")
    except CertError as exc:
        print(f"loom: {exc}", file=sys.stderr)
        return 2
    return 0


def _route(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"--route {value!r} is not HOST:PORT")
    return host, int(port)


def _nats_config(args: argparse.Namespace) -> int:
    from controlplane.runtime import natsauth
    from controlplane.runtime.natsserver import ClusterNode, Route, server_config

    try:
        routes = tuple(Route(*_route(r)) for r in args.route)
    except ValueError as exc:
        print(f"loom: {exc}", file=sys.stderr)
        return 2
    if not routes:
        print("loom: a cluster node needs --route for every other node", file=sys.stderr)
        return 2
    secrets = Path(args.secrets_dir)
    node = ClusterNode(
        server_name=args.name,
        cluster_port=args.cluster_port,
        routes=routes,
        host=args.host,
        route_password=natsauth.password_for(secrets, "route"),
    )
    users = [
        natsauth.NatsUser(name, natsauth.password_for(secrets, name))
        for name in ("conductor", "scheduler")
    ]
    users.append(
        natsauth.NatsUser(
            "agent",
            natsauth.password_for(secrets, "agent"),
            natsauth.agent_permissions("agent", args.agent_host),
        )
    )
    print(
        server_config(
            Path(args.store_dir),
            args.port,
            monitor_port=args.monitor_port,
            authorization=natsauth.authorization_block(users),
            cluster=node,
        ),
        end="",
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.exit_with_parent is not None:
        exit_with_parent(args.exit_with_parent)
    if args.command == "prepare-host":
        return _prepare_host(args.uri)
    if args.command == "nats-config":
        return _nats_config(args)
    try:
        cfg = load_config(args.config, overrides=_overrides(args))
    except ConfigError as exc:
        print(f"loom: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.logging.level, cfg.logging.format)

    if args.command == "db":
        from controlplane.db import migrate

        if not cfg.database.url:
            # The default database is a file in the data directory; a named one needs none.
            cfg.data_path.mkdir(parents=True, exist_ok=True)
        if args.db_command == "upgrade":
            migrate.upgrade(cfg.database_url)
            print(f"database at revision {migrate.current(cfg.database_url)}")
        else:
            print(migrate.current(cfg.database_url) or "(empty)")
        return 0
    if args.command == "certs":
        return _make_certs(cfg, args.dir, args.host, args.identities)
    if args.command == "token-rotate":
        return _rotate_token_keys(cfg, args.max_active_keys)
    if args.command == "up":
        from controlplane.allinone import run_all_in_one

        return int(
            run_all_in_one(
                cfg,
                hosts=args.hosts,
                hypervisor=args.hypervisor,
                split_domains=args.split_domains,
            )
        )
    if args.command == "agent":
        return _run_service(
            cfg, "agent", {"simulate": args.simulate, "host_prefix": args.host_prefix}
        )
    return _run_service(cfg, args.command, {})


if __name__ == "__main__":
    sys.exit(main())
