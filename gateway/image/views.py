"""Glance v2 image bodies: the core fields plus free-form properties at the top level."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from loom.image.v1 import images_pb2

# Fields Glance computes or owns; a client may not set them.
READ_ONLY = frozenset(
    {
        "id",
        "status",
        "size",
        "virtual_size",
        "checksum",
        "os_hash_algo",
        "os_hash_value",
        "created_at",
        "updated_at",
        "self",
        "file",
        "schema",
        "locations",
        "direct_url",
        "deleted",
        "deleted_at",
        "location",
    }
)
# Core attributes a client may set; anything else is a string property.
CORE = frozenset(
    {
        "name",
        "visibility",
        "protected",
        "min_disk",
        "min_ram",
        "disk_format",
        "container_format",
        "tags",
        "owner",
    }
)


def time(ts: Any) -> str:
    """A timestamp as Glance writes it (UTC, seconds, Z)."""
    return str(ts.ToDatetime(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def image(i: images_pb2.Image) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": i.id,
        "name": i.name or None,
        "status": i.status,
        "visibility": i.visibility,
        "protected": i.protected,
        "os_hidden": False,
        "owner": i.owner or None,
        "disk_format": i.disk_format or None,
        "container_format": i.container_format or None,
        "size": i.size if i.status == "active" else None,
        "virtual_size": i.virtual_size or None,
        "checksum": i.checksum or None,
        "os_hash_algo": i.os_hash_algo or None,
        "os_hash_value": i.os_hash_value or None,
        "min_disk": i.min_disk,
        "min_ram": i.min_ram,
        "tags": list(i.tags),
        "created_at": time(i.created_at),
        "updated_at": time(i.updated_at),
        "self": f"/v2/images/{i.id}",
        "file": f"/v2/images/{i.id}/file",
        "schema": "/v2/schemas/image",
    }
    for key, value in i.properties.items():
        body.setdefault(key, value)
    return body
