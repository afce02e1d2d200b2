"""OpenStack's booleans: what a body field or a query parameter may say for true and false.

Nova's body schemas accept these strings beside JSON booleans (its `parameter_types.boolean`),
and its query parsing reads the same words; every gateway check uses this one list.
"""

from __future__ import annotations

from typing import Any

TRUE_WORDS = ("1", "t", "true", "on", "y", "yes")
FALSE_WORDS = ("0", "f", "false", "off", "n", "no")

# A body field that takes a boolean: true, false, or one of the words in any case.
BOOLEAN_SCHEMA: dict[str, Any] = {
    "type": ["boolean", "string"],
    "pattern": "^(?i:" + "|".join(TRUE_WORDS + FALSE_WORDS) + ")$",
}


def parse_bool(value: object) -> bool:
    """True or False for a JSON boolean or one of the words; ValueError otherwise."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError(f"'{value}' is not a boolean")
