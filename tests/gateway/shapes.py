"""Response bodies checked against the JSON schemas in schemas/ (additionalProperties
false, as Tempest's response schemas are), with the gateway's own validator: jsonschema
draft 4, its FormatChecker (date-time, uri, ipv4, ...) and the strict meta-check, so a
misspelt keyword in a schema file fails the test instead of passing it."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from gateway.validation import CompiledSchema, ValidationFailed

SCHEMAS = Path(__file__).parent / "schemas"


@cache
def schema(name: str) -> CompiledSchema:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.json").read_text())
    return CompiledSchema(loaded)


def assert_shape(name: str, body: Any) -> None:
    try:
        schema(name).validate(body)
    except ValidationFailed as exc:
        where = "/".join(str(p) for p in exc.path) or "(the body)"
        raise AssertionError(f"body does not match {name} at {where}: {exc.reason}") from None
