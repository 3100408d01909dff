"""The control socket: peer credentials decide who may use it; requests are bounded."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
from pathlib import Path

from director.shell.control import MAX_REQUEST, ControlServer, may_use
from tests.conftest import MakeTarget
from tests.skips import unavailable

NOBODY = 65534


def test_who_may_use_it():
    assert may_use(0, 0, None, own_uid=0)
    assert may_use(1000, 1000, None, own_uid=1000)  # the daemon's own user
    assert not may_use(NOBODY, NOBODY, None, own_uid=0)
    assert may_use(NOBODY, 4242, 4242, own_uid=0)  # primary group is the control group
    assert not may_use(NOBODY, NOBODY, 4242, own_uid=0)


def _serve(server: ControlServer, count: int) -> threading.Thread:
    def loop() -> None:
        import select

        for _ in range(count):
            select.select([server], [], [], 5)
            server.serve_one()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _ask(path: Path, payload: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        with contextlib.suppress(BrokenPipeError):
            sock.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer: dict[str, object] = json.loads(data)
    return answer


def test_another_user_is_refused_and_root_is_served(make_target: MakeTarget) -> None:
    if os.geteuid() != 0:
        unavailable("needs root to connect as another user")
    where = Path(tempfile.mkdtemp(prefix="director-control-"))
    where.chmod(0o755)  # pytest's own temporary folders are closed to other users
    path = where / "control.sock"
    server = ControlServer(path, make_target())
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    os.chmod(path, 0o666)  # let the other user reach it: only the credentials check stays
    thread = _serve(server, 2)
    request = json.dumps({"version": 1, "command": "save", "args": {}}).encode() + b"\n"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child becomes nobody and asks
        os.close(read)
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write, json.dumps(_ask(path, request)).encode())
        finally:
            os._exit(0)
    os.close(write)
    child_answer = json.loads(os.read(read, 65536))
    os.waitpid(pid, 0)
    assert child_answer["ok"] is False and "permission denied" in child_answer["error"]
    assert _ask(path, request)["ok"] is True
    thread.join(5)
    server.close()
    where.rmdir()


def test_an_oversized_request_is_refused(tmp_path: Path, make_target: MakeTarget) -> None:
    path = tmp_path / "control.sock"
    server = ControlServer(path, make_target())
    thread = _serve(server, 1)
    answer = _ask(path, b"x" * (MAX_REQUEST + 65536))
    assert answer["ok"] is False and "too large" in str(answer["error"])
    thread.join(5)
    server.close()
