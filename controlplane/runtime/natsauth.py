"""NATS users for Loom's own parts: the control plane may use every subject; an agent only
its own hosts' subjects (docs/design.md, "Authenticated wires").

An agent's user may:
- consume its hosts' commands: create, read and pull from the durable consumer
  `agent-<host>` of LOOM_COMPUTE, and ack its messages;
- publish its hosts' instance events, inventory and heartbeats;
- read the streams' configuration (it waits for them; it cannot create or change them);
- receive replies on its own inbox prefix only (`_INBOX_<user>.>`), and the advisory that
  its hosts' consumers have a new leader (on a cluster).
It cannot publish another host's commands or events, nor read another host's consumer.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.runtime import bus


def inbox_prefix(user: str) -> str:
    """The reply-subject prefix a user's connection uses (bus.connect sets it) and alone may
    subscribe to."""
    return f"_INBOX_{user}"


def agent_permissions(user: str, hosts: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """The publish and subscribe allow-lists of an agent process serving `hosts`."""
    stream = bus.COMPUTE_STREAM
    publish = ["$JS.API.INFO"]
    publish += [
        f"$JS.API.STREAM.INFO.{name}"
        for name in (
            bus.COMPUTE_STREAM,
            bus.CONDUCTOR_STREAM,
            bus.EVENTS_STREAM,
            bus.INVENTORY_STREAM,
        )
    ]
    # Consumer lag for the agent's /metrics (names and pending counts, no messages).
    publish += [f"$JS.API.CONSUMER.LIST.{stream}", f"$JS.API.CONSUMER.NAMES.{stream}"]
    for host in hosts:
        durable = f"agent-{host}"
        publish += [
            bus.instance_event_subject(host),
            bus.inventory_subject(host),
            bus.heartbeat_subject(host),
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
            f"$JS.ACK.{stream}.{durable}.>",
        ]
    # On a cluster, a new leader of the host's consumer means its pull request is gone.
    subscribe = [f"{inbox_prefix(user)}.>"]
    subscribe += [bus.consumer_leader_elected_subject(stream, f"agent-{host}") for host in hosts]
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": subscribe},
    }


@dataclass
class NatsUser:
    name: str
    password: str
    # None: every subject (the control plane's own processes).
    permissions: dict[str, dict[str, list[str]]] | None = field(default=None)


def authorization_block(users: Iterable[NatsUser]) -> str:
    """The `authorization { users = [...] }` block of nats-server's configuration. Values are
    written as JSON strings, which nats-server's configuration format reads as they are."""
    entries = []
    for user in users:
        entry = f"    {{user: {json.dumps(user.name)}, password: {json.dumps(user.password)}"
        if user.permissions is not None:
            entry += f", permissions: {json.dumps(user.permissions)}"
        entries.append(entry + "}")
    return "authorization {\n  users = [\n" + ",\n".join(entries) + "\n  ]\n}"


def password_for(directory: Path, user: str) -> str:
    """The user's password, made on first use and kept in `directory/<user>` (mode 0600), so
    restarts of nats-server and of the user's process agree."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / user
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password
