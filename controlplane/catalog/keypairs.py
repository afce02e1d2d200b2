"""KeypairsService: per-user keypairs, generated here when no public key is given."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from loom.catalog.v1 import keypairs_pb2, keypairs_pb2_grpc
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.catalog.sshkeys import (
    InvalidKey,
    KeyMaterial,
    generate_ssh_keypair,
    generate_x509_keypair,
    validate_ssh_public_key,
    validate_x509_certificate,
)
from controlplane.db.models import Keypair, Quota
from controlplane.runtime.rpc import abort, now, timestamp

_VALID_NAME = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_ .@")


def keypair_pb(k: Keypair) -> keypairs_pb2.Keypair:
    return keypairs_pb2.Keypair(
        id=k.id,
        name=k.name,
        user_id=k.user_id,
        public_key=k.public_key,
        fingerprint=k.fingerprint,
        type=k.type,
        created_at=timestamp(k.created_at),
    )


class KeypairsServicer(keypairs_pb2_grpc.KeypairsServiceServicer):
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        default_key_pairs_quota: int,
    ) -> None:
        self._sessions = sessions
        self._default_quota = default_key_pairs_quota

    async def _quota(self, s: AsyncSession, project_id: str) -> int:
        limit = await s.scalar(
            select(Quota.hard_limit).where(
                Quota.project_id == project_id, Quota.resource == "key_pairs"
            )
        )
        return self._default_quota if limit is None else int(limit)

    async def CreateKeypair(self, request: keypairs_pb2.CreateKeypairRequest, context: Any) -> Any:
        name = request.name
        if not name.strip() or len(name) > 255 or not set(name) <= _VALID_NAME:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "Keypair data is invalid: name must be 1-255 characters of letters, digits,"
                " spaces, '-', '_', '.' and '@'",
            )
        kind = request.type or "ssh"
        if kind not in ("ssh", "x509"):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"Invalid keypair type {kind}")
        material: KeyMaterial
        try:
            if request.public_key and kind == "ssh":
                material = validate_ssh_public_key(request.public_key)
            elif request.public_key:
                material = validate_x509_certificate(request.public_key)
            elif kind == "ssh":
                # RSA generation takes tens of milliseconds: off the event loop.
                material = await asyncio.to_thread(generate_ssh_keypair)
            else:
                material = await asyncio.to_thread(generate_x509_keypair, request.user_id)
        except InvalidKey as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        keypair = Keypair(
            user_id=request.user_id,
            project_id=request.project_id,
            name=name,
            fingerprint=material.fingerprint,
            public_key=material.public_key,
            type=kind,
            created_at=now(),
        )
        try:
            async with self._sessions.begin() as s:
                limit = await self._quota(s, request.project_id)
                count = await s.scalar(
                    select(func.count())
                    .select_from(Keypair)
                    .where(Keypair.user_id == request.user_id)
                )
                if limit >= 0 and (count or 0) >= limit:
                    await abort(
                        context,
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "Quota exceeded, too many key pairs.",
                    )
                s.add(keypair)
        except IntegrityError:
            await abort(
                context, grpc.StatusCode.ALREADY_EXISTS, f"Key pair '{name}' already exists."
            )
        return keypairs_pb2.CreateKeypairResponse(
            keypair=keypair_pb(keypair), private_key=material.private_key
        )

    async def GetKeypair(self, request: keypairs_pb2.GetKeypairRequest, context: Any) -> Any:
        async with self._sessions() as s:
            keypair = await s.scalar(
                select(Keypair).where(
                    Keypair.user_id == request.user_id, Keypair.name == request.name
                )
            )
        if keypair is None:
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"Keypair {request.name} not found for user {request.user_id}",
            )
        return keypairs_pb2.GetKeypairResponse(keypair=keypair_pb(keypair))

    async def ListKeypairs(self, request: keypairs_pb2.ListKeypairsRequest, context: Any) -> Any:
        query = select(Keypair).where(Keypair.user_id == request.user_id).order_by(Keypair.name)
        if request.marker:
            async with self._sessions() as s:
                exists = await s.scalar(
                    select(Keypair.id).where(
                        Keypair.user_id == request.user_id, Keypair.name == request.marker
                    )
                )
            if exists is None:
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"marker [{request.marker}] not found",
                )
            query = query.where(Keypair.name > request.marker)
        if request.limit:
            query = query.limit(request.limit + 1)
        async with self._sessions() as s:
            rows = list(await s.scalars(query))
        next_marker = ""
        if request.limit and len(rows) > request.limit:
            rows = rows[: request.limit]
            next_marker = rows[-1].name
        return keypairs_pb2.ListKeypairsResponse(
            keypairs=[keypair_pb(k) for k in rows], next_marker=next_marker
        )

    async def DeleteKeypair(self, request: keypairs_pb2.DeleteKeypairRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            gone = await s.execute(
                delete(Keypair)
                .where(Keypair.user_id == request.user_id, Keypair.name == request.name)
                .returning(Keypair.id)
            )
            if gone.first() is None:
                await abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"Keypair {request.name} not found for user {request.user_id}",
                )
        return keypairs_pb2.DeleteKeypairResponse()
