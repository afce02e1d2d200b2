"""The policy matrix generated from the route table: every method of every route (and every
key of the server-action route), for each persona, against the policy the route declares
(`@documented(policy=...)`); then every route naming a project's resource by id, for that
project's member and for a member of another project (404)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from gateway.app import all_routes
from gateway.compute import aggregates, hosts, servers
from gateway.compute import networks as compute_networks
from gateway.network import l3
from gateway.network import versions as network_versions
from gateway.routing import RULES, Policy, doc_of
from tests.gateway.conftest import Cloud
from tests.gateway.full_cloud import full_cloud

PLACEHOLDER = "9b0b3a25-4c9b-4bb5-8f39-5b8d9f6c3f55"
_PARAM = re.compile(r"{([^}:]+)(:[^}]+)?}")
# Placeholders a path parameter's parser accepts (a uuid for every other one), so the
# request reaches the point where the handler looks the target up.
_PLACEHOLDERS = {
    "aggregate_id": "1",
    "migration_id": "1",
    "before_timestamp": "2026-01-01 00:00:00",
    "resource_class": "VCPU",
    "class_name": "default",
    "key": "k",
    "tag": "t",
    "alias": "x",
    "name": "k",
    "network": "n",
    "pattern": "h",
    "host_name": "h",
}
# Compute microversions at which a route or action exists (the newest one elsewhere).
_OLD_COMPUTE = (
    "/compute/v2.1/os-hosts",
    "/compute/v2.1/os-networks",
    "/compute/v2.1/os-tenant-networks",
    "/compute/v2.1/images",
    "/compute/v2.1/os-security-group",
    "/compute/v2.1/os-floating-ip",
)
# A body each action's schema accepts.
ACTION_BODIES: dict[str, Any] = {
    "reboot": {"type": "SOFT"},
    "rebuild": {"imageRef": PLACEHOLDER},
    "os-resetState": {"state": "active"},
    "addSecurityGroup": {"name": "default"},
    "removeSecurityGroup": {"name": "default"},
    "createImage": {"name": "snap"},
    "createBackup": {"name": "nightly", "backup_type": "daily", "rotation": 1},
    "addFloatingIp": {"address": "192.0.2.1"},
    "removeFloatingIp": {"address": "192.0.2.1"},
    "resize": {"flavorRef": "1"},
    "os-migrateLive": {"block_migration": "auto", "host": None},
    "evacuate": {},
    "os-getConsoleOutput": {},
    "os-getVNCConsole": {"type": "novnc"},
}
# Routes whose answer to everyone allowed is 501 by design: Loom does not power its hosts
# on, off or around, nor pre-cache images on an aggregate's hosts.
NOT_IMPLEMENTED = {
    hosts.reboot_host,
    hosts.shutdown_host,
    hosts.startup_host,
    aggregates.cache_images,
}
PERSONAS = ("anonymous", "reader", "member", "admin", "stranger")
# What each persona holds: the role it has on its own project (the stranger is a member
# of another project than the reader's and the member's).
_RANK = {
    "anonymous": "public",
    "reader": "reader",
    "member": "member",
    "admin": "admin",
    "stranger": "member",
}


@dataclass(frozen=True)
class Who:
    token: str
    user_id: str
    project_id: str


@dataclass(frozen=True)
class Case:
    route: Route
    method: str
    action: str
    policy: Policy

    def describe(self) -> str:
        return f"{self.method} {self.route.path}" + (f" [{self.action}]" if self.action else "")


def _routes() -> list[Route]:
    out = []
    for route in all_routes():
        assert isinstance(route, Route), route
        out.append(route)
    return out


def cases() -> Iterator[Case]:
    """Every method of every route, and every action key of an action route."""
    for route in _routes():
        policy = doc_of(route.endpoint).policy
        assert policy is not None, route.path
        for method in sorted((route.methods or set()) - {"HEAD"}):
            if policy.actions:
                for action, rule in sorted(policy.actions.items()):
                    yield Case(route, method, action, rule)
            else:
                yield Case(route, method, "", policy)


def allows(policy: Policy, persona: str) -> bool:
    """Whether the persona's role meets the rule (on its own project)."""
    if policy.rule == "public":
        return True
    if persona == "anonymous":
        return False
    if policy.rule == "authenticated":
        return True
    return RULES.index(_RANK[persona]) >= RULES.index(policy.rule)


def _path(route: Route, values: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        return values.get(name) or _PLACEHOLDERS.get(name, PLACEHOLDER)

    return _PARAM.sub(sub, route.path)


def _version(case: Case) -> str:
    old = (
        case.route.path.startswith(_OLD_COMPUTE)
        or case.route.path.endswith("/os-security-groups")
        or case.action in ("os-getVNCConsole", "addFloatingIp", "removeFloatingIp")
    )
    return "compute 2.1" if old else "compute latest"


def _body(case: Case) -> Any:
    if case.action:
        return {case.action: ACTION_BODIES.get(case.action)}
    return {} if case.method in ("POST", "PUT", "PATCH") else None


async def _send(
    cloud: Cloud, case: Case, who: Who | None, owner: Who | None = None
) -> httpx.Response:
    # An owner rule's parameter names the caller's own project or user (or `owner`'s);
    # every other parameter is a placeholder, so no request changes anything that exists.
    target = owner or who
    values = {}
    if target is not None and case.policy.owner == "project_id":
        values["project_id"] = target.project_id
    if target is not None and case.policy.owner == "user_id":
        values["user_id"] = target.user_id
    headers = {"OpenStack-API-Version": _version(case)}
    if who is not None:
        headers["X-Auth-Token"] = who.token
    return await cloud.client.request(
        case.method, _path(case.route, values), json=_body(case), headers=headers
    )


def verdict(case: Case, persona: str, status: int, allowed: bool) -> str:
    """Empty when the answer fits the policy, else what was wanted."""
    if not allowed:
        wanted = 401 if persona == "anonymous" else 403
        return "" if status == wanted else str(wanted)
    if status in (401, 403):
        return "neither 401 nor 403"
    if status >= 500 and not (status == 501 and case.route.endpoint in NOT_IMPLEMENTED):
        return "no 5xx"
    return ""


async def personas(cloud: Cloud) -> dict[str, Who]:
    await cloud.make_user("rita", "reader", "demo")
    await cloud.make_user("otto", "member", "other")
    tokens = {
        "reader": await cloud.token("rita", project="demo", password="pw-rita"),
        "member": await cloud.token("demo"),
        "admin": await cloud.token("admin"),
        "stranger": await cloud.token("otto", project="other", password="pw-otto"),
    }
    out = {}
    for name, token in tokens.items():
        r = await cloud.client.get(
            "/identity/v3/auth/tokens",
            params={"nocatalog": "1"},
            headers={"X-Auth-Token": token, "X-Subject-Token": token},
        )
        assert r.status_code == 200, r.text
        body = r.json()["token"]
        out[name] = Who(token, body["user"]["id"], body["project"]["id"])
    return out


@pytest.fixture
async def full(pg_url: str, tmp_path: Path) -> AsyncIterator[Cloud]:
    async with full_cloud(pg_url, tmp_path / "data") as cloud:
        yield cloud


async def test_every_route_answers_each_persona_as_its_declared_policy_says(
    full: Cloud,
) -> None:
    cloud = full
    assert set(ACTION_BODIES) <= set(servers.SERVER_ACTION_POLICY.actions)
    who = await personas(cloud)
    mismatches: list[str] = []
    checked = 0
    for case in cases():
        for persona in PERSONAS:
            r = await _send(cloud, case, who.get(persona))
            checked += 1
            wanted = verdict(case, persona, r.status_code, allows(case.policy, persona))
            if wanted:
                mismatches.append(
                    f"{case.describe()} as {persona}: got {r.status_code}, wanted {wanted}"
                    f" ({r.text[:120]})"
                )
        if case.policy.owner:
            # Below admin, naming another project or user is refused, whatever the role.
            for persona in ("reader", "member", "stranger"):
                r = await _send(cloud, case, who[persona], owner=who["admin"])
                checked += 1
                if r.status_code != 403:
                    mismatches.append(
                        f"{case.describe()} as {persona} naming the admin's"
                        f" {case.policy.owner}: got {r.status_code}, wanted 403"
                    )
            r = await _send(cloud, case, who["admin"], owner=who["member"])
            checked += 1
            if verdict(case, "admin", r.status_code, True):
                mismatches.append(
                    f"{case.describe()} as admin naming the member's {case.policy.owner}:"
                    f" got {r.status_code}"
                )
    print(f"\n{checked} route x method x persona cases checked")
    print("\n".join(mismatches))
    assert len(mismatches) == 0, "\n".join(mismatches)


# ------------------------------------------------------------ another project's resources

# The kind of resource a path parameter names, from the collection just before it.
KIND_OF_COLLECTION = {
    "servers": "server",
    "os-server-groups": "server_group",
    "images": "image",
    "networks": "network",
    "os-networks": "network",
    "os-tenant-networks": "network",
    "subnets": "subnet",
    "ports": "port",
    "security-groups": "security_group",
    "security-group-rules": "security_group_rule",
    "os-security-groups": "security_group",
    "os-security-group-rules": "security_group_rule",
    "routers": "router",
    "floatingips": "floatingip",
    "os-floating-ips": "floatingip",
}
# The metadata item every server and image made here carries.
META_KEY = "k"
# Routes that look nothing up: tags are not served (404 to everyone, owner or not), and
# the compute API's os-networks changes are gone (410 to everyone).
NOT_SERVED = {
    network_versions.tags_refused,
    compute_networks.delete_network,
    compute_networks.network_action,
    compute_networks.change_tenant_network,
}
N = "/network/v2.0"
# Bodies the schema accepts for the changes made by id (an empty object elsewhere).
_BODIES: dict[tuple[str, str], Any] = {
    ("PUT", "/compute/v2.1/servers/{server_id}"): {"server": {"name": "renamed"}},
    ("POST", "/compute/v2.1/servers/{server_id}/metadata"): {"metadata": {META_KEY: "w"}},
    ("PUT", "/compute/v2.1/servers/{server_id}/metadata"): {"metadata": {META_KEY: "w"}},
    ("PUT", "/compute/v2.1/servers/{server_id}/metadata/{key}"): {"meta": {META_KEY: "w"}},
    ("POST", "/compute/v2.1/servers/{server_id}/remote-consoles"): {
        "remote_console": {"protocol": "vnc", "type": "novnc"}
    },
    ("POST", "/compute/v2.1/servers/{server_id}/os-interface"): {"interfaceAttachment": {}},
    ("POST", "/compute/v2.1/servers/{server_id}/shares"): {"share": {"share_id": PLACEHOLDER}},
    ("POST", "/compute/v2.1/images/{image_id}/metadata"): {"metadata": {META_KEY: "w"}},
    ("PUT", "/compute/v2.1/images/{image_id}/metadata"): {"metadata": {META_KEY: "w"}},
    ("PUT", "/compute/v2.1/images/{image_id}/metadata/{key}"): {"meta": {META_KEY: "w"}},
    ("PUT", f"{N}/networks/{{id}}"): {"network": {"name": "renamed"}},
    ("PUT", f"{N}/subnets/{{id}}"): {"subnet": {"name": "renamed"}},
    ("PUT", f"{N}/ports/{{id}}"): {"port": {"name": "renamed"}},
    ("PUT", f"{N}/security-groups/{{id}}"): {"security_group": {"name": "renamed"}},
    ("PUT", f"{N}/routers/{{id}}"): {"router": {"name": "renamed"}},
    ("PUT", f"{N}/floatingips/{{id}}"): {"floatingip": {"port_id": None}},
}
# The floating IP actions name one by its address in their body: the server's project's own.
_FLOATING_ACTIONS = ("addFloatingIp", "removeFloatingIp")
# The router interface routes name a subnet in their body: the router's project's own.
_INTERFACES = {l3.add_router_interface, l3.remove_router_interface}


def kinds_named(route: Route) -> list[str] | None:
    """The kinds of resource the route's path parameters name, in order; None when one
    of them is not a resource made here (or the route answers no one)."""
    if route.endpoint in NOT_SERVED:
        return None
    kinds = ["subnet"] if route.endpoint in _INTERFACES else []
    segments = route.path.split("/")
    for i, segment in enumerate(segments):
        m = _PARAM.fullmatch(segment)
        if m is None:
            continue
        if m.group(1) == "key":
            kinds.append("key")
            continue
        kind = KIND_OF_COLLECTION.get(segments[i - 1])
        if kind is None:
            return None
        kinds.append(kind)
    return kinds or None


@dataclass
class Shared:
    """What every project's resources are made from: an image to boot, a network to take
    floating IPs from (both the admin's)."""

    image_id: str
    external_network_id: str


async def _shared(cloud: Cloud, admin: dict[str, str]) -> Shared:
    # The catalog's default flavors are in place once listed.
    assert (await cloud.client.get("/compute/v2.1/flavors", headers=admin)).status_code == 200
    r = await cloud.client.post(
        "/image/v2/images",
        json={"name": "boot", "visibility": "public", "disk_format": "raw"}
        | {"container_format": "bare"},
        headers=admin,
    )
    image_id = r.json()["id"]
    r = await cloud.client.put(
        f"/image/v2/images/{image_id}/file",
        content=b"\0" * 1024,
        headers={**admin, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 204, r.text
    ext = await _made(cloud, admin, f"{N}/networks", "network", {"router:external": True})
    await _made(
        cloud,
        admin,
        f"{N}/subnets",
        "subnet",
        {"network_id": ext, "ip_version": 4, "cidr": "203.0.113.0/24", "enable_dhcp": False},
    )
    return Shared(image_id, ext)


async def _made(cloud: Cloud, h: dict[str, str], path: str, key: str, body: dict[str, Any]) -> str:
    r = await cloud.client.post(path, json={key: {"name": f"{key}-x", **body}}, headers=h)
    assert r.status_code in (201, 202, 200), r.text
    return str(r.json()[key]["id"])


async def resources(
    cloud: Cloud, h: dict[str, str], shared: Shared, kinds: Iterable[str] = ()
) -> dict[str, str]:
    """Resources made by the caller of `h` in its project (each of `kinds`, and what they
    stand on; one of every kind when none is named): kind -> id."""
    wanted = set(kinds) or set(KIND_OF_COLLECTION.values())
    if wanted & {"subnet", "port"}:
        wanted.add("network")
    if "security_group_rule" in wanted:
        wanted.add("security_group")
    made = {"key": META_KEY}
    compute = {**h, "OpenStack-API-Version": "compute 2.90"}
    if "server" in wanted:
        made["server"] = await _made(
            cloud,
            compute,
            "/compute/v2.1/servers",
            "server",
            {
                "flavorRef": "1",
                "imageRef": shared.image_id,
                "networks": "none",
                "metadata": {META_KEY: "v"},
            },
        )
    if "server_group" in wanted:
        made["server_group"] = await _made(
            cloud,
            compute,
            "/compute/v2.1/os-server-groups",
            "server_group",
            {"policy": "affinity"},
        )
    if "image" in wanted:
        # Shared (seen by its owner alone while it has no members) and active, so its
        # members and its deactivation reach it.
        r = await cloud.client.post(
            "/image/v2/images",
            json={"name": "mine", "visibility": "shared", META_KEY: "v"}
            | {"disk_format": "raw", "container_format": "bare"},
            headers=h,
        )
        assert r.status_code == 201, r.text
        made["image"] = r.json()["id"]
        r = await cloud.client.put(
            f"/image/v2/images/{made['image']}/file",
            content=b"\0" * 16,
            headers={**h, "Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 204, r.text
    if "network" in wanted:
        made["network"] = await _made(cloud, h, f"{N}/networks", "network", {})
    if "subnet" in wanted:
        made["subnet"] = await _made(
            cloud,
            h,
            f"{N}/subnets",
            "subnet",
            {"network_id": made["network"], "ip_version": 4, "cidr": "10.0.0.0/24"},
        )
    if "port" in wanted:
        made["port"] = await _made(cloud, h, f"{N}/ports", "port", {"network_id": made["network"]})
    if "security_group" in wanted:
        made["security_group"] = await _made(cloud, h, f"{N}/security-groups", "security_group", {})
    if "security_group_rule" in wanted:
        r = await cloud.client.post(
            f"{N}/security-group-rules",
            json={
                "security_group_rule": {
                    "security_group_id": made["security_group"],
                    "direction": "ingress",
                    "protocol": "tcp",
                    "port_range_min": 22,
                    "port_range_max": 22,
                }
            },
            headers=h,
        )
        assert r.status_code == 201, r.text
        made["security_group_rule"] = r.json()["security_group_rule"]["id"]
    if "router" in wanted:
        made["router"] = await _made(cloud, h, f"{N}/routers", "router", {})
    if "floatingip" in wanted:
        r = await cloud.client.post(
            f"{N}/floatingips",
            json={"floatingip": {"floating_network_id": shared.external_network_id}},
            headers=h,
        )
        assert r.status_code == 201, r.text
        made["floatingip"] = r.json()["floatingip"]["id"]
        made["floatingip_address"] = r.json()["floatingip"]["floating_ip_address"]
    return made


async def _unlimited(cloud: Cloud, admin: dict[str, str], project_id: str) -> None:
    """No quota stops the owner's many resources (one set per change checked)."""
    r = await cloud.client.put(
        f"/compute/v2.1/os-quota-sets/{project_id}",
        json={"quota_set": {"instances": -1, "cores": -1, "ram": -1, "server_groups": -1}},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    limits = ("network", "subnet", "port", "security_group", "security_group_rule", "router")
    r = await cloud.client.put(
        f"{N}/quotas/{project_id}",
        json={"quota": {name: -1 for name in (*limits, "floatingip")}},
        headers=admin,
    )
    assert r.status_code == 200, r.text


async def _by_id(
    cloud: Cloud, case: Case, who: Who, route_kinds: list[str], made: dict[str, str]
) -> httpx.Response:
    ids = iter(made[k] for k in route_kinds if k != "subnet" or "/routers/" not in case.route.path)
    path = _PARAM.sub(lambda m: next(ids), case.route.path)
    headers = {"X-Auth-Token": who.token, "OpenStack-API-Version": _version(case)}
    if case.route.path.startswith("/image/v2") and case.method == "PATCH":
        headers["Content-Type"] = "application/openstack-images-v2.1-json-patch"
        return await cloud.client.patch(path, content=b"[]", headers=headers)
    if case.route.path.endswith("/file") and case.method == "PUT":
        headers["Content-Type"] = "application/octet-stream"
        return await cloud.client.put(path, content=b"\0" * 16, headers=headers)
    body = _BODIES.get((case.method, case.route.path), _body(case))
    if case.action in _FLOATING_ACTIONS and "floatingip_address" in made:
        body = {case.action: {"address": made["floatingip_address"]}}
    if case.route.endpoint in _INTERFACES:
        body = {"subnet_id": made["subnet"]}
    return await cloud.client.request(case.method, path, json=body, headers=headers)


async def test_another_project_s_resources_answer_404_on_every_route_naming_them(
    full: Cloud,
) -> None:
    cloud = full
    who = await personas(cloud)
    admin = {"X-Auth-Token": who["admin"].token}
    member = {"X-Auth-Token": who["member"].token}
    shared = await _shared(cloud, admin)
    await _unlimited(cloud, admin, who["member"].project_id)
    theirs = await resources(cloud, member, shared)
    by_id = [(c, k) for c in cases() if (k := kinds_named(c.route)) is not None]
    # Every kind made is named by some route, and every route naming one is checked.
    assert {k for _, kinds in by_id for k in kinds} == set(theirs) - {"floatingip_address"}
    wrong: list[str] = []
    for case, route_kinds in by_id:
        r = await _by_id(cloud, case, who["stranger"], route_kinds, theirs)
        wanted = 404 if allows(case.policy, "stranger") else 403
        if r.status_code != wanted:
            wrong.append(f"{case.describe()} as stranger: {r.status_code}, wanted {wanted}")
    # The owner's requests reach the resource; each change acts on a set of its own.
    for case, route_kinds in sorted(by_id, key=lambda c: c[0].method != "GET"):
        if not allows(case.policy, "member"):
            continue
        fresh = case.method != "GET"
        kinds = [*route_kinds, *(["floatingip"] if case.action in _FLOATING_ACTIONS else [])]
        made = await resources(cloud, member, shared, kinds) if fresh else theirs
        if case.route.endpoint is l3.remove_router_interface:
            r = await cloud.client.put(
                f"{N}/routers/{made['router']}/add_router_interface",
                json={"subnet_id": made["subnet"]},
                headers=member,
            )
            assert r.status_code == 200, r.text
        r = await _by_id(cloud, case, who["member"], route_kinds, made)
        if r.status_code in (401, 403, 404) or r.status_code >= 500:
            wrong.append(f"{case.describe()} as the owner: {r.status_code} ({r.text[:120]})")
    print(f"\n{len(by_id)} route x method cases naming a resource by id, each for both")
    print("\n".join(wrong))
    assert wrong == []


async def test_a_member_may_not_force_a_server_onto_a_host(cloud: Cloud) -> None:
    h = await cloud.headers(version="2.74")
    server = {"name": "vm", "flavorRef": "1", "imageRef": PLACEHOLDER, "networks": "none"}
    for where in ({"availability_zone": "nova:h1"}, {"host": "h1"}):
        r = await cloud.client.post(
            "/compute/v2.1/servers", json={"server": {**server, **where}}, headers=h
        )
        assert r.status_code == 403, (where, r.text)


async def test_a_server_action_is_refused_by_its_policy_before_its_body_is_read(
    cloud: Cloud,
) -> None:
    await cloud.make_user("rita", "reader", "demo")
    reader = {"X-Auth-Token": await cloud.token("rita", project="demo", password="pw-rita")}
    member = {"X-Auth-Token": await cloud.token("demo")}
    action = f"/compute/v2.1/servers/{PLACEHOLDER}/action"
    refused = [
        (reader, {"resize": {}}),
        (reader, {"os-getConsoleOutput": {"length": "all of it"}}),
        (reader, {"reboot": {"type": "GENTLE"}}),
        (member, {"migrate": {"host": 5}}),
        (member, {"evacuate": {"onSharedStorage": "perhaps"}}),
        (member, {"os-migrateLive": {}}),
        (member, {"os-resetState": {"state": "asleep"}}),
    ]
    for who, body in refused:
        r = await cloud.client.post(action, json=body, headers=who)
        assert r.status_code == 403, (body, r.text)
