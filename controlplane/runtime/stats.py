"""The SQL statements this process executed: a Prometheus counter, and a file for benchmarks.

Every engine made by controlplane.db.engine.make_engine counts into `STATS` (statements
that bypass SQLAlchemy count themselves), which is `loom_sql_statements_total` on
/metrics. When the configuration's stats_dir (LOOM_STATS_DIR) is set, a daemon thread also
writes the count to `<dir>/<service>-<pid>.json` twice a second and once more at exit, so a
benchmark reads counts from processes it did not start in-process, metrics endpoint or not.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import Counter

SQL_STATEMENTS = Counter(
    "loom_sql_statements",
    "SQL statements this process sent to the database.",
)
_SAMPLE = "loom_sql_statements_total"


class ProcessStats:
    """The statement counter as the benchmark and the engines use it."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._inc = counter.inc

    def count_statement(self, *_args: Any, **_kwargs: Any) -> None:
        # Called from SQLAlchemy's before_cursor_execute: one counter increment.
        self._inc()

    def snapshot(self) -> dict[str, int]:
        for family in self._counter.collect():
            for sample in family.samples:
                if sample.name == _SAMPLE:
                    return {"statements": int(sample.value)}
        return {"statements": 0}


STATS = ProcessStats(SQL_STATEMENTS)


def start_stats_writer(service: str, directory: str) -> Callable[[], None]:
    """Starts the writer when directory is not empty; otherwise does nothing. Returns a
    function that writes once more and stops it."""
    if not directory:
        return lambda: None
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

    thread = threading.Thread(target=loop, name="loom-stats", daemon=True)
    thread.start()
    atexit.register(write)

    def stop_writing() -> None:
        stop.set()
        thread.join()
        atexit.unregister(write)
        write()

    return stop_writing
