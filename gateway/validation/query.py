"""Query strings: every parameter must be known, and each is validated with jsonschema
(as Nova validates `{name: [values]}`) before it is parsed to its declared type."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import QueryParams

from gateway.validation.booleans import BOOLEAN_SCHEMA, parse_bool
from gateway.validation.formats import parse_date_time
from gateway.validation.schema import CompiledSchema, Schema

# What one value of each kind must look like; the schema has checked it before it is parsed.
_VALUE_SCHEMAS: dict[str, Schema] = {
    # No NUL: nothing Loom names or filters on holds one, and the database refuses them.
    "string": {"type": "string", "pattern": "^[^\\x00]*$"},
    "integer": {"type": "string", "pattern": "^-?[0-9]+$"},
    "nonneg_integer": {"type": "string", "pattern": "^[0-9]+$"},
    "boolean": {"type": "string", "pattern": BOOLEAN_SCHEMA["pattern"]},
    "datetime": {"type": "string", "format": "date-time"},
}
# Integers in a query (limits, offsets, sizes) travel in 32-bit fields and count rows or
# megabytes: a larger value means the same as the largest one (no more rows, no bigger
# flavor), so it is clamped rather than refused, as an unbounded SQL parameter would be.
INT32_MAX = 2**31 - 1


def _bounded_int(text: str) -> int:
    digits = text.lstrip("-").lstrip("0") or "0"
    # Past 10 digits it is out of range whatever the digits: no need to parse them all.
    value = INT32_MAX + 1 if len(digits) > 10 else int(digits)
    if text.startswith("-"):
        return -min(value, INT32_MAX + 1)
    return min(value, INT32_MAX)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "string": str,
    "integer": _bounded_int,
    "nonneg_integer": _bounded_int,
    "boolean": parse_bool,
    "datetime": parse_date_time,
}


@dataclass(frozen=True)
class QueryParam:
    """One accepted parameter: its name, its kind, whether it may repeat, its values."""

    name: str
    kind: str = "string"  # string, integer, nonneg_integer, boolean, datetime
    multi: bool = False
    enum: tuple[str, ...] = ()

    def schema(self) -> Schema:
        """The parameter's values as a list (a query string may repeat any name)."""
        value = dict(_VALUE_SCHEMAS[self.kind])
        if self.enum:
            value["enum"] = list(self.enum)
        values: Schema = {"type": "array", "items": value}
        if not self.multi:
            values["maxItems"] = 1
        return values

    def parse(self, text: str) -> Any:
        return _PARSERS[self.kind](text)


class Query:
    """The parameters one handler accepts, compiled once into one schema."""

    def __init__(self, *params: QueryParam) -> None:
        self.params = params
        self._by_name = {p.name: p for p in params}
        self.schema = CompiledSchema(
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {p.name: p.schema() for p in params},
            },
            what="query parameters",
        )

    def __iter__(self) -> Iterator[QueryParam]:
        return iter(self.params)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def parse(self, params: QueryParams, *, ignore_unknown: bool = False) -> dict[str, Any]:
        """Parsed values by name (lists for multi). Raises ValidationFailed for a malformed
        or repeated parameter, and an unknown one unless `ignore_unknown` (Nova ignores
        them on some APIs before a microversion)."""
        raw = {
            name: params.getlist(name)
            for name in params
            if not ignore_unknown or name in self._by_name
        }
        self.schema.validate(raw)
        out: dict[str, Any] = {}
        for name, values in raw.items():
            spec = self._by_name[name]
            parsed = [spec.parse(v) for v in values]
            out[name] = parsed if spec.multi else parsed[0]
        return out


NO_QUERY = Query()
