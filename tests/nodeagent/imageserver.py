"""A real HTTP server speaking the one Image v2 call the agent makes, for the cache's tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ImageServer:
    """Serves `images` (id → bytes) at /v2/images/<id>/file; records what it was asked."""

    images: dict[str, bytes]
    url: str = ""
    delay_s: float = 0.0
    # Announce more bytes than are sent, then close: a download cut off midway.
    truncate: bool = False
    requests: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, path: str, token: str) -> None:
        with self._lock:
            self.requests.append(path)
            self.tokens.append(token)


@contextmanager
def image_server(
    images: dict[str, bytes], delay_s: float = 0.0, truncate: bool = False
) -> Iterator[ImageServer]:
    state = ImageServer(images=images, delay_s=delay_s, truncate=truncate)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.record(self.path, self.headers.get("X-Auth-Token", ""))
            parts = self.path.strip("/").split("/")
            data = None
            if len(parts) == 4 and parts[:2] == ["v2", "images"] and parts[3] == "file":
                data = state.images.get(parts[2])
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data) + (4096 if state.truncate else 0)))
            self.end_headers()
            # Half now, half after the delay: a second build arrives mid-download.
            half = len(data) // 2
            self.wfile.write(data[:half])
            self.wfile.flush()
            time.sleep(state.delay_s)
            self.wfile.write(data[half:])
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
