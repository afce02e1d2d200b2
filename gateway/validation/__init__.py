"""Strict validation of request bodies and query strings.

Schemas are plain dicts in a small JSON Schema subset (type, properties, required,
additionalProperties, enum, minLength/maxLength, pattern, minimum/maximum, items,
minItems/maxItems, uniqueItems, anyOf), so they can be published in /openapi.json as
they are. A failure raises `ValidationFailed` with a message naming the field and the
problem, in the words Nova uses.
"""

from gateway.validation.query import QueryParam, parse_query
from gateway.validation.schema import Schema, ValidationFailed, validate

__all__ = ["QueryParam", "Schema", "ValidationFailed", "parse_query", "validate"]
