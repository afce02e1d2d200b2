"""Response bodies checked against the JSON schemas in schemas/ (additionalProperties
false, as Tempest's response schemas are)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from gateway.validation import ValidationFailed, validate

SCHEMAS = Path(__file__).parent / "schemas"


@cache
def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.json").read_text())
    return loaded


def assert_shape(name: str, body: Any) -> None:
    try:
        validate(schema(name), body)
    except ValidationFailed as exc:
        raise AssertionError(f"body does not match {name}: {exc}") from None
