"""Compute consoles: the console-output and legacy VNC server actions, remote consoles
(2.6+) and the admin's console token inspection.

Console URLs point at Loom's own proxy (gateway/consoles): the noVNC page
`{public_url}/vnc/vnc_lite.html?path=<quoted "vnc/websockify?token=…">`, which is what
noVNC's vnc_lite.html expects (it opens `ws(s)://<page host>/<path>`).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlsplit

from loom.conductor.v1 import consoles_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext
from gateway.compute.common import context, ok
from gateway.conductor import call
from gateway.errors import ApiError, BadRequest, NotFound
from gateway.microversion import Microversion
from gateway.routing import ADMIN, MEMBER, checked_body, checked_query, documented
from gateway.state import base_url, gateway_of, json_body, microversion, request_id
from gateway.validation import Query, VersionedSchema, compile_schema

CONSOLE_OUTPUT_ACTION = compile_schema(
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "length": {
                "type": ["integer", "string", "null"],
                "pattern": "^-?[0-9]+$",
                "minimum": -1,
            }
        },
    }
)
VNC_CONSOLE_ACTION = compile_schema(
    {
        "type": "object",
        "required": ["type"],
        "additionalProperties": False,
        "properties": {"type": {"type": "string", "enum": ["novnc", "xvpvnc"]}},
    }
)
# The actions this module answers, with the last microversion that has them.
CONSOLE_ACTIONS: dict[str, str | None] = {"os-getConsoleOutput": None, "os-getVNCConsole": "2.5"}

_PROTOCOLS_2_6 = ["vnc", "spice", "rdp", "serial"]
_TYPES_2_6 = ["novnc", "xvpvnc", "rdp-html5", "spice-html5", "serial"]


def _remote_console_schema(mv: Microversion) -> dict[str, Any]:
    # mks and webmks came in 2.8.
    with_mks = mv.at_least("2.8")
    protocols = _PROTOCOLS_2_6 + (["mks"] if with_mks else [])
    types = _TYPES_2_6 + (["webmks"] if with_mks else [])
    if mv.at_least("2.99"):
        # A known type from 2.99; Loom offers only noVNC, so asking for it is a 400.
        types.append("spice-direct")
    return {
        "type": "object",
        "required": ["remote_console"],
        "additionalProperties": False,
        "properties": {
            "remote_console": {
                "type": "object",
                "required": ["protocol", "type"],
                "additionalProperties": False,
                "properties": {
                    "protocol": {"type": "string", "enum": protocols},
                    "type": {"type": "string", "enum": types},
                },
            }
        },
    }


# Characters Nova strips from console output: controls other than tab, newline, CR.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


# The contract's length is an int32; asking for more lines than that is asking for all.
_MAX_LINES = 2**31 - 1


def _scope(ctx: RequestContext) -> str:
    return "" if ctx.is_admin else ctx.project_id


def console_url(request: Request, token: str) -> str:
    """The noVNC page on this gateway, told to open the proxy's websocket with the token."""
    base = base_url(request)
    prefix = urlsplit(base).path.strip("/")
    ws_path = f"{prefix + '/' if prefix else ''}vnc/websockify?token={token}"
    return f"{base}/vnc/vnc_lite.html?path={quote(ws_path, safe='')}"


async def _create_token(
    request: Request, ctx: RequestContext, protocol: str, console_type: str
) -> str:
    if (protocol, console_type) != ("vnc", "novnc"):
        # Nova's ConsoleTypeUnavailable: a valid type this deployment does not offer.
        raise BadRequest(f"Unavailable console type {console_type}.")
    reply = await call(
        gateway_of(request).conductor.consoles.CreateConsoleToken,
        consoles_pb2.CreateConsoleTokenRequest(
            request_id=request_id(request),
            id=request.path_params["server_id"],
            project_id=_scope(ctx),
            protocol=protocol,
            console_type=console_type,
        ),
    )
    return console_url(request, reply.token)


async def console_action(request: Request, ctx: RequestContext, body: dict[str, Any]) -> Response:
    """os-getConsoleOutput (200 {"output"}) and, up to 2.5, os-getVNCConsole (200 {"console"})."""
    action, args = next(iter(body.items()))
    last = CONSOLE_ACTIONS[action]
    if last is not None and microversion(request).at_least(_next(last)):
        raise NotFound(
            f"The action {action} is not offered at microversion {microversion(request)}."
        )
    if action == "os-getConsoleOutput":
        checked_body(CONSOLE_OUTPUT_ACTION, args)
        ctx.require_write("os_compute_api:os-console-output")
        return await _console_output(request, ctx, args.get("length"))
    checked_body(VNC_CONSOLE_ACTION, args)
    ctx.require_write("os_compute_api:os-remote-consoles")
    url = await _create_token(request, ctx, "vnc", args["type"])
    return ok({"console": {"type": args["type"], "url": url}})


def _next(version: str) -> str:
    major, minor = version.split(".")
    return f"{major}.{int(minor) + 1}"


def _lines(length: Any) -> int:
    """The lines asked for: -1 (all) for none; the schema has refused anything below -1.

    A length past int32 means everything too; it is not parsed, since Python will not
    turn a string of more than 4300 digits into an int."""
    if length is None:
        return -1
    text = str(length)
    return _MAX_LINES if len(text) > len(str(_MAX_LINES)) else min(int(text), _MAX_LINES)


async def _console_output(request: Request, ctx: RequestContext, length: Any) -> Response:
    lines = _lines(length)
    try:
        reply = await call(
            gateway_of(request).conductor.consoles.GetConsoleOutput,
            consoles_pb2.GetConsoleOutputRequest(
                id=request.path_params["server_id"],
                project_id=_scope(ctx),
                # -1 (or no length) is everything; 0 lines is nothing, asked as one and dropped.
                length=0 if lines == -1 else min(max(lines, 1), _MAX_LINES),
            ),
        )
    except ApiError as exc:
        if exc.status == 400 and "length" in exc.message:
            raise BadRequest(exc.message) from exc
        raise
    output = "" if lines == 0 else _UNPRINTABLE.sub("", reply.output)
    return ok({"output": output})


REMOTE_CONSOLE = VersionedSchema(_remote_console_schema)


@documented(body=REMOTE_CONSOLE.newest, tag="compute", policy=MEMBER)
async def create_remote_console(request: Request) -> Response:
    """A console URL for a server (2.6+): only vnc/novnc is offered."""
    ctx = context(request)
    mv = microversion(request)
    if not mv.at_least("2.6"):
        raise NotFound("The resource could not be found.")
    ctx.require_write("os_compute_api:os-remote-consoles")
    body = await json_body(request)
    checked_body(REMOTE_CONSOLE.at(mv), body)
    rc = body["remote_console"]
    url = await _create_token(request, ctx, rc["protocol"], rc["type"])
    return ok({"remote_console": {"protocol": rc["protocol"], "type": rc["type"], "url": url}})


@documented(tag="compute", policy=ADMIN)
async def show_console_auth_token(request: Request) -> Response:
    """What a console token grants (admin only)."""
    ctx = context(request)
    ctx.require_admin("os_compute_api:os-console-auth-tokens")
    # Unknown query parameters are ignored before 2.99 and refused from it.
    checked_query(request, _NO_QUERY, ignore_unknown=not microversion(request).at_least("2.99"))
    token = request.path_params["token"]
    try:
        reply = await call(
            gateway_of(request).conductor.consoles.ValidateConsoleToken,
            consoles_pb2.ValidateConsoleTokenRequest(token=token),
        )
    except ApiError as exc:
        if exc.status == 404:
            raise NotFound("The token is invalid or has expired.") from exc
        raise
    if not microversion(request).at_least("2.31") and reply.console_type != "rdp-html5":
        # Before 2.31 Nova showed only RDP tokens here.
        raise BadRequest("The requested console type details are not accessible")
    return ok(
        {
            "console": {
                "instance_uuid": reply.instance_id,
                "host": reply.console_host,
                "port": reply.console_port,
                "internal_access_path": None,
            }
        }
    )


_NO_QUERY = Query()


def routes() -> list[BaseRoute]:
    return [
        Route(
            "/compute/v2.1/servers/{server_id}/remote-consoles",
            create_remote_console,
            methods=["POST"],
        ),
        Route(
            "/compute/v2.1/os-console-auth-tokens/{token}",
            show_console_auth_token,
            methods=["GET"],
        ),
    ]
