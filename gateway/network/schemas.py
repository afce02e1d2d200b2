"""Request bodies of the Network v2 subset: the attributes each resource accepts. An
attribute not listed is refused by name (this cloud does not support it)."""

from __future__ import annotations

from typing import Any

from gateway.validation import CompiledSchema, compile_schema

_NAME: dict[str, Any] = {"type": "string", "maxLength": 255}
_ID: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 255}
_BOOL: dict[str, Any] = {"type": "boolean"}
_PROJECT = {"tenant_id": _ID, "project_id": _ID}
_IP: dict[str, Any] = {"type": "string", "maxLength": 64}


def wrapped(key: str, inner: CompiledSchema) -> CompiledSchema:
    """The whole body, `{key: {...}}`, as /openapi.json publishes it."""
    return compile_schema(
        {
            "type": "object",
            "required": [key],
            "additionalProperties": False,
            "properties": {key: inner.schema},
        }
    )


def created(key: str, inner: CompiledSchema) -> CompiledSchema:
    """A create's whole body: `{key: {...}}`, or a bulk create's `{key + "s": [...]}`."""
    return compile_schema(
        {
            "oneOf": [
                wrapped(key, inner).schema,
                {
                    "type": "object",
                    "required": [f"{key}s"],
                    "additionalProperties": False,
                    "properties": {
                        f"{key}s": {"type": "array", "minItems": 1, "items": inner.schema}
                    },
                },
            ]
        }
    )


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> CompiledSchema:
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": props,
    }
    if required:
        schema["required"] = list(required)
    return compile_schema(schema)


_NETWORK_COMMON = {
    "name": _NAME,
    "description": _NAME,
    "admin_state_up": _BOOL,
    "shared": _BOOL,
    "router:external": _BOOL,
    "mtu": {"type": "integer", "minimum": 0, "maximum": 65535},
    "port_security_enabled": _BOOL,
}
NETWORK_CREATE = _obj({**_NETWORK_COMMON, **_PROJECT})
NETWORK_UPDATE = _obj(_NETWORK_COMMON)

_POOL = {
    "type": "object",
    "additionalProperties": False,
    "required": ["start", "end"],
    "properties": {"start": _IP, "end": _IP},
}
_ROUTE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["destination", "nexthop"],
    "properties": {"destination": _IP, "nexthop": _IP},
}
_SUBNET_COMMON = {
    "name": _NAME,
    "description": _NAME,
    "gateway_ip": {"type": ["string", "null"], "maxLength": 64},
    "enable_dhcp": _BOOL,
    "dns_nameservers": {"type": "array", "items": _IP, "maxItems": 64},
    "host_routes": {"type": "array", "items": _ROUTE, "maxItems": 64},
}
SUBNET_CREATE = _obj(
    {
        **_SUBNET_COMMON,
        **_PROJECT,
        "network_id": _ID,
        "ip_version": {"type": "integer", "enum": [4, 6]},
        "cidr": _IP,
        "allocation_pools": {"type": "array", "items": _POOL, "maxItems": 64},
        "ipv6_ra_mode": {"type": "null"},
        "ipv6_address_mode": {"type": "null"},
        "subnetpool_id": {"type": "null"},
    },
    ("network_id",),
)
SUBNET_UPDATE = _obj(
    {**_SUBNET_COMMON, "allocation_pools": {"type": "array", "items": _POOL, "maxItems": 64}}
)

_FIXED_IP = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"subnet_id": _ID, "ip_address": _IP},
}
_PORT_COMMON = {
    "name": _NAME,
    "description": _NAME,
    "admin_state_up": _BOOL,
    "device_id": _NAME,
    "device_owner": _NAME,
    "fixed_ips": {"type": "array", "items": _FIXED_IP, "maxItems": 64},
    "security_groups": {"type": ["array", "null"], "items": _ID, "maxItems": 64},
    "binding:host_id": _NAME,
    "binding:vnic_type": {"type": "string", "enum": ["normal"]},
    "port_security_enabled": _BOOL,
    "allowed_address_pairs": {
        "type": ["array", "null"],
        "maxItems": 64,
        "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["ip_address"],
            "properties": {
                "ip_address": {"type": "string", "maxLength": 64},
                "mac_address": {"type": ["string", "null"], "maxLength": 32},
            },
        },
    },
}
PORT_CREATE = _obj(
    {
        **_PORT_COMMON,
        **_PROJECT,
        "network_id": _ID,
        "mac_address": {"type": "string", "maxLength": 32},
    },
    ("network_id",),
)
PORT_UPDATE = _obj(_PORT_COMMON)

SECURITY_GROUP_CREATE = _obj(
    {
        "name": _NAME,
        "description": _NAME,
        "stateful": {"type": "boolean", "enum": [True]},
        **_PROJECT,
    }
)
SECURITY_GROUP_UPDATE = _obj({"name": _NAME, "description": _NAME})

# Ports and ICMP type/code are checked by the network service, with the network API's
# messages; here only what fits the wire.
_PORT = {"type": ["integer", "null"], "minimum": -(2**31), "maximum": 2**31 - 1}
RULE_CREATE = _obj(
    {
        "security_group_id": _ID,
        "direction": {"type": "string", "enum": ["ingress", "egress"]},
        "ethertype": {"type": "string", "enum": ["IPv4", "IPv6"]},
        "protocol": {"type": ["string", "integer", "null"], "maxLength": 40},
        "port_range_min": _PORT,
        "port_range_max": _PORT,
        "remote_ip_prefix": {"type": ["string", "null"], "maxLength": 64},
        "remote_group_id": {"type": ["string", "null"], "maxLength": 255},
        "description": _NAME,
        **_PROJECT,
    },
    ("security_group_id", "direction"),
)

_LIMIT = {"type": "integer", "minimum": -1, "maximum": 2**31 - 1}
QUOTA_UPDATE = _obj(
    {
        r: _LIMIT
        for r in (
            "network",
            "subnet",
            "port",
            "security_group",
            "security_group_rule",
            "router",
            "floatingip",
        )
    }
)

_GATEWAY = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "network_id": _ID,
        "enable_snat": _BOOL,
        "external_fixed_ips": {"type": "array", "items": _FIXED_IP, "maxItems": 16},
    },
}
_ROUTER_COMMON = {
    "name": _NAME,
    "description": _NAME,
    "admin_state_up": _BOOL,
    "external_gateway_info": _GATEWAY,
}
ROUTER_CREATE = _obj({**_ROUTER_COMMON, **_PROJECT})
ROUTER_UPDATE = _obj({**_ROUTER_COMMON, "routes": {"type": "array", "maxItems": 0}})
# add_router_interface and remove_router_interface bodies are not wrapped in a key.
ROUTER_INTERFACE = compile_schema(
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {"subnet_id": _ID, "port_id": _ID},
    }
)

FLOATING_IP_CREATE = _obj(
    {
        "floating_network_id": _ID,
        "floating_ip_address": _IP,
        "subnet_id": _ID,
        "port_id": {"type": ["string", "null"], "maxLength": 255},
        "fixed_ip_address": {"type": ["string", "null"], "maxLength": 64},
        "description": _NAME,
        **_PROJECT,
    },
    ("floating_network_id",),
)
FLOATING_IP_UPDATE = _obj(
    {
        "port_id": {"type": ["string", "null"], "maxLength": 255},
        "fixed_ip_address": {"type": ["string", "null"], "maxLength": 64},
        "description": _NAME,
    }
)
