"""The control socket: a Unix stream socket, owner root, mode 0600.

One request per connection, one JSON line each way (``director.ctl.protocol``); the
request is handed to ``director.ctl.dispatch`` with the daemon as its target.  Requests
are served one at a time between packet batches, so a change is never seen half-done
by the packet path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from director.ctl.dispatch import dispatch
from director.ctl.target import ControlTarget

log = logging.getLogger(__name__)

MAX_REQUEST = 16 << 20  # a restore of many thousand lines still fits
CLIENT_TIMEOUT = 5.0


class ControlServer:
    def __init__(self, path: Path, target: ControlTarget) -> None:
        self.path = path
        self.target = target
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.sock.listen(16)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve_one(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(CLIENT_TIMEOUT)
            try:
                response = dispatch(self.target, _read_request(conn))
            except (OSError, ValueError) as err:
                response = {"version": 1, "ok": False, "error": f"bad request: {err}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(response).encode() + b"\n")

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _read_request(conn: socket.socket) -> dict[str, Any]:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request too large")
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("request is not an object")
    return message
