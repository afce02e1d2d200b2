"""The metadata HTTP server of one network on one host, run inside its DHCP namespace.

Started by `MetadataService.ensure` as `python -I metadata_server.py ...` (standard library
only, so it starts fast and imports nothing of the agent). It answers from files the agent
writes: `<root>/<source ip>.json` holds every document of the instance holding that fixed
IP, as `{"port_id": ..., "files": {path: base64}}`, listings of folders included. A
request is answered from the file of its source address (anti-spoofing on the port holds
the source to the port's fixed IP); an unknown source or path is a 404. Files are read
per request: the agent changes them without telling the server.

It binds before it detaches, then writes its pid file: when the starting command returns,
the server answers (the same contract as dnsmasq's).
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

# The access log is cut back to nothing past this size: a guest polling in a loop must not
# fill the host's disk.
_LOG_LIMIT = 1024 * 1024


def _documents(root: Path, source: str) -> dict[str, str] | None:
    try:
        ipaddress.IPv4Address(source)
        raw = json.loads((root / f"{source}.json").read_text())
    except (OSError, ValueError):
        return None
    files = raw.get("files")
    return files if isinstance(files, dict) else None


class MetadataHandler(BaseHTTPRequestHandler):
    server_version = "loom-metadata"
    sys_version = ""
    root: Path = Path()

    def _answer(self, with_body: bool) -> None:
        files = _documents(self.root, self.client_address[0])
        path = unquote(urlsplit(self.path).path).strip("/")
        body = None
        if files is not None and path in files:
            try:
                body = base64.b64decode(files[path], validate=True)
            except ValueError:
                body = None
        if body is None:
            body, status, kind = b"404 Not Found\n", 404, "text/plain"
        else:
            status = 200
            kind = "application/json" if path.endswith(".json") else "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, format: str, *args: object) -> None:
        try:
            if os.fstat(2).st_size > _LOG_LIMIT:
                os.ftruncate(2, 0)
        except OSError:
            pass
        sys.stderr.write(f"{self.client_address[0]} {format % args}\n")
        sys.stderr.flush()


def _detach(pid_file: Path) -> None:
    """Double fork: the server is reparented away from its starter and leads no terminal.
    The starter exits only once the pid file is written."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        ok = os.read(read_end, 1) == b"1"
        os._exit(0 if ok else 1)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    tmp = pid_file.with_name(pid_file.name + ".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(pid_file)
    os.write(write_end, b"1")
    os.close(write_end)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--pid-file", required=True, type=Path)
    parser.add_argument("--log-file", required=True, type=Path)
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, default=80)
    args = parser.parse_args(argv)

    class Handler(MetadataHandler):
        root = args.root

    server = ThreadingHTTPServer((args.address, args.port), Handler)
    server.daemon_threads = True
    log = os.open(args.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    _detach(args.pid_file)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
