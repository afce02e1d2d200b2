"""Running a service until SIGTERM or SIGINT, then stopping it cleanly; and ending with
the supervisor that started it."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """The calling process gets SIGTERM when its parent dies (Linux PR_SET_PDEATHSIG), so a
    supervisor killed with SIGKILL leaves no orphans behind.

    Safe as a subprocess `preexec_fn` only before this process has opened a gRPC channel:
    a preexec_fn makes Popen fork() instead of vfork(), and gRPC's fork handlers can hang
    that fork for good."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def exit_with_parent(parent_pid: int) -> None:
    """What `die_with_parent` does, called by the child itself, first thing: its supervisor
    can then start it with plain vfork() (no preexec_fn). A supervisor that died before the
    call is caught by the parent check that follows it."""
    die_with_parent()
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`; a second signal is left to the default handler."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
