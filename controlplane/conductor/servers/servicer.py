"""loom.conductor.v1.ServersService: the gRPC face of servers/create, query and actions."""

from __future__ import annotations

from typing import TypeAlias

import grpc
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import servers_pb2, servers_pb2_grpc
from sqlalchemy import select

from controlplane.conductor.context import Conductor
from controlplane.conductor.convert import action_pb, server_pb
from controlplane.conductor.servers import actions
from controlplane.conductor.servers.create import create_servers
from controlplane.conductor.servers.query import list_servers, load_instance
from controlplane.db.models import InstanceAction, InstanceActionEvent
from controlplane.runtime.errors import InvalidArgument, NotFound
from controlplane.runtime.rpc import grpc_errors

Ctx: TypeAlias = grpc.aio.ServicerContext
_SimpleRequest: TypeAlias = (
    servers_pb2.ShelveServerRequest
    | servers_pb2.ShelveOffloadServerRequest
    | servers_pb2.PauseServerRequest
    | servers_pb2.UnpauseServerRequest
    | servers_pb2.SuspendServerRequest
    | servers_pb2.ResumeServerRequest
)


class ServersServicer(servers_pb2_grpc.ServersServiceServicer):
    def __init__(self, conductor: Conductor) -> None:
        self._c = conductor

    @grpc_errors
    async def CreateServers(
        self, request: servers_pb2.CreateServersRequest, context: Ctx
    ) -> servers_pb2.CreateServersResponse:
        result = await create_servers(self._c, request)
        return servers_pb2.CreateServersResponse(
            servers=[server_pb(r) for r in result.servers], reservation_id=result.reservation_id
        )

    @grpc_errors
    async def GetServer(
        self, request: servers_pb2.GetServerRequest, context: Ctx
    ) -> servers_pb2.GetServerResponse:
        async with self._c.sessions() as session:
            row = await load_instance(
                session, request.id, request.project_id, include_deleted=request.include_deleted
            )
        return servers_pb2.GetServerResponse(server=server_pb(row))

    @grpc_errors
    async def ListServers(
        self, request: servers_pb2.ListServersRequest, context: Ctx
    ) -> servers_pb2.ListServersResponse:
        async with self._c.sessions() as session:
            page = await list_servers(session, request, self._c.cfg.conductor.max_limit)
        return servers_pb2.ListServersResponse(
            servers=[server_pb(r) for r in page.servers], next_marker=page.next_marker
        )

    @grpc_errors
    async def UpdateServer(
        self, request: servers_pb2.UpdateServerRequest, context: Ctx
    ) -> servers_pb2.UpdateServerResponse:
        values: dict[str, object] = {}
        for field in ("name", "description", "access_ipv4", "access_ipv6", "hostname"):
            if request.HasField(field):
                values[field] = getattr(request, field)
        row = await actions.update_server(self._c, request.id, request.project_id, values)
        return servers_pb2.UpdateServerResponse(server=server_pb(row))

    @grpc_errors
    async def DeleteServer(
        self, request: servers_pb2.DeleteServerRequest, context: Ctx
    ) -> servers_pb2.DeleteServerResponse:
        shelved = await actions.delete_server(
            self._c,
            request.id,
            request.project_id,
            request.user_id,
            request.request_id,
            override_lock=request.override_lock,
            force=request.force,
        )
        return servers_pb2.DeleteServerResponse(shelved_image_id=shelved)

    @grpc_errors
    async def RestoreServer(
        self, request: servers_pb2.RestoreServerRequest, context: Ctx
    ) -> servers_pb2.RestoreServerResponse:
        await actions.restore_server(
            self._c,
            request.id,
            request.project_id,
            request.user_id,
            request.request_id,
            override_lock=request.override_lock,
        )
        return servers_pb2.RestoreServerResponse()

    @grpc_errors
    async def InjectNetworkInfo(
        self, request: servers_pb2.InjectNetworkInfoRequest, context: Ctx
    ) -> servers_pb2.InjectNetworkInfoResponse:
        await actions.inject_network_info(
            self._c,
            request.id,
            request.project_id,
            request.request_id,
            override_lock=request.override_lock,
        )
        return servers_pb2.InjectNetworkInfoResponse()

    @grpc_errors
    async def SnapshotServer(
        self, request: servers_pb2.SnapshotServerRequest, context: Ctx
    ) -> servers_pb2.SnapshotServerResponse:
        backup = None
        if request.HasField("backup"):
            if request.backup.rotation < 0:
                raise InvalidArgument("A backup's rotation cannot be negative.")
            backup = agent_bus_pb2.BackupRotation(
                backup_type=request.backup.backup_type, rotation=request.backup.rotation
            )
        await actions.snapshot_server(
            self._c,
            request.id,
            request.project_id,
            request.user_id,
            request.request_id,
            request.image_id,
            override_lock=request.override_lock,
            backup=backup,
        )
        return servers_pb2.SnapshotServerResponse()

    @grpc_errors
    async def StartServer(
        self, request: servers_pb2.StartServerRequest, context: Ctx
    ) -> servers_pb2.StartServerResponse:
        await actions.power_action(
            self._c,
            "start",
            request.id,
            request.project_id,
            request.user_id,
            request.request_id,
            override_lock=request.override_lock,
        )
        return servers_pb2.StartServerResponse()

    @grpc_errors
    async def StopServer(
        self, request: servers_pb2.StopServerRequest, context: Ctx
    ) -> servers_pb2.StopServerResponse:
        await actions.power_action(
            self._c,
            "stop",
            request.id,
            request.project_id,
            request.user_id,
            request.request_id,
            override_lock=request.override_lock,
        )
        return servers_pb2.StopServerResponse()

    @grpc_errors
    async def RebootServer(
        self, request: servers_pb2.RebootServerRequest, context: Ctx
    ) -> servers_pb2.RebootServerResponse:
        await actions.power_action(
            self._c,
            "reboot",
            request.id,
            request.project_id,
            request.user_id,
            request.request_id,
            hard=request.reboot_type == agent_bus_pb2.REBOOT_TYPE_HARD,
            override_lock=request.override_lock,
        )
        return servers_pb2.RebootServerResponse()

    @grpc_errors
    async def SetServerMetadata(
        self, request: servers_pb2.SetServerMetadataRequest, context: Ctx
    ) -> servers_pb2.SetServerMetadataResponse:
        merged = await actions.set_metadata(
            self._c,
            request.id,
            request.project_id,
            dict(request.metadata),
            replace=request.replace,
            override_lock=request.override_lock,
        )
        return servers_pb2.SetServerMetadataResponse(metadata=merged)

    @grpc_errors
    async def SetServerTags(
        self, request: servers_pb2.SetServerTagsRequest, context: Ctx
    ) -> servers_pb2.SetServerTagsResponse:
        tags, changed = await actions.set_tags(
            self._c,
            request.id,
            request.project_id,
            list(request.tags),
            replace=request.replace,
            remove=list(request.remove),
        )
        return servers_pb2.SetServerTagsResponse(tags=tags, changed=changed)

    @grpc_errors
    async def DeleteServerMetadataItem(
        self, request: servers_pb2.DeleteServerMetadataItemRequest, context: Ctx
    ) -> servers_pb2.DeleteServerMetadataItemResponse:
        await actions.delete_metadata_item(
            self._c,
            request.id,
            request.project_id,
            request.key,
            override_lock=request.override_lock,
        )
        return servers_pb2.DeleteServerMetadataItemResponse()

    @grpc_errors
    async def ListInstanceActions(
        self, request: servers_pb2.ListInstanceActionsRequest, context: Ctx
    ) -> servers_pb2.ListInstanceActionsResponse:
        async with self._c.sessions() as session:
            await load_instance(session, request.id, request.project_id, include_deleted=True)
            rows = (
                await session.execute(
                    select(InstanceAction)
                    .where(InstanceAction.instance_uuid == request.id)
                    .order_by(InstanceAction.start_time.desc(), InstanceAction.id.desc())
                )
            ).scalars()
            return servers_pb2.ListInstanceActionsResponse(actions=[action_pb(a) for a in rows])

    @grpc_errors
    async def GetInstanceAction(
        self, request: servers_pb2.GetInstanceActionRequest, context: Ctx
    ) -> servers_pb2.GetInstanceActionResponse:
        async with self._c.sessions() as session:
            await load_instance(session, request.id, request.project_id, include_deleted=True)
            action = (
                await session.execute(
                    select(InstanceAction).where(
                        InstanceAction.instance_uuid == request.id,
                        InstanceAction.request_id == request.request_id,
                    )
                )
            ).scalar_one_or_none()
            if action is None:
                raise NotFound(f"Action {request.request_id} could not be found.")
            events = (
                await session.execute(
                    select(InstanceActionEvent)
                    .where(InstanceActionEvent.action_id == action.id)
                    .order_by(InstanceActionEvent.id)
                )
            ).scalars()
            return servers_pb2.GetInstanceActionResponse(action=action_pb(action, list(events)))

    async def _simple(self, verb: str, request: _SimpleRequest, image_id: str = "") -> None:
        await actions.simple_action(
            self._c,
            verb,
            request.id,
            request.project_id,
            request.user_id,
            request.request_id,
            override_lock=request.override_lock,
            image_id=image_id,
        )

    @grpc_errors
    async def PauseServer(
        self, request: servers_pb2.PauseServerRequest, context: Ctx
    ) -> servers_pb2.PauseServerResponse:
        await self._simple("pause", request)
        return servers_pb2.PauseServerResponse()

    @grpc_errors
    async def UnpauseServer(
        self, request: servers_pb2.UnpauseServerRequest, context: Ctx
    ) -> servers_pb2.UnpauseServerResponse:
        await self._simple("unpause", request)
        return servers_pb2.UnpauseServerResponse()

    @grpc_errors
    async def SuspendServer(
        self, request: servers_pb2.SuspendServerRequest, context: Ctx
    ) -> servers_pb2.SuspendServerResponse:
        await self._simple("suspend", request)
        return servers_pb2.SuspendServerResponse()

    @grpc_errors
    async def ResumeServer(
        self, request: servers_pb2.ResumeServerRequest, context: Ctx
    ) -> servers_pb2.ResumeServerResponse:
        await self._simple("resume", request)
        return servers_pb2.ResumeServerResponse()

    @grpc_errors
    async def LockServer(
        self, request: servers_pb2.LockServerRequest, context: Ctx
    ) -> servers_pb2.LockServerResponse:
        await actions.set_lock(
            self._c,
            request.id,
            request.project_id,
            request.user_id,
            request.request_id,
            locked=True,
            locked_by="admin" if request.locked_by == "admin" else "owner",
            reason=request.locked_reason if request.HasField("locked_reason") else None,
        )
        return servers_pb2.LockServerResponse()

    @grpc_errors
    async def UnlockServer(
        self, request: servers_pb2.UnlockServerRequest, context: Ctx
    ) -> servers_pb2.UnlockServerResponse:
        await actions.set_lock(
            self._c,
            request.id,
            request.project_id,
            request.user_id,
            request.request_id,
            locked=False,
        )
        return servers_pb2.UnlockServerResponse()

    @grpc_errors
    async def ShelveServer(
        self, request: servers_pb2.ShelveServerRequest, context: Ctx
    ) -> servers_pb2.ShelveServerResponse:
        await self._simple("shelve", request, request.image_id)
        return servers_pb2.ShelveServerResponse()

    @grpc_errors
    async def ShelveOffloadServer(
        self, request: servers_pb2.ShelveOffloadServerRequest, context: Ctx
    ) -> servers_pb2.ShelveOffloadServerResponse:
        await self._simple("shelve_offload", request)
        return servers_pb2.ShelveOffloadServerResponse()

    @grpc_errors
    async def UnshelveServer(
        self, request: servers_pb2.UnshelveServerRequest, context: Ctx
    ) -> servers_pb2.UnshelveServerResponse:
        await actions.unshelve(
            self._c,
            request.id,
            request.project_id,
            request.user_id,
            request.request_id,
            override_lock=request.override_lock,
            availability_zone=(
                request.availability_zone if request.HasField("availability_zone") else None
            ),
            host=request.host,
        )
        return servers_pb2.UnshelveServerResponse()

    @grpc_errors
    async def RebuildServer(
        self, request: servers_pb2.RebuildServerRequest, context: Ctx
    ) -> servers_pb2.RebuildServerResponse:
        row = await actions.rebuild(self._c, request)
        return servers_pb2.RebuildServerResponse(server=server_pb(row))

    @grpc_errors
    async def ResetServerState(
        self, request: servers_pb2.ResetServerStateRequest, context: Ctx
    ) -> servers_pb2.ResetServerStateResponse:
        row = await actions.reset_state(self._c, request.id, request.state)
        return servers_pb2.ResetServerStateResponse(server=server_pb(row))
