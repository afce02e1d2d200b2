"""Running a service until SIGTERM or SIGINT, then stopping it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`; a second signal is left to the default handler."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
