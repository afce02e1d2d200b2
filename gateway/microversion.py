"""Compute microversions: parsing the request headers and comparing versions.

Clients send `OpenStack-API-Version: compute 2.53` (or the legacy
`X-OpenStack-Nova-API-Version: 2.53`); "latest" means the newest Loom honours and no
header means 2.1. A version outside [MIN, MAX] is a 406; a malformed one is a 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, total_ordering

_VERSION = re.compile(r"^([1-9]\d*)\.([1-9]\d*|0)$")


@total_ordering
@dataclass(frozen=True)
class Microversion:
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> Microversion:
        m = _VERSION.match(text.strip())
        if not m:
            raise ValueError(f"Invalid API version request string: {text}")
        return cls(int(m.group(1)), int(m.group(2)))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Microversion):
            return NotImplemented
        return (self.major, self.minor) < (other.major, other.minor)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    def at_least(self, text: str) -> bool:
        # Views ask this a dozen times per server rendered: compare tuples, parse once.
        return (self.major, self.minor) >= _parsed(text)


@cache
def _parsed(text: str) -> tuple[int, int]:
    """The (major, minor) of a version literal in the code (a small, fixed set)."""
    v = Microversion.parse(text)
    return (v.major, v.minor)


MIN_VERSION = Microversion(2, 1)
# The newest microversion whose request and response shapes the gateway honours.
MAX_VERSION = Microversion(2, 100)


class VersionNotAcceptable(Exception):
    """The requested version is well formed but outside [MIN_VERSION, MAX_VERSION]."""


def requested_text(headers: dict[str, str]) -> str | None:
    """The version string a request asks for, from either header; None when absent."""
    modern = headers.get("openstack-api-version")
    if modern is not None:
        # The header may carry several services: "compute 2.60, image 2.5".
        for item in modern.split(","):
            parts = item.strip().split()
            if len(parts) == 2 and parts[0].lower() == "compute":
                return parts[1]
    legacy = headers.get("x-openstack-nova-api-version")
    return legacy.strip() if legacy is not None else None


def negotiate(headers: dict[str, str]) -> Microversion:
    """Raises ValueError when malformed, VersionNotAcceptable when out of range."""
    text = requested_text(headers)
    if text is None:
        return MIN_VERSION
    if text.lower() == "latest":
        return MAX_VERSION
    version = Microversion.parse(text)
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise VersionNotAcceptable(
            f"Version {version} is not supported by the API. Minimum is {MIN_VERSION} and"
            f" maximum is {MAX_VERSION}."
        )
    return version
