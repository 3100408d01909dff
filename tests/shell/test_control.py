"""The control socket: peer credentials decide who may use it; requests are bounded in
size, in nesting and in time, and no client can hold the loop that serves them."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dpkt.tcp import TH_SYN

from director.ctl.report import CONN_PAGE
from director.shell import control
from director.shell.control import MAX_REQUEST, ControlServer, may_use
from director.shell.daemon import Daemon
from tests.conftest import MakeTarget
from tests.core.packets import CLIENT, VIP, tcp
from tests.skips import unavailable

NOBODY = 65534
SEED_RULES = (Path(__file__).resolve().parents[2] / "rules" / "seed-nat.rules").read_text()
SAVE = json.dumps({"version": 1, "command": "save", "args": {}}).encode() + b"\n"


def test_who_may_use_it():
    assert may_use(0, 0, None, own_uid=0)
    assert may_use(1000, 1000, None, own_uid=1000)  # the daemon's own user
    assert not may_use(NOBODY, NOBODY, None, own_uid=0)
    assert may_use(NOBODY, 4242, 4242, own_uid=0)  # primary group is the control group
    assert not may_use(NOBODY, NOBODY, 4242, own_uid=0)


class Loop:
    """The daemon's loop in small: one selector, the server's callbacks and its
    expiry, in a thread; ``turns`` counts the loop's turns (it must keep turning)."""

    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.turns = 0
        self.stop = False
        self.selector = selectors.DefaultSelector()
        server.register(self.selector)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            for key, _ in self.selector.select(0.05):
                _, action = key.data
                action()
            self.server.expire()
            self.turns += 1

    def close(self) -> None:
        self.stop = True
        self.thread.join(5)
        self.server.close()
        self.selector.close()


@contextlib.contextmanager
def serving(path: Path, target: Daemon) -> Iterator[Loop]:
    loop = Loop(ControlServer(path, target))
    try:
        yield loop
    finally:
        loop.close()


def _ask(path: Path, payload: bytes, timeout: float = 10.0) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # as dirctl does: the request ends here
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
    with serving(path, make_target()):
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        os.chmod(path, 0o666)  # let the other user reach it: only the credentials check stays
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child becomes nobody and asks
            os.close(read)
            try:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                os.write(write, json.dumps(_ask(path, SAVE)).encode())
            finally:
                os._exit(0)
        os.close(write)
        child_answer = json.loads(os.read(read, 65536))
        os.waitpid(pid, 0)
        assert child_answer["ok"] is False and "permission denied" in child_answer["error"]
        assert _ask(path, SAVE)["ok"] is True
    where.rmdir()


def test_an_oversized_request_is_refused(tmp_path: Path, make_target: MakeTarget) -> None:
    with serving(tmp_path / "control.sock", make_target()) as loop:
        answer = _ask(loop.server.path, b"x" * (MAX_REQUEST + 65536))
    assert answer["ok"] is False and "too large" in str(answer["error"])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[" * 200_000 + b"\n", "nested deeper than 32 levels"),
        (b'{"version": 1, "command": "save", "args": ' + b"[" * 5000, "nested deeper"),
        (b'{"text": "' + b"[" * 5000 + b'"}\n', "unsupported protocol version"),
        (b"[", "not JSON"),
    ],
    ids=["200k-brackets", "deep-args", "brackets-in-a-string", "unterminated"],
)
def test_a_deep_or_broken_request_gets_one_line(
    tmp_path: Path, make_target: MakeTarget, payload: bytes, reason: str
) -> None:
    """Before the fix, 200,000 "[" raised RecursionError out of json.loads, through the
    server (which caught only ValueError and OSError) and out of the daemon's loop.
    Brackets inside a string are text, not nesting: that request goes on to dispatch
    (which refuses it for its missing version)."""
    with serving(tmp_path / "control.sock", make_target()) as loop:
        answer = _ask(loop.server.path, payload)
        assert answer["ok"] is False and answer["fault"] == "caller"
        assert reason in str(answer["error"]), answer
        assert "\n" not in str(answer["error"])
        assert _ask(loop.server.path, SAVE)["ok"] is True  # and it still serves


def test_a_slow_client_holds_nothing_and_is_cut_off(
    tmp_path: Path, make_target: MakeTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One byte every 0.1 s: each recv is quick, the request never ends.  Meanwhile
    other requests are answered, the loop keeps turning, and when REQUEST_TIMEOUT has
    passed since its connection the slow client is refused and closed."""
    monkeypatch.setattr(control, "REQUEST_TIMEOUT", 1.5)
    with serving(tmp_path / "control.sock", make_target()) as loop:
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow.connect(str(loop.server.path))
        started = time.monotonic()
        answered = []
        turns = loop.turns
        for byte in SAVE[:15]:
            try:
                slow.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            t0 = time.monotonic()
            answered.append(_ask(loop.server.path, SAVE, timeout=5)["ok"])
            assert time.monotonic() - t0 < 1.0  # wide: a served request takes ms
            time.sleep(0.1)
        assert all(answered) and len(answered) >= 5
        assert loop.turns > turns
        slow.settimeout(5)
        reply = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := slow.recv(4096):
                reply += chunk
        elapsed = time.monotonic() - started
        slow.close()
    answer = json.loads(reply)
    assert answer["ok"] is False and "not complete within" in answer["error"]
    assert 1.4 < elapsed < 4.5, elapsed


def test_a_client_that_never_reads_its_answer_is_dropped(
    tmp_path: Path, make_target: MakeTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big answer and a client that does not read it: the server sends what the
    socket takes, goes on serving others, and drops the client after REPLY_TIMEOUT."""
    monkeypatch.setattr(control, "REPLY_TIMEOUT", 1.0)
    # A page of the connection table (about 300 KB): more than the socket buffers.
    target = make_target(SEED_RULES)
    now = time.monotonic()
    for port in range(1024, 1024 + CONN_PAGE):
        target.director.hook_in(tcp(CLIENT, VIP, port, 80, flags=TH_SYN), now)
    request = json.dumps({"version": 1, "command": "list", "args": {"conns": True}}).encode()
    with serving(tmp_path / "control.sock", target) as loop:
        lazy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lazy.connect(str(loop.server.path))
        lazy.sendall(request + b"\n")
        time.sleep(0.3)
        assert any(c.reply for c in loop.server.clients.values())  # still sending
        assert _ask(loop.server.path, SAVE, timeout=5)["ok"] is True
        deadline = time.monotonic() + 5
        while loop.server.clients and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not loop.server.clients
        lazy.close()


def test_too_many_clients_at_once_the_next_is_refused(
    tmp_path: Path, make_target: MakeTarget
) -> None:
    with serving(tmp_path / "control.sock", make_target()) as loop:
        idle = []
        for _ in range(control.MAX_CLIENTS):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(loop.server.path))
            idle.append(sock)
        deadline = time.monotonic() + 5
        while len(loop.server.clients) < control.MAX_CLIENTS and time.monotonic() < deadline:
            time.sleep(0.02)
        answer = _ask(loop.server.path, SAVE)
        assert answer["ok"] is False and "busy" in str(answer["error"])
        for sock in idle:
            sock.close()
