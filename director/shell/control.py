"""The control socket: a Unix stream socket, owner root, mode 0600.

One request per connection, one JSON line each way (``director.ctl.protocol``); the
request is handed to ``director.ctl.dispatch`` with the daemon as its target.  Requests
are served one at a time between packet batches, so a change is never seen half-done
by the packet path.

Nothing a client does can hold the daemon's loop: every connection is read and
answered without blocking, as its socket becomes ready, so a client that sends one
byte a second (or never reads its answer) costs the loop nothing.  A whole request
must arrive within REQUEST_TIMEOUT and its answer be taken within REPLY_TIMEOUT, else
the connection is closed (a late request gets a one-line refusal first).  At most
MAX_CLIENTS connections are open at once; one more is refused at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import selectors
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from director.ctl.dispatch import dispatch_bytes
from director.ctl.target import ControlTarget

log = logging.getLogger(__name__)

MAX_REQUEST = 4 << 20  # a restore of tens of thousands of lines still fits
REQUEST_TIMEOUT = 5.0  # from accept to the request's last byte, whatever the pace
REPLY_TIMEOUT = 30.0  # from the request's end until the client has taken the answer
MAX_CLIENTS = 16
WHERE = "control"  # the selector callbacks' name in the daemon's error count
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


class _Client:
    """One connection: the request read so far, then the answer left to send."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.request = bytearray()
        self.reply: memoryview | None = None  # set once the request is answered


class ControlServer:
    def __init__(
        self,
        path: Path,
        target: ControlTarget,
        group: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.target = target
        self.group = group
        self.clock = clock
        self.clients: dict[int, _Client] = {}
        self._selector: selectors.BaseSelector | None = None
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

    def register(self, selector: selectors.BaseSelector) -> None:
        """Serve from the daemon's selector: the listening socket, then each client's.
        Each key's data is (WHERE, callback), as the daemon's loop expects."""
        self._selector = selector
        selector.register(self.sock, selectors.EVENT_READ, (WHERE, self.accept))

    def accept(self) -> None:
        """Take the connections waiting; refuse who may not use the socket."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            client = _Client(conn, self.clock() + REQUEST_TIMEOUT)
            self.clients[conn.fileno()] = client
            if self._selector is not None:
                self._selector.register(conn, selectors.EVENT_READ, self._callback(client))
            _, uid, gid = peer_credentials(conn)
            if not may_use(uid, gid, self.group, os.getuid()):
                log.warning("control socket: refused uid %d", uid)
                self._answer(client, _refusal(f"permission denied for uid {uid}"))
            elif len(self.clients) > MAX_CLIENTS:
                log.warning("control socket: %d clients already, one refused", MAX_CLIENTS)
                self._answer(client, _refusal(f"busy: {MAX_CLIENTS} requests in progress"))

    def _callback(self, client: _Client) -> tuple[str, Callable[[], None]]:
        return (WHERE, lambda: self._on_ready(client))

    def _on_ready(self, client: _Client) -> None:
        if client.reply is None:
            self._read(client)
        else:
            self._write(client)

    def _read(self, client: _Client) -> None:
        try:
            chunk = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.request += chunk
        if len(client.request) > MAX_REQUEST:
            self._answer(client, _refusal("bad request: request too large"))
        elif not chunk or client.request.endswith(b"\n"):
            self._answer(client, dispatch_bytes(self.target, bytes(client.request)))

    def _answer(self, client: _Client, reply: bytes) -> None:
        """Start sending ``reply``; nothing more is read from this client."""
        client.request = bytearray()
        client.reply = memoryview(reply)
        client.deadline = self.clock() + REPLY_TIMEOUT
        if self._selector is not None and client.sock.fileno() in self.clients:
            self._selector.modify(client.sock, selectors.EVENT_WRITE, self._callback(client))
        self._write(client)

    def _write(self, client: _Client) -> None:
        assert client.reply is not None
        try:
            sent = client.sock.send(client.reply)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.reply = client.reply[sent:]
        if not client.reply:
            self._drop(client)

    def expire(self) -> None:
        """Close what ran out of time: a request not complete within REQUEST_TIMEOUT
        is answered with a refusal (if the client takes it now), an answer not taken
        within REPLY_TIMEOUT is dropped."""
        now = self.clock()
        for client in [c for c in self.clients.values() if c.deadline <= now]:
            if client.reply is None:
                log.warning("control socket: a request not complete in %.0f s", REQUEST_TIMEOUT)
                reason = f"bad request: not complete within {REQUEST_TIMEOUT:.0f} s"
                with contextlib.suppress(OSError):
                    client.sock.send(_refusal(reason))
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if self.clients.pop(fd, None) is None:
            return
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(client.sock)
        client.sock.close()

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client)
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self.sock)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _refusal(reason: str) -> bytes:
    message: dict[str, Any] = {"version": 1, "ok": False, "error": reason, "fault": "caller"}
    return json.dumps(message).encode() + b"\n"
