"""Validation of request bodies and query strings with jsonschema (draft 4, as Nova).

Schemas are plain dicts, so /openapi.json publishes them as they are. Each is compiled
once at import (`compile_schema`, `VersionedSchema`, `Query`), after a strict meta-check
that refuses any key draft 4 does not define, so a misspelt keyword cannot pass silently.
`format` values are checked by one FormatChecker (formats.py). A failure raises
`ValidationFailed` with a message in the words Nova uses, quoting at most 64 characters
of the value.
"""

from gateway.validation.query import NO_QUERY, Query, QueryParam
from gateway.validation.schema import (
    CompiledSchema,
    Schema,
    ValidationFailed,
    action_schema,
    compile_schema,
)
from gateway.validation.strict import SchemaNotStrict
from gateway.validation.versioned import VersionedSchema

__all__ = [
    "NO_QUERY",
    "CompiledSchema",
    "Query",
    "QueryParam",
    "Schema",
    "SchemaNotStrict",
    "ValidationFailed",
    "VersionedSchema",
    "action_schema",
    "compile_schema",
]
