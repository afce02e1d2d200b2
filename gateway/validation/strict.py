"""The strict meta-check: a schema Loom compiles may use only keywords draft 4 defines.

JSON Schema ignores a key it does not know, so `"minLenght": 1` or
`"additionalProperites": false` would make a check pass vacuously; jsonschema's meta-schema
allows them too. This walk visits every position that holds a schema and refuses any key
that is not a draft-4 keyword, a `format` the FormatChecker cannot check, and a `$ref` that
is not local, does not resolve, or has sibling keywords (draft 4 ignores those). jsonschema
has no such mode, so Loom keeps this one walk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema import Draft4Validator

from gateway.validation.formats import FORMAT_CHECKER

# Draft 4's keywords: those its meta-schema describes (exclusiveMinimum, title, ...) and
# those its validator acts on ($ref is in the second list only).
KEYWORDS = frozenset(Draft4Validator.META_SCHEMA["properties"]) | frozenset(
    Draft4Validator.VALIDATORS
)
# Where draft 4 puts a schema: one schema, a list of them, or a map from names to them.
_ONE = ("additionalItems", "additionalProperties", "items", "not")
_LIST = ("allOf", "anyOf", "oneOf", "items")
_MAP = ("properties", "patternProperties", "definitions", "dependencies")
# What may stand beside $ref: annotations and definitions, which validate nothing.
_REF_SIBLINGS = frozenset({"$ref", "$schema", "description", "title", "definitions"})


class SchemaNotStrict(ValueError):
    """The schema uses a key, format or reference that would not be checked as written."""


def check_keywords(schema: Any) -> None:
    """Raises SchemaNotStrict naming the first offending position (a JSON pointer)."""
    _walk(schema, schema, "#")


def _walk(node: Any, root: Any, where: str) -> None:
    if not isinstance(node, Mapping):
        raise SchemaNotStrict(f"{where}: a schema must be an object, not {node!r}")
    unknown = sorted(str(k) for k in node if k not in KEYWORDS)
    if unknown:
        raise SchemaNotStrict(f"{where}: not a draft-4 keyword: {', '.join(unknown)}")
    if "format" in node and node["format"] not in FORMAT_CHECKER.checkers:
        raise SchemaNotStrict(f"{where}: format {node['format']!r} has no checker")
    if "$ref" in node:
        _check_ref(node, root, where)
    for key in _ONE:
        if isinstance(node.get(key), Mapping):
            _walk(node[key], root, f"{where}/{key}")
    for key in _LIST:
        if isinstance(node.get(key), list):
            for index, item in enumerate(node[key]):
                _walk(item, root, f"{where}/{key}/{index}")
    for key in _MAP:
        value = node.get(key)
        if isinstance(value, Mapping):
            for name, sub in value.items():
                # A dependency may be a list of property names rather than a schema.
                if key == "dependencies" and isinstance(sub, list):
                    continue
                _walk(sub, root, f"{where}/{key}/{_escape(str(name))}")


def _check_ref(node: Mapping[str, Any], root: Any, where: str) -> None:
    ref = node["$ref"]
    extra = sorted(set(node) - _REF_SIBLINGS)
    if extra:
        raise SchemaNotStrict(f"{where}: draft 4 ignores keywords beside $ref: {extra}")
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise SchemaNotStrict(f"{where}: $ref {ref!r} is not a local reference")
    target = root
    for token in ref[1:].split("/")[1:]:
        name = token.replace("~1", "/").replace("~0", "~")
        if isinstance(target, Mapping) and name in target:
            target = target[name]
        elif (
            isinstance(target, list)
            and name.isascii()
            and name.isdigit()
            and int(name) < len(target)
        ):
            target = target[int(name)]
        else:
            raise SchemaNotStrict(f"{where}: $ref {ref!r} does not resolve")


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")
