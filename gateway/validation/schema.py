"""Compiled request schemas: jsonschema's draft-4 validator with Loom's FormatChecker,
behind the strict meta-check, failing with a message in Nova's words.

What Loom adds to jsonschema, and why: the meta-check (strict.py), Nova's reading of
`minimum`/`maximum` on numeric strings (Nova's schemas take "10" where they take 10, and
so do Loom's), and the message, which names the field as Nova does and never quotes a
long value back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from jsonschema import Draft4Validator, ValidationError
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema.validators import extend

from gateway.validation.formats import FORMAT_CHECKER, InvalidName
from gateway.validation.strict import check_keywords

Schema = dict[str, Any]

# The longest value (or key) quoted in an error message; longer ones are cut, with "...".
MAX_QUOTED = 64
# The longest reason a message carries, whatever it quotes.
_MAX_REASON = 512


class ValidationFailed(ValueError):
    """The input does not match its schema; the message says where and why.

    `path` is where in the input (keys and indexes), `reason` what is wrong there.
    """

    def __init__(self, message: str, path: tuple[str | int, ...] = (), reason: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason or message


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value)
            except ValueError:
                continue
    return None


def _numeric_keyword(name: str) -> Any:
    plain = Draft4Validator.VALIDATORS[name]

    def check(validator: Validator, limit: Any, instance: Any, schema: Schema) -> Iterator[Any]:
        number = _number(instance)
        if number is not None:
            yield from plain(validator, limit, number, schema) or ()

    return check


# Draft 4, as Nova's request validator has it: minimum and maximum also bound numeric strings.
# (types-jsonschema leaves `extend` untyped.)
_LoomDraft4: type[Validator] = extend(  # type: ignore[no-untyped-call]
    Draft4Validator,
    {"minimum": _numeric_keyword("minimum"), "maximum": _numeric_keyword("maximum")},
)


def shorten(text: str, limit: int = MAX_QUOTED) -> str:
    """`text`, cut to `limit` characters with "..." when longer."""
    return text if len(text) <= limit else text[:limit] + "..."


def _shown(value: Any) -> str:
    # Nova prints the value with %s: a string as it is, anything else as Python shows it.
    return shorten(value if isinstance(value, str) else str(value))


def _reason(error: ValidationError) -> str:
    if isinstance(error.cause, InvalidName):
        return str(error.cause)
    message = error.message
    # jsonschema quotes the value (and, for objects, unexpected keys) with repr: shorten them.
    quoted = [repr(error.instance)]
    if isinstance(error.instance, Mapping):
        quoted += [repr(key) for key in error.instance]
    for text in sorted(quoted, key=len, reverse=True):
        if len(text) > MAX_QUOTED:
            message = message.replace(text, shorten(text))
    return shorten(message, _MAX_REASON)


def _failure(error: ValidationError, what: str) -> ValidationFailed:
    path = tuple(error.absolute_path)
    reason = _reason(error)
    if isinstance(error.cause, InvalidName) or not path:
        return ValidationFailed(reason, path, reason)
    # Nova names the innermost key of a body, and the parameter of a query string.
    name = path[0] if what == "query parameters" else path[-1]
    message = (
        f"Invalid input for {what} {shorten(str(name))}. Value: {_shown(error.instance)}. {reason}"
    )
    return ValidationFailed(message, path, reason)


class CompiledSchema:
    """A schema checked once by the strict meta-check and the draft-4 meta-schema, then
    ready to validate any number of values. Build these at import, never per request."""

    def __init__(self, schema: Schema, *, what: str = "field/attribute") -> None:
        check_keywords(schema)
        _LoomDraft4.check_schema(schema)
        self.schema = schema
        self._what = what
        self._validator = _LoomDraft4(schema, format_checker=FORMAT_CHECKER)

    def validate(self, value: Any) -> None:
        """Raises ValidationFailed for the most relevant mismatch (jsonschema's best_match)."""
        error = best_match(self._validator.iter_errors(value))
        if error is not None:
            raise _failure(error, self._what)

    def is_valid(self, value: Any) -> bool:
        return bool(self._validator.is_valid(value))


def compile_schema(schema: Schema) -> CompiledSchema:
    """A request body schema, compiled (see CompiledSchema)."""
    return CompiledSchema(schema)


def action_schema(action: str, members: Mapping[str, Schema]) -> Schema:
    """The body of one action, `{action: {member: ...}}`, every member required and
    nothing else allowed at either level."""
    return {
        "type": "object",
        "required": [action],
        "additionalProperties": False,
        "properties": {
            action: {
                "type": "object",
                "required": list(members),
                "additionalProperties": False,
                "properties": dict(members),
            }
        },
    }
