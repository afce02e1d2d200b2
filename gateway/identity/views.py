"""Keystone v3 response shapes: projects, users, roles, assignments, tokens, catalog."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from loom.identity.v1 import identity_pb2

from gateway.auth.tokens import TokenClaims

DEFAULT_DOMAIN = {"id": "default", "name": "Default"}
IDENTITY_VERSION = "v3.14"
UPDATED = "2020-04-07T00:00:00Z"


def version_doc(base: str) -> dict[str, Any]:
    return {
        "id": IDENTITY_VERSION,
        "status": "stable",
        "updated": UPDATED,
        "links": [{"rel": "self", "href": f"{base}/identity/v3/"}],
        "media-types": [
            {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
        ],
    }


def domain(base: str) -> dict[str, Any]:
    return {
        "id": "default",
        "name": "Default",
        "description": "The default domain",
        "enabled": True,
        "tags": [],
        "options": {},
        "links": {"self": f"{base}/identity/v3/domains/default"},
    }


def project(p: identity_pb2.Project, base: str) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "domain_id": p.domain_id or "default",
        "description": p.description,
        "enabled": p.enabled,
        "parent_id": p.domain_id or "default",
        "is_domain": False,
        "tags": [],
        "options": {},
        "links": {"self": f"{base}/identity/v3/projects/{p.id}"},
    }


def user(u: identity_pb2.User, base: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": u.id,
        "name": u.name,
        "domain_id": u.domain_id or "default",
        "enabled": u.enabled,
        "password_expires_at": None,
        "options": {},
        "links": {"self": f"{base}/identity/v3/users/{u.id}"},
    }
    if u.default_project_id:
        body["default_project_id"] = u.default_project_id
    if u.email:
        body["email"] = u.email
    if u.description:
        body["description"] = u.description
    return body


def role(r: identity_pb2.Role, base: str) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "domain_id": None,
        "description": None,
        "options": {},
        "links": {"self": f"{base}/identity/v3/roles/{r.id}"},
    }


def assignment(a: identity_pb2.RoleAssignment, base: str, include_names: bool) -> dict[str, Any]:
    role_ref: dict[str, Any] = {"id": a.role_id}
    if include_names:
        role_ref["name"] = a.role_name
    return {
        "role": role_ref,
        "user": {"id": a.user_id},
        "scope": {"project": {"id": a.project_id}},
        "links": {
            "assignment": f"{base}/identity/v3/projects/{a.project_id}/users/{a.user_id}"
            f"/roles/{a.role_id}"
        },
    }


def _endpoints(url: str, region: str) -> list[dict[str, Any]]:
    # Stable ids (derived from url and interface) so clients that cache them stay valid.
    return [
        {
            "id": uuid.uuid5(uuid.NAMESPACE_URL, f"{iface}:{url}").hex,
            "interface": iface,
            "region": region,
            "region_id": region,
            "url": url,
        }
        for iface in ("public", "internal", "admin")
    ]


def catalog(base: str, region: str) -> list[dict[str, Any]]:
    services = (
        ("identity", "keystone", f"{base}/identity"),
        ("compute", "nova", f"{base}/compute/v2.1"),
        ("image", "glance", f"{base}/image"),
        ("placement", "placement", f"{base}/placement"),
    )
    return [
        {
            "id": uuid.uuid5(uuid.NAMESPACE_URL, f"service:{kind}:{base}").hex,
            "type": kind,
            "name": name,
            "endpoints": _endpoints(url, region),
        }
        for kind, name, url in services
    ]


def token(
    claims: TokenClaims,
    base: str,
    region: str,
    *,
    user_name: str,
    project_name: str,
    roles: Sequence[tuple[str, str]],
    with_catalog: bool,
) -> dict[str, Any]:
    """A token's body. Names and role ids are not in the token: the caller passes them
    (known when issuing, looked up when validating); `roles` are (id, name) pairs."""
    body: dict[str, Any] = {
        "methods": list(claims.methods),
        "user": {
            "id": claims.user_id,
            "name": user_name,
            "domain": dict(DEFAULT_DOMAIN),
            "password_expires_at": None,
        },
        "audit_ids": [claims.audit_id],
        "expires_at": claims.expires_at,
        "issued_at": claims.issued_at,
    }
    if claims.project_id:
        body["project"] = {
            "id": claims.project_id,
            "name": project_name,
            "domain": dict(DEFAULT_DOMAIN),
        }
        body["is_domain"] = False
        body["roles"] = [{"id": rid, "name": name} for rid, name in roles]
        if with_catalog:
            body["catalog"] = catalog(base, region)
    return {"token": body}
