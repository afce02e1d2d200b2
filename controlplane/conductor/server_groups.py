"""ServerGroupsService: server groups and their members (the scheduler enforces policies)."""

from __future__ import annotations

from typing import Any

import grpc
from loom.conductor.v1 import server_groups_pb2, server_groups_pb2_grpc
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import Instance, Quota, ServerGroup
from controlplane.runtime.rpc import abort, id_for_request, new_uuid, now, timestamp

POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")


class ServerGroupsServicer(server_groups_pb2_grpc.ServerGroupsServiceServicer):
    def __init__(self, sessions: async_sessionmaker[AsyncSession], default_quota: int) -> None:
        self._sessions = sessions
        self._default_quota = default_quota

    async def _members(self, s: AsyncSession, group_ids: list[str]) -> dict[str, list[str]]:
        rows = await s.execute(
            select(Instance.server_group_id, Instance.uuid)
            .where(Instance.server_group_id.in_(group_ids), Instance.deleted.is_(False))
            .order_by(Instance.created_at)
        )
        out: dict[str, list[str]] = {g: [] for g in group_ids}
        for gid, uuid in rows:
            out.setdefault(gid or "", []).append(uuid)
        return out

    def _pb(self, g: ServerGroup, members: list[str]) -> server_groups_pb2.ServerGroup:
        return server_groups_pb2.ServerGroup(
            id=g.id,
            name=g.name,
            project_id=g.project_id,
            user_id=g.user_id,
            policy=g.policy,
            rules={str(k): str(v) for k, v in (g.rules or {}).items()},
            members=members,
            created_at=timestamp(g.created_at),
        )

    async def _get(self, s: AsyncSession, context: Any, gid: str, project_id: str) -> ServerGroup:
        group = await s.get(ServerGroup, gid)
        if group is None or (project_id and group.project_id != project_id):
            await abort(
                context, grpc.StatusCode.NOT_FOUND, f"Instance group {gid} could not be found."
            )
        return group

    async def CreateServerGroup(
        self, request: server_groups_pb2.CreateServerGroupRequest, context: Any
    ) -> Any:
        want = request.group
        if not want.name.strip():
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "name must not be empty")
        if want.policy not in POLICIES:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"Invalid policy {want.policy}")
        rules = dict(want.rules)
        if set(rules) - {"max_server_per_host"}:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "Unknown server group rule")
        if rules and want.policy != "anti-affinity":
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "Only anti-affinity policy supports the max_server_per_host rule",
            )
        if "max_server_per_host" in rules:
            value = rules["max_server_per_host"]
            if not (value.isascii() and value.isdigit()) or len(value) > 9 or int(value) < 1:
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "max_server_per_host must be a positive integer",
                )
        derived = not want.id and bool(request.request_id)
        group = ServerGroup(
            id=want.id
            or (id_for_request("server-group", request.request_id) if derived else new_uuid()),
            name=want.name,
            project_id=want.project_id,
            user_id=want.user_id,
            policy=want.policy,
            rules=rules,
            created_at=now(),
        )
        async with self._sessions.begin() as s:
            existing = await s.get(ServerGroup, group.id)
            if existing is not None and derived and existing.project_id == group.project_id:
                # A retry of the same request: answer as the first attempt did.
                members = await self._members(s, [existing.id])
                return server_groups_pb2.CreateServerGroupResponse(
                    group=self._pb(existing, members[existing.id])
                )
            if existing is not None:
                await abort(context, grpc.StatusCode.ALREADY_EXISTS, f"group {group.id} exists")
            limit = await s.scalar(
                select(Quota.hard_limit).where(
                    Quota.project_id == want.project_id, Quota.resource == "server_groups"
                )
            )
            limit = self._default_quota if limit is None else int(limit)
            count = await s.scalar(
                select(func.count())
                .select_from(ServerGroup)
                .where(ServerGroup.project_id == want.project_id)
            )
            if limit >= 0 and (count or 0) >= limit:
                await abort(
                    context,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "Quota exceeded, too many server groups.",
                )
            s.add(group)
        return server_groups_pb2.CreateServerGroupResponse(group=self._pb(group, []))

    async def GetServerGroup(
        self, request: server_groups_pb2.GetServerGroupRequest, context: Any
    ) -> Any:
        async with self._sessions() as s:
            group = await self._get(s, context, request.id, request.project_id)
            members = await self._members(s, [group.id])
        return server_groups_pb2.GetServerGroupResponse(group=self._pb(group, members[group.id]))

    async def ListServerGroups(
        self, request: server_groups_pb2.ListServerGroupsRequest, context: Any
    ) -> Any:
        query = select(ServerGroup).order_by(ServerGroup.created_at, ServerGroup.id)
        if request.project_id:
            query = query.where(ServerGroup.project_id == request.project_id)
        if request.offset:
            query = query.offset(request.offset)
        if request.limit:
            query = query.limit(request.limit)
        async with self._sessions() as s:
            groups = list(await s.scalars(query))
            members = await self._members(s, [g.id for g in groups]) if groups else {}
        return server_groups_pb2.ListServerGroupsResponse(
            groups=[self._pb(g, members[g.id]) for g in groups]
        )

    async def DeleteServerGroup(
        self, request: server_groups_pb2.DeleteServerGroupRequest, context: Any
    ) -> Any:
        async with self._sessions.begin() as s:
            group = await self._get(s, context, request.id, request.project_id)
            await s.delete(group)
        return server_groups_pb2.DeleteServerGroupResponse()
