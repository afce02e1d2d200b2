"""Query strings: every parameter must be known, each is parsed to its declared type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.datastructures import QueryParams

from gateway.validation.booleans import parse_bool
from gateway.validation.schema import ValidationFailed


def _int(minimum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"'{text}' is not an integer") from None
        if minimum is not None and value < minimum:
            raise ValueError(f"{value} is less than the minimum of {minimum}")
        return value

    return parse


def _datetime(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'{text}' is not an ISO 8601 time") from None


def _str(text: str) -> str:
    return text


@dataclass(frozen=True)
class QueryParam:
    """One accepted parameter: its name, how to parse it, and whether it may repeat."""

    name: str
    kind: str = "string"  # string, integer, nonneg_integer, boolean, datetime
    multi: bool = False
    enum: tuple[str, ...] = ()

    def parser(self) -> Callable[[str], Any]:
        return {
            "string": _str,
            "integer": _int(),
            "nonneg_integer": _int(0),
            "boolean": parse_bool,
            "datetime": _datetime,
        }[self.kind]


def parse_query(
    params: QueryParams, accepted: list[QueryParam], *, ignore_unknown: bool = False
) -> dict[str, Any]:
    """Parsed values by name (lists for multi); malformed parameters fail, and unknown ones
    too unless `ignore_unknown` (Nova ignores them on some APIs before a microversion)."""
    known = {p.name: p for p in accepted}
    out: dict[str, Any] = {}
    for name in params:
        spec = known.get(name)
        if spec is None and ignore_unknown:
            continue
        if spec is None:
            raise ValidationFailed(
                f"Invalid input for query parameters {name}. Value: {params.get(name)}."
                f" Additional properties are not allowed ('{name}' was unexpected)"
            )
        values = params.getlist(name)
        if not spec.multi and len(values) > 1:
            raise ValidationFailed(f"Invalid input for query parameters {name}: given twice")
        parsed = []
        for raw in values:
            if spec.enum and raw not in spec.enum:
                raise ValidationFailed(
                    f"Invalid input for query parameters {name}. Value: {raw}."
                    f" '{raw}' is not one of {list(spec.enum)}"
                )
            try:
                parsed.append(spec.parser()(raw))
            except ValueError as exc:
                raise ValidationFailed(
                    f"Invalid input for query parameters {name}. Value: {raw}. {exc}"
                ) from None
        out[name] = parsed if spec.multi else parsed[0]
    return out
