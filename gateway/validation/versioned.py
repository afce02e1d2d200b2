"""Compute request schemas that change with the microversion, compiled at import.

A schema is written once as a function of the microversion; every version from MIN to
MAX is built when the module loads, equal schemas share one compiled validator, and a
request picks its own with `at(mv)`, so no request compiles anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from gateway.microversion import MAX_VERSION, MIN_VERSION, Microversion
from gateway.validation.schema import CompiledSchema, Schema


class VersionedSchema:
    def __init__(self, build: Callable[[Microversion], Schema]) -> None:
        compiled: dict[str, CompiledSchema] = {}
        self._by_version: dict[Microversion, CompiledSchema] = {}
        for minor in range(MIN_VERSION.minor, MAX_VERSION.minor + 1):
            version = Microversion(MIN_VERSION.major, minor)
            schema = build(version)
            key = json.dumps(schema, sort_keys=True)
            if key not in compiled:
                compiled[key] = CompiledSchema(schema)
            self._by_version[version] = compiled[key]
        # How many different schemas the versions have (each compiled once).
        self.distinct = len(compiled)

    def at(self, version: Microversion) -> CompiledSchema:
        return self._by_version[version]

    @property
    def newest(self) -> CompiledSchema:
        """The schema of MAX_VERSION: the one /openapi.json publishes."""
        return self._by_version[MAX_VERSION]
