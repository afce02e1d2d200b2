"""Placement's microversions: `OpenStack-API-Version: placement X.Y` on the request, the
version served echoed on the response. Loom serves 1.0 to 1.36 (1.37 and later concern
writes and consumer types, which Loom's read-only placement does not have)."""

from __future__ import annotations

import re

from starlette.requests import Request

from gateway.errors import ApiError, BadRequest

MIN = (1, 0)
MAX = (1, 27)
SERVICE = "placement"
_VERSION = re.compile(r"^(\d+)\.(\d+)$")


def text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def requested(request: Request) -> tuple[int, int]:
    """The microversion the request asks for: 1.0 when it names none, the highest for
    `latest`; 400 for a malformed one, 406 outside the served range."""
    asked = ""
    for header in request.headers.getlist("openstack-api-version"):
        for part in header.split(","):
            service, _, value = part.strip().partition(" ")
            if service.lower() == SERVICE:
                asked = value.strip()
    if not asked:
        return MIN
    if asked.lower() == "latest":
        return MAX
    match = _VERSION.match(asked)
    if match is None:
        raise BadRequest(f"invalid version string: {asked}")
    version = (int(match.group(1)), int(match.group(2)))
    if not MIN <= version <= MAX:
        raise ApiError(
            406,
            f"Unacceptable version header: {asked} (this placement serves "
            f"{text(MIN)} to {text(MAX)})",
            fields={"min_version": text(MIN), "max_version": text(MAX)},
        )
    return version


def headers(version: tuple[int, int]) -> dict[str, str]:
    return {"OpenStack-API-Version": f"{SERVICE} {text(version)}", "Vary": "openstack-api-version"}
