"""Process counters for benchmarks: SQL statements this process executed.

Every engine made by controlplane.db.engine.make_engine counts into `STATS`. When the
configuration's stats_dir (LOOM_STATS_DIR) is set, a daemon thread writes
`<dir>/<service>-<pid>.json` twice a second and once more at exit, so a benchmark can
read counts from processes it did not start in-process ("counted, not guessed").
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from pathlib import Path
from typing import Any


class ProcessStats:
    def __init__(self) -> None:
        self.statements = 0
        self._lock = threading.Lock()

    def count_statement(self, *_args: Any, **_kwargs: Any) -> None:
        # Called from SQLAlchemy's before_cursor_execute; the GIL makes += safe enough
        # for a counter read twice a second, but the lock keeps it exact under threads.
        with self._lock:
            self.statements += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"statements": self.statements}


STATS = ProcessStats()


def start_stats_writer(service: str, directory: str) -> None:
    """Starts the writer when directory is not empty; otherwise does nothing."""
    if not directory:
        return
    path = Path(directory) / f"{service}-{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"service": service, "pid": os.getpid(), **STATS.snapshot()}))
        tmp.replace(path)

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.5):
            write()

    threading.Thread(target=loop, name="loom-stats", daemon=True).start()
    atexit.register(write)
