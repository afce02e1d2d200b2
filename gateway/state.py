"""What every handler needs, hung on the Starlette app: config, conductor, signer, store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from controlplane.config import GatewayConfig, TlsConfig
from gateway.auth.throttle import SignInThrottle
from gateway.auth.tokens import TokenSigner
from gateway.conductor import Conductor
from gateway.image.store import ImageStore
from gateway.microversion import MIN_VERSION, Microversion


@dataclass
class Gateway:
    cfg: GatewayConfig
    conductor: Conductor
    signer: TokenSigner
    image_store: ImageStore
    # TLS for the console proxy's calls to agents' ComputeService (None: plaintext).
    agent_tls: TlsConfig | None = None
    # Failed password sign-ins, per user and per source address (gateway/auth/throttle.py).
    sign_ins: SignInThrottle = field(default_factory=SignInThrottle)


def gateway_of(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def request_id(request: Request) -> str:
    rid: str = request.scope.get("loom.request_id", "")
    return rid


def microversion(request: Request) -> Microversion:
    mv: Microversion = request.scope.get("loom.microversion", MIN_VERSION)
    return mv


def base_url(request: Request) -> str:
    """The public base URL: configured, or what the client used to reach us."""
    gw = gateway_of(request)
    if gw.cfg.public_url:
        return gw.cfg.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


async def json_body(request: Request) -> Any:
    from gateway.errors import BadRequest

    raw = await request.body()
    if not raw:
        raise BadRequest("The request body is empty; a JSON document was expected.")
    import json

    try:
        return json.loads(raw)
    except ValueError:
        raise BadRequest("Malformed request body: not valid JSON.") from None
