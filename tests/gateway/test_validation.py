"""gateway.validation: jsonschema with the strict meta-check, Loom's formats, Nova's
messages, and the cap on what a message quotes back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema.exceptions import SchemaError
from starlette.datastructures import QueryParams
from starlette.routing import Route

from gateway.app import all_routes
from gateway.compute import flavors, servers
from gateway.microversion import Microversion
from gateway.routing import doc_of
from gateway.validation import (
    CompiledSchema,
    Query,
    QueryParam,
    SchemaNotStrict,
    ValidationFailed,
    compile_schema,
)
from gateway.validation.booleans import BOOLEAN_SCHEMA, FALSE_WORDS, TRUE_WORDS
from tests.gateway.shapes import SCHEMAS

# ------------------------------------------------------------------ the strict meta-check


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "additionalProperites": False},
        {"type": "string", "minLenght": 1},
        {"type": "object", "properties": {"name": {"type": "string", "maxLenght": 2}}},
        {"type": "array", "items": {"tpye": "string"}},
        {"anyOf": [{"type": "string"}, {"type": "null", "enumm": [None]}]},
        {"type": "object", "additionalProperties": {"type": "string", "patern": "^a$"}},
        {"type": "object", "patternProperties": {"^a": {"minimun": 1}}},
        {"definitions": {"x": {"typ": "string"}}, "$ref": "#/definitions/x"},
        {"not": {"typo": 1}},
        {"type": "object", "dependencies": {"a": {"requird": ["b"]}}},
    ],
    ids=[
        "additionalProperites at the root",
        "minLenght at the root",
        "maxLenght in a property",
        "tpye in items",
        "enumm in an anyOf branch",
        "patern in additionalProperties",
        "minimun in patternProperties",
        "typ in a definition",
        "typo under not",
        "requird in a dependency",
    ],
)
def test_a_misspelt_keyword_is_refused_when_the_schema_is_compiled(schema: dict[str, Any]) -> None:
    with pytest.raises(SchemaNotStrict, match="not a draft-4 keyword"):
        compile_schema(schema)


def test_the_refusal_names_where_the_misspelt_keyword_is() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "minLenght": 1}}}
    with pytest.raises(SchemaNotStrict, match=r"#/properties/a: .*minLenght"):
        compile_schema(schema)


def test_property_names_that_look_like_keywords_are_not_keywords() -> None:
    compiled = compile_schema(
        {"type": "object", "properties": {"minLenght": {"type": "string"}, "id": {}}}
    )
    compiled.validate({"minLenght": "x", "id": 3})


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "string", "format": "colour"}, "has no checker"),
        ({"$ref": "http://example.invalid/schema.json"}, "not a local reference"),
        ({"definitions": {}, "$ref": "#/definitions/missing"}, "does not resolve"),
        (
            {"definitions": {"s": {"type": "string"}}, "$ref": "#/definitions/s", "maxLength": 1},
            "beside $ref",
        ),
    ],
    ids=["an unknown format", "a remote $ref", "a dangling $ref", "a keyword beside $ref"],
)
def test_what_would_go_unchecked_is_refused(schema: dict[str, Any], words: str) -> None:
    with pytest.raises(SchemaNotStrict, match=words.replace("$", r"\$")):
        compile_schema(schema)


def test_a_keyword_with_a_malformed_value_is_refused_by_the_meta_schema() -> None:
    with pytest.raises(SchemaError):
        compile_schema({"type": "string", "minLength": "1"})
    with pytest.raises(SchemaError):
        compile_schema({"type": "object", "required": []})


def test_every_route_validates_with_a_compiled_schema() -> None:
    bodies = [doc_of(r.endpoint).body for r in all_routes() if isinstance(r, Route)]
    documented = [b for b in bodies if b is not None]
    assert len(documented) >= 15
    assert all(isinstance(b, CompiledSchema) for b in documented)


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.json")), ids=lambda p: p.stem)
def test_every_response_shape_schema_passes_the_strict_meta_check(path: Path) -> None:
    CompiledSchema(json.loads(path.read_text()))


# ------------------------------------------------------------------ keywords enforced


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"type": "integer"}, True),
        ({"type": "object", "additionalProperties": False, "properties": {}}, {"x": 1}),
        ({"type": "string", "maxLength": 2}, "abc"),
        ({"type": "array", "uniqueItems": True}, [1, 1]),
        ({"anyOf": [{"type": "string"}, {"type": "null"}]}, 3),
        ({"oneOf": [{"type": "integer"}, {"minimum": 0}]}, 5),
        ({"oneOf": [{"type": "integer"}, {"type": "string"}]}, 1.5),
        ({"definitions": {"small": {"maximum": 3}}, "$ref": "#/definitions/small"}, 4),
        (
            {
                "type": "object",
                "properties": {"a": {"$ref": "#/definitions/s"}},
                "definitions": {"s": {"type": "string"}},
            },
            {"a": 1},
        ),
        ({"type": "object", "patternProperties": {"^a": {"type": "string"}}}, {"ab": 1}),
        ({"type": "integer", "minimum": 0, "exclusiveMinimum": True}, 0),
        ({"not": {"type": "null"}}, None),
    ],
    ids=[
        "a boolean is not an integer",
        "an unknown key",
        "too long",
        "duplicates",
        "no anyOf branch",
        "oneOf matched twice",
        "oneOf matched by none",
        "a $ref at the root",
        "a $ref in a property",
        "patternProperties",
        "exclusiveMinimum",
        "not",
    ],
)
def test_the_validator_refuses(schema: dict[str, Any], value: Any) -> None:
    compiled = compile_schema(schema)
    assert not compiled.is_valid(value)
    with pytest.raises(ValidationFailed):
        compiled.validate(value)


def test_a_ref_is_followed_to_what_it_names() -> None:
    compiled = compile_schema(
        {"definitions": {"s": {"type": "string"}}, "items": {"$ref": "#/definitions/s"}}
    )
    compiled.validate(["a", "b"])
    assert not compiled.is_valid(["a", 2])


def test_minimum_and_maximum_bound_numeric_strings_as_in_nova() -> None:
    compiled = compile_schema({"type": ["integer", "string"], "minimum": 1, "maximum": 10})
    compiled.validate("5")
    assert not compiled.is_valid("0")
    assert not compiled.is_valid("11")
    compiled.validate("not a number")  # left to `pattern`, as Nova leaves it


# ------------------------------------------------------------------ formats


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("uuid", "0fa2aa3d-7b2a-4a2b-9b27-0c6b9a7b1f4e", "0fa2aa3d-7b2a-4a2b-9b27"),
        ("uuid", "0FA2AA3D7B2A4A2B9B270C6B9A7B1F4E", "{0fa2aa3d-7b2a-4a2b-9b27-0c6b9a7b1f4e}"),
        ("name", "web 1", " web"),
        ("name", "wéb-1", "web\n"),
        ("name", "a b", "a\x00b"),
        ("ipv4", "192.0.2.1", "192.0.2"),
        ("ipv6", "2001:db8::1", "2001:db8:::1"),
        ("date-time", "2024-05-01T10:00:00Z", "2024-13-01T10:00:00Z"),
        ("date-time", "2024-05-01T10:00:00.000000", "yesterday"),
        ("uri", "http://loom.test/compute/v2.1/flavors/1", "/compute/v2.1/flavors/1"),
    ],
)
def test_a_format_keyword_rejects_what_is_not_of_its_format(fmt: str, good: str, bad: str) -> None:
    compiled = compile_schema({"type": "string", "format": fmt})
    compiled.validate(good)
    with pytest.raises(ValidationFailed):
        compiled.validate(bad)


def test_a_bad_name_gets_novas_sentence() -> None:
    compiled = compile_schema(
        {"type": "object", "properties": {"name": {"type": "string", "format": "name"}}}
    )
    with pytest.raises(ValidationFailed) as caught:
        compiled.validate({"name": "trailing "})
    assert str(caught.value) == (
        "An invalid 'name' value was provided. The name must be: printable characters."
        " Can not start or end with whitespace."
    )


def test_a_response_shape_with_a_date_time_refuses_a_bad_timestamp() -> None:
    shape = CompiledSchema(
        {
            "type": "object",
            "required": ["created"],
            "properties": {"created": {"type": "string", "format": "date-time"}},
        }
    )
    shape.validate({"created": "2024-05-01T10:00:00Z"})
    with pytest.raises(ValidationFailed, match="is not a 'date-time'"):
        shape.validate({"created": "2024-05-01 25:00"})


# ------------------------------------------------------------------ messages


def test_a_body_error_names_the_field_with_its_value_and_reason_as_nova() -> None:
    schema = flavors.CREATE.at(Microversion(2, 1))
    with pytest.raises(ValidationFailed) as caught:
        schema.validate({"flavor": {"name": "x", "ram": "lots", "vcpus": 1, "disk": 0}})
    assert str(caught.value) == (
        "Invalid input for field/attribute ram. Value: lots. 'lots' does not match '^[0-9]+$'"
    )
    with pytest.raises(ValidationFailed) as caught:
        schema.validate({})
    assert str(caught.value) == "'flavor' is a required property"


@pytest.mark.parametrize(
    "body",
    [
        {"flavor": {"name": "x" * 100_000, "ram": 1, "vcpus": 1, "disk": 0}},
        {"flavor": {"name": "x", "ram": "9" * 100_000, "vcpus": 1, "disk": 0}},
        {"flavor": {"name": "x", "ram": 1, "vcpus": 1, "disk": 0, "k" * 100_000: 1}},
        {"flavor": ["x" * 100_000]},
        {"flavor": {"name": "x", "ram": 1, "vcpus": 1, "disk": 0, "id": "\x00" * 100_000}},
    ],
    ids=["a long value", "a long number", "a long unexpected key", "a long list", "bad id"],
)
def test_an_error_never_quotes_a_long_value_back(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationFailed) as caught:
        flavors.CREATE.at(Microversion(2, 1)).validate(body)
    message = str(caught.value)
    assert len(message) < 400, message
    assert "..." in message


def test_a_long_query_parameter_is_not_quoted_back() -> None:
    query = Query(QueryParam("limit", "nonneg_integer"))
    for text in (f"limit={'x' * 100_000}", f"{'y' * 100_000}=1"):
        with pytest.raises(ValidationFailed) as caught:
            query.parse(QueryParams(text))
        assert len(str(caught.value)) < 300


# ------------------------------------------------------------------ query strings


def test_a_query_is_validated_then_parsed_to_its_types() -> None:
    parsed = servers.LIST_QUERY.parse(
        QueryParams("limit=5&deleted=yes&changes-since=2024-01-01T00:00:00Z&status=A&status=B")
    )
    assert parsed["limit"] == 5
    assert parsed["deleted"] is True
    assert parsed["changes-since"].year == 2024
    assert parsed["status"] == ["A", "B"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("limit=abc", "Invalid input for query parameters limit. Value: abc."),
        ("limit=1&limit=2", "is too long"),
        ("bogus=1", "Additional properties are not allowed ('bogus' was unexpected)"),
        ("changes-since=yesterday", "'yesterday' is not a 'date-time'"),
        ("deleted=maybe", "Invalid input for query parameters deleted."),
        ("sort_dir=up", "'up' is not one of ['asc', 'desc']"),
    ],
)
def test_a_bad_query_is_refused_in_novas_words(text: str, words: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        servers.LIST_QUERY.parse(QueryParams(text))
    assert words in str(caught.value)


def test_unknown_parameters_can_be_ignored_where_nova_ignores_them() -> None:
    query = Query(QueryParam("host"))
    assert query.parse(QueryParams("host=a&flavor=1"), ignore_unknown=True) == {"host": "a"}


# ------------------------------------------------------------------ booleans


def test_openstack_boolean_words_pass_and_others_do_not() -> None:
    compiled = compile_schema(BOOLEAN_SCHEMA)
    for word in (*TRUE_WORDS, *FALSE_WORDS, "True", "FALSE", "Yes", "ON", True, False):
        compiled.validate(word)
    for bad in ("maybe", "", "2", 1, None):
        assert not compiled.is_valid(bad), bad
    query = Query(QueryParam("deleted", "boolean"))
    assert query.parse(QueryParams("deleted=True")) == {"deleted": True}
    assert query.parse(QueryParams("deleted=off")) == {"deleted": False}
