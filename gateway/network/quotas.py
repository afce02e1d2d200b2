"""Network v2.0 quotas."""

from __future__ import annotations

from loom.network.v1 import network_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from gateway.compute.common import empty, ok
from gateway.network import schemas
from gateway.network.common import (
    TAG,
    call,
    context,
    resource_body,
    scope,
    stub,
)
from gateway.routing import ADMIN, READER_OF_PROJECT, documented
from gateway.state import request_id

# ------------------------------------------------------------------ quotas


def _limits(q: pb.Quota) -> dict[str, int]:
    return dict(sorted(q.limits.items()))


@documented(tag=TAG, policy=ADMIN)
async def list_quotas(request: Request) -> Response:
    """Projects with limits of their own (admin)."""
    ctx = context(request)
    ctx.require_admin("get_quota")
    reply = await call(stub(request).ListQuotas, pb.ListQuotasRequest(scope=scope(ctx)))
    return ok(
        {
            "quotas": [
                {**_limits(q), "tenant_id": q.project_id, "project_id": q.project_id}
                for q in reply.quotas
            ]
        }
    )


async def _get_quota(request: Request, *, defaults: bool) -> pb.Quota:
    ctx = context(request)
    ctx.require_read("get_quota")
    reply = await call(
        stub(request).GetQuota,
        pb.GetQuotaRequest(
            scope=scope(ctx), project_id=request.path_params["project_id"], defaults=defaults
        ),
    )
    quota: pb.Quota = reply.quota
    return quota


@documented(tag=TAG, policy=READER_OF_PROJECT)
async def show_quota(request: Request) -> Response:
    """A project's limits."""
    return ok({"quota": _limits(await _get_quota(request, defaults=False))})


@documented(tag=TAG, policy=READER_OF_PROJECT)
async def show_quota_defaults(request: Request) -> Response:
    """The default limits."""
    return ok({"quota": _limits(await _get_quota(request, defaults=True))})


@documented(tag=TAG, policy=READER_OF_PROJECT)
async def show_quota_details(request: Request) -> Response:
    """A project's limits with what it uses."""
    q = await _get_quota(request, defaults=False)
    return ok(
        {
            "quota": {
                r: {"limit": limit, "used": q.used.get(r, 0), "reserved": 0}
                for r, limit in sorted(q.limits.items())
            }
        }
    )


@documented(body=schemas.wrapped("quota", schemas.QUOTA_UPDATE), tag=TAG, policy=ADMIN)
async def update_quota(request: Request) -> Response:
    """Set some of a project's limits (admin)."""
    ctx = context(request)
    ctx.require_admin("update_quota")
    body = await resource_body(request, "quota", schemas.QUOTA_UPDATE)
    reply = await call(
        stub(request).UpdateQuota,
        pb.UpdateQuotaRequest(
            request_id=request_id(request),
            scope=scope(ctx),
            project_id=request.path_params["project_id"],
            limits=body,
        ),
    )
    return ok({"quota": _limits(reply.quota)})


@documented(tag=TAG, policy=ADMIN)
async def delete_quota(request: Request) -> Response:
    """Back to the default limits (admin)."""
    ctx = context(request)
    ctx.require_admin("delete_quota")
    await call(
        stub(request).DeleteQuota,
        pb.DeleteQuotaRequest(
            request_id=request_id(request),
            scope=scope(ctx),
            project_id=request.path_params["project_id"],
        ),
    )
    return empty(204)
