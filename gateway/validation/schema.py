"""A small, strict JSON Schema subset validator (see the package docstring)."""

from __future__ import annotations

import json
import re
from typing import Any

Schema = dict[str, Any]


class ValidationFailed(ValueError):
    """The input does not match its schema; the message says where and why."""


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is_type(value: Any, name: str) -> bool:
    # JSON has no bool-is-int: true is not an integer, whatever Python says.
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def _show(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _fail(path: str, value: Any, reason: str) -> ValidationFailed:
    where = path or "request body"
    return ValidationFailed(
        f"Invalid input for field/attribute {where}. Value: {_show(value)}. {reason}"
    )


def validate(schema: Schema, value: Any, path: str = "") -> None:
    """Raises ValidationFailed on the first mismatch found."""
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                validate(option, value, path)
                break
            except ValidationFailed as exc:
                errors.append(str(exc))
        else:
            raise _fail(path, value, f"{_show(value)} is not valid under any of the given schemas")
    wanted = schema.get("type")
    if wanted is not None:
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        if not any(_is_type(value, n) for n in names):
            shown = names[0] if len(names) == 1 else names
            raise _fail(path, value, f"{_show(value)} is not of type {_show(shown)}")
    if "enum" in schema and value not in schema["enum"]:
        raise _fail(path, value, f"{_show(value)} is not one of {_show(schema['enum'])}")
    if isinstance(value, str):
        _check_string(schema, value, path)
    if isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(schema, value, path)
    if isinstance(value, dict):
        _check_object(schema, value, path)
    if isinstance(value, list):
        _check_array(schema, value, path)


def _check_string(schema: Schema, value: str, path: str) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        raise _fail(path, value, f"{_show(value)} is too short")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise _fail(path, value, f"{_show(value)} is too long")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        raise _fail(path, value, f"{_show(value)} does not match {_show(schema['pattern'])}")


def _check_number(schema: Schema, value: float, path: str) -> None:
    if "minimum" in schema and value < schema["minimum"]:
        raise _fail(path, value, f"{value} is less than the minimum of {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        raise _fail(path, value, f"{value} is greater than the maximum of {schema['maximum']}")


def _check_object(schema: Schema, value: dict[str, Any], path: str) -> None:
    props: dict[str, Schema] = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in value:
            raise _fail(path, value, f"'{key}' is a required property")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        sub = f"{path}/{key}" if path else key
        if key in props:
            validate(props[key], item, sub)
        elif extra is False:
            raise _fail(
                path, value, f"Additional properties are not allowed ('{key}' was unexpected)"
            )
        elif isinstance(extra, dict):
            validate(extra, item, sub)
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        raise _fail(path, value, "has too many properties")
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        raise _fail(path, value, "does not have enough properties")


def _check_array(schema: Schema, value: list[Any], path: str) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        raise _fail(path, value, f"{_show(value)} is too short")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        raise _fail(path, value, f"{_show(value)} is too long")
    if schema.get("uniqueItems"):
        seen = [json.dumps(v, sort_keys=True) for v in value]
        if len(seen) != len(set(seen)):
            raise _fail(path, value, f"{_show(value)} has non-unique elements")
    if "items" in schema:
        for index, item in enumerate(value):
            validate(schema["items"], item, f"{path}/{index}")
