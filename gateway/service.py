"""`loom gateway`: the REST gateway on uvicorn, until `stop` is set."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn
from loom.identity.v1 import identity_pb2

from controlplane.config import LoomConfig
from controlplane.runtime.grpcserver import insecure_or_secure_channel
from controlplane.seedfile import load_or_create
from gateway.app import build_app
from gateway.auth.keys import token_keys
from gateway.auth.revocations import Revocations
from gateway.auth.tokens import TokenSigner
from gateway.clientconfig import write_client_config
from gateway.conductor import Conductor, Domain, call
from gateway.image.store import ImageStore
from gateway.scheduler import Scheduler
from gateway.state import Gateway

log = logging.getLogger("loom.gateway")


def make_gateway(cfg: LoomConfig) -> Gateway:
    domains: tuple[Domain, ...] = ("compute", "identity", "image", "catalog", "network")
    conductor = Conductor.connect(
        {domain: cfg.domain_target(domain) for domain in domains},
        # Every mutating call the gateway makes carries its request's id: a retry on
        # another replica after one died mid-call is safe.
        lambda target: insecure_or_secure_channel(target, cfg.tls, retry_unavailable=True),
    )

    async def fetch_revocations(after_id: int) -> list[identity_pb2.Revocation]:
        reply = await call(
            conductor.identity.ListRevocations,
            identity_pb2.ListRevocationsRequest(after_id=after_id),
        )
        return list(reply.revocations)

    signer = TokenSigner(
        token_keys(cfg.gateway, cfg.data_path),
        cfg.gateway.token_ttl_s,
        Revocations(fetch_revocations),
    )
    return Gateway(
        cfg=cfg.gateway,
        conductor=conductor,
        signer=signer,
        image_store=ImageStore(cfg.data_path / "images"),
        agent_tls=cfg.tls,
        scheduler=Scheduler.for_config(cfg),
    )


async def serve(cfg: LoomConfig, stop: asyncio.Event) -> None:
    gateway = make_gateway(cfg)
    app = build_app(gateway)
    sock = socket.socket(socket.AF_INET6 if ":" in cfg.gateway.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((cfg.gateway.host, cfg.gateway.port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    public = cfg.gateway.public_url or f"http://{cfg.gateway.host}:{port}"
    clouds = write_client_config(
        cfg.data_path, load_or_create(cfg.data_path), public, cfg.gateway.region
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    # uvicorn offers no "started" event, only a flag: poll it briefly.
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.02)
    if task.done():
        await task
        return
    log.info(
        "ready",
        extra={
            "service": "gateway",
            "port": port,
            "url": public,
            "clouds_yaml": str(clouds),
            "hint": f"OS_CLIENT_CONFIG_FILE={clouds} openstack --os-cloud loom server list"
            " (or copy it to ~/.config/openstack/clouds.yaml)",
        },
    )
    stop_wait = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await task
    stop_wait.cancel()
    await gateway.conductor.close()
    if gateway.scheduler is not None:
        await gateway.scheduler.close()
    sock.close()
    log.info("stopped", extra={"service": "gateway"})
