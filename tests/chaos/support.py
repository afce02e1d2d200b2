"""What the chaos scenarios share: an image to boot, and the layout of two of each
control-plane service on ports of their own."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from bench.client import CloudEndpoint
from controlplane.config import NatsConfig
from controlplane.runtime import bus
from controlplane.runtime.natsserver import NatsCluster, free_port
from tests.support.stack import Stack


def headers(cloud: CloudEndpoint, version: str = "2.37") -> dict[str, str]:
    return {"X-Auth-Token": cloud.token, "OpenStack-API-Version": f"compute {version}"}


async def lift_quotas(http: httpx.AsyncClient, admin: CloudEndpoint, project_id: str) -> None:
    """No instance, core or RAM limit for the project: a storm is bounded by the hosts."""
    lifted = await http.put(
        f"{admin.compute_url}/os-quota-sets/{project_id}",
        json={"quota_set": {"instances": -1, "cores": -1, "ram": -1}},
        headers=headers(admin),
    )
    assert lifted.status_code == 200, lifted.text


async def public_image(
    http: httpx.AsyncClient, stack: Stack, admin: CloudEndpoint, name: str
) -> str:
    """A public raw image of 64 KiB, uploaded through the gateway; returns its id."""
    images = f"{stack.gateway_url}/image/v2/images"
    made = await http.post(
        images,
        json={"name": name, "disk_format": "raw", "container_format": "bare"}
        | {"visibility": "public"},
        headers=headers(admin),
    )
    assert made.status_code == 201, made.text
    image_id = str(made.json()["id"])
    put = await http.put(
        f"{images}/{image_id}/file",
        content=b"\0" * 65536,
        headers={**headers(admin), "Content-Type": "application/octet-stream"},
    )
    assert put.status_code == 204, put.text
    return image_id


def targets(ports: list[int]) -> str:
    """A gRPC target naming every replica (calls are spread round robin)."""
    return "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)


@dataclass
class Layout:
    """Two of each control-plane service, each replica on a port of its own."""

    stack: Stack
    scheduler_ports: list[int]
    conductor_ports: list[int]
    gateway_ports: list[int]

    @classmethod
    def of(cls, stack: Stack) -> Layout:
        return cls(
            stack,
            [stack.scheduler_port, free_port()],
            [stack.conductor_port, free_port()],
            [stack.gateway_port, free_port()],
        )

    def shared_env(self) -> dict[str, str]:
        return {
            "LOOM_NATS__STREAM_REPLICAS": "3",
            "LOOM_CONDUCTOR__SCHEDULER_TARGET": targets(self.scheduler_ports),
            "LOOM_GATEWAY__CONDUCTOR_TARGET": targets(self.conductor_ports),
            "LOOM_GATEWAY__SCHEDULER_TARGET": targets(self.scheduler_ports),
            "LOOM_AGENT__CONDUCTOR_TARGET": targets(self.conductor_ports),
            "LOOM_AGENT__HEARTBEAT_INTERVAL": "1",
        }

    def start_control_plane(self) -> None:
        """The schedulers and conductors, one at a time: the first conductor seeds the
        catalog."""
        for i, port in enumerate(self.scheduler_ports):
            self.stack.start(f"scheduler#{i}", env={"LOOM_SCHEDULER__LISTEN": f"127.0.0.1:{port}"})
        for i, port in enumerate(self.conductor_ports):
            self.stack.start(f"conductor#{i}", env={"LOOM_CONDUCTOR__LISTEN": f"127.0.0.1:{port}"})

    def start_gateways(self) -> None:
        """The gateways, one at a time: the first makes the token keys the second then
        shares (same data directory)."""
        for i, port in enumerate(self.gateway_ports):
            self.stack.start(f"gateway#{i}", env={"LOOM_GATEWAY__PORT": str(port)})


async def stream_leader(cluster: NatsCluster, stream: str) -> int:
    """The index of the cluster node leading the stream."""
    nc = await bus.connect(cluster.url, NatsConfig(), "chaos-observer", max_reconnect_attempts=3)
    try:
        info = await nc.jetstream().stream_info(stream)
    finally:
        await nc.close()
    leader = info.cluster.leader if info.cluster else None
    names = [n.cluster.server_name if n.cluster else "" for n in cluster.nodes]
    return names.index(str(leader))
