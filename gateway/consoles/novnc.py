"""The noVNC web client, served from Debian's `novnc` package when it is installed."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response

from gateway.state import gateway_of

MISSING = (
    "The noVNC web client is not installed on this gateway's host: run "
    "`apt-get install novnc` (or point gateway.novnc_dir at a noVNC copy). "
    "The console proxy itself (/vnc/websockify) works without it.\n"
)


def resolve(root: Path, relative: str) -> Path | None:
    """The file under root that relative names, or None (absent, a folder, or outside root)."""
    try:
        base = root.resolve(strict=True)
        target = (base / relative).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(base) or not target.is_file():
        return None
    return target


async def novnc_file(request: Request) -> Response:
    root = Path(gateway_of(request).cfg.novnc_dir)
    if not (root / "vnc_lite.html").is_file():
        return PlainTextResponse(MISSING, status_code=404)
    target = resolve(root, request.path_params["path"] or "vnc_lite.html")
    if target is None:
        return PlainTextResponse("No such file in the noVNC client.\n", status_code=404)
    return FileResponse(target)
