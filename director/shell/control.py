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
import pwd
import socket
import struct
from pathlib import Path
from typing import Any

from director.ctl.dispatch import dispatch
from director.ctl.target import ControlTarget

log = logging.getLogger(__name__)

MAX_REQUEST = 4 << 20  # a restore of tens of thousands of lines still fits
CLIENT_TIMEOUT = 2.0  # requests are read between packet batches: keep a stall short
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """SO_PEERCRED: the pid, uid and gid of the process at the other end."""
    pid, uid, gid = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return pid, uid, gid


def may_use(uid: int, gid: int, group: int | None, own_uid: int) -> bool:
    """Root, the daemon's own user, or a member of the configured control group."""
    if uid in (0, own_uid):
        return True
    if group is None:
        return False
    if gid == group:
        return True
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return False
    return group in os.getgrouplist(name, gid)


class ControlServer:
    def __init__(self, path: Path, target: ControlTarget, group: int | None = None) -> None:
        self.path = path
        self.target = target
        self.group = group
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(path))
        finally:
            os.umask(old)
        if group is None:
            os.chmod(path, 0o600)
        else:
            os.chown(path, -1, group)
            os.chmod(path, 0o660)
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
            _, uid, gid = peer_credentials(conn)
            if not may_use(uid, gid, self.group, os.getuid()):
                log.warning("control socket: refused uid %d", uid)
                response = _refusal(f"permission denied for uid {uid}")
            else:
                try:
                    response = dispatch(self.target, _read_request(conn))
                except (OSError, ValueError) as err:
                    response = _refusal(f"bad request: {err}")
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(response).encode() + b"\n")

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _refusal(reason: str) -> dict[str, Any]:
    return {"version": 1, "ok": False, "error": reason, "fault": "caller"}


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
