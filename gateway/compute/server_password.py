"""os-server-password: the encrypted password a guest posts to the metadata service, as
the compute API shows and clears it. Loom's metadata service takes no password from a
guest (its `password` path is not served), so a server never has one: the answer is an
empty password, and clearing it leaves it empty."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.compute.common import context, ok
from gateway.compute.interfaces import server_of
from gateway.routing import MEMBER, READER, documented


@documented(tag="compute", policy=READER)
async def show_password(request: Request) -> Response:
    """The server's password as its guest posted it: always empty here."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-server-password:show")
    await server_of(request, ctx)
    return ok({"password": ""})


@documented(tag="compute", policy=MEMBER)
async def clear_password(request: Request) -> Response:
    """Clears the server's password (there is none to clear)."""
    ctx = context(request)
    ctx.require_write("os_compute_api:os-server-password:clear")
    await server_of(request, ctx)
    return Response(status_code=204)


def routes() -> list[BaseRoute]:
    p = "/compute/v2.1/servers/{server_id}/os-server-password"
    return [
        Route(p, show_password, methods=["GET"]),
        Route(p, clear_password, methods=["DELETE"]),
    ]
