"""Request schemas of the Identity v3 subset, compiled at import."""

from __future__ import annotations

from typing import Any

from gateway.validation import compile_schema

# Keystone is lenient about extra keys in auth bodies (clients add their own), so only
# what Loom reads is typed, and everything else passes.
_NAME_OR_ID = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "name": {"type": "string"}},
}
AUTH_SCHEMA = compile_schema(
    {
        "type": "object",
        "required": ["auth"],
        "properties": {
            "auth": {
                "type": "object",
                "required": ["identity"],
                "properties": {
                    "identity": {
                        "type": "object",
                        "required": ["methods"],
                        "properties": {
                            "methods": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"type": "string"},
                            },
                            "password": {
                                "type": "object",
                                "required": ["user"],
                                "properties": {
                                    "user": {
                                        "type": "object",
                                        "required": ["password"],
                                        "properties": {
                                            "id": {"type": "string"},
                                            "name": {"type": "string"},
                                            "password": {"type": "string"},
                                            "domain": _NAME_OR_ID,
                                        },
                                    }
                                },
                            },
                            "token": {
                                "type": "object",
                                "required": ["id"],
                                "properties": {"id": {"type": "string"}},
                            },
                        },
                    },
                    "scope": {
                        "anyOf": [
                            {"type": "string", "enum": ["unscoped"]},
                            {
                                "type": "object",
                                "properties": {
                                    "project": {
                                        "type": "object",
                                        "properties": {
                                            "id": {"type": "string"},
                                            "name": {"type": "string"},
                                            "domain": _NAME_OR_ID,
                                        },
                                    }
                                },
                            },
                        ]
                    },
                },
            }
        },
    }
)

# Any id is read; one other than the default domain is a 404 (routes.require_domain).
_DOMAIN_ID = {"type": "string", "minLength": 1, "maxLength": 255}
PROJECT_CREATE = compile_schema(
    {
        "type": "object",
        "required": ["project"],
        "additionalProperties": False,
        "properties": {
            "project": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 64},
                    "description": {"type": ["string", "null"]},
                    "domain_id": _DOMAIN_ID,
                    "parent_id": {"type": ["string", "null"]},
                    "enabled": {"type": "boolean"},
                    "is_domain": {"type": "boolean", "enum": [False]},
                    "tags": {"type": "array", "maxItems": 0},
                    "options": {"type": "object"},
                },
            }
        },
    }
)
PROJECT_UPDATE = compile_schema(
    {
        "type": "object",
        "required": ["project"],
        "additionalProperties": False,
        "properties": {
            "project": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 64},
                    "description": {"type": ["string", "null"]},
                    "enabled": {"type": "boolean"},
                    "tags": {"type": "array", "maxItems": 0},
                    "options": {"type": "object"},
                },
            }
        },
    }
)
# The attributes Identity v3 defines for a user; any other a client sends is kept as given.
_USER_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "minLength": 1, "maxLength": 255},
    "password": {"type": ["string", "null"]},
    "default_project_id": {"type": ["string", "null"]},
    "domain_id": _DOMAIN_ID,
    "email": {"type": ["string", "null"]},
    "description": {"type": ["string", "null"]},
    "enabled": {"type": "boolean"},
    "options": {"type": "object"},
}
USER_ATTRIBUTES = frozenset(_USER_FIELDS)
USER_CREATE = compile_schema(
    {
        "type": "object",
        "required": ["user"],
        "additionalProperties": False,
        "properties": {
            "user": {
                "type": "object",
                "required": ["name"],
                # Identity v3 keeps attributes beyond its own and shows them with the user.
                "properties": _USER_FIELDS,
            }
        },
    }
)
USER_UPDATE = compile_schema(
    {
        "type": "object",
        "required": ["user"],
        "additionalProperties": False,
        "properties": {"user": {"type": "object", "properties": _USER_FIELDS}},
    }
)
ROLE_CREATE = compile_schema(
    {
        "type": "object",
        "required": ["role"],
        "additionalProperties": False,
        "properties": {
            "role": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 255},
                    "description": {"type": ["string", "null"]},
                    "domain_id": {"type": "null"},
                    "options": {"type": "object"},
                },
            }
        },
    }
)
