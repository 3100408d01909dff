"""Control protocol: op encoding, dispatch (never raises, all or nothing), the client."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from director.ctl.dispatch import dispatch, dispatch_bytes
from director.ctl.ipvsadm import format_save, load_rules, parse_line
from director.ctl.protocol import (
    DaemonFailed,
    DaemonUnreachable,
    RequestRefused,
    decode_op,
    encode_op,
    request,
)
from director.model.config import Config, ConfigError
from tests.ctl.fake import FakeTarget

SEED = (Path(__file__).resolve().parents[2] / "rules" / "seed-nat.rules").read_text()

LINES = [
    "-A -t 203.0.113.5:80 -s rr -p 60 -M 255.255.255.0",
    "-A -f 3 -s wrr -b flag-1",
    "-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m -w 4 -x 9 -y 3",
    "-e -t 203.0.113.5:80 -r 198.18.0.2:80 -w 4",
    "-d -f 3 -r 198.18.0.2",
    "-D -u [2001:db8:1::100]:53",
    "-C",
    "--set 0 60 0",
]


def msg(command: str, args: dict[str, Any] | None = None, version: Any = 1) -> dict[str, Any]:
    return {"version": version, "command": command, "args": args or {}}


@pytest.mark.parametrize("line", LINES)
def test_ops_cross_the_wire_unchanged(line: str) -> None:
    op = parse_line(line)
    command, args = encode_op(op)
    assert decode_op(command, json.loads(json.dumps(args))) == op


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("add-server", {"key": ["tcp", "203.0.113.5", "80"], "dest": {}}, "expected an integer"),
        ("delete-service", {"key": ["tcp", "203.0.113.5"]}, "expected 3 items"),
        ("delete-service", {}, "missing"),
        ("clear", {"bogus": 1}, "unknown field"),
        ("set-timeout", {"tcp": True}, "expected an integer"),
        ("frobnicate", {}, "unknown command"),
    ],
)
def test_malformed_ops_are_refused(command: str, args: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        decode_op(command, args)


def test_change_commits_once() -> None:
    target = FakeTarget()
    command, args = encode_op(parse_line("-A -t 203.0.113.5:80 -s rr"))
    response = dispatch(target, msg(command, args))
    assert response == {"version": 1, "ok": True, "result": None, "error": "", "fault": ""}
    assert len(target.commits) == 1 and target.config.services[0].port == 80


def test_refused_change_commits_nothing() -> None:
    target = FakeTarget(config=load_rules(SEED))
    command, args = encode_op(parse_line("-A -t 203.0.113.5:80 -s rr"))
    response = dispatch(target, msg(command, args))
    assert response["ok"] is False and response["fault"] == "caller"
    assert response["error"] == "Service already exists"
    assert target.commits == []


def test_restore_is_all_or_nothing() -> None:
    target = FakeTarget()
    bad = SEED + "-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m\n"
    response = dispatch(target, msg("restore", {"text": bad}))
    assert response["ok"] is False
    assert (
        response["error"].startswith("line ") and "Destination already exists" in response["error"]
    )
    assert target.commits == [] and target.config == Config()
    assert dispatch(target, msg("restore", {"text": SEED}))["ok"] is True
    assert target.config == load_rules(SEED) and len(target.commits) == 1


def test_list_save_zero() -> None:
    target = FakeTarget(config=load_rules(SEED))
    snapshot = dispatch(target, msg("list", {"conns": False}))["result"]
    assert [s["port"] for s in snapshot["services"]] == [80, 21]
    assert dispatch(target, msg("save"))["result"] == format_save(target.config)
    assert dispatch(target, msg("zero", {"service": None}))["ok"]
    assert dispatch(target, msg("zero", {"service": ["tcp", "203.0.113.5", 21]}))["ok"]
    missing = dispatch(target, msg("zero", {"service": ["tcp", "203.0.113.5", 22]}))
    assert missing["error"] == "No such service"
    assert target.zeroed == [None, ("tcp", "203.0.113.5", 21)]


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (msg("list", version=2), "unsupported protocol version 2"),
        (msg("frobnicate"), "unknown command 'frobnicate'"),
        ({"version": 1, "command": "list", "args": []}, "args must be an object"),
        ({"version": 1}, "unknown command None"),
    ],
)
def test_bad_requests_get_error_responses(message: dict[str, Any], error: str) -> None:
    response = dispatch(FakeTarget(), message)
    assert (response["ok"], response["error"], response["fault"]) == (False, error, "caller")


def test_daemon_failure_is_its_own_fault() -> None:
    class Broken(FakeTarget):
        def commit(self, config: Config) -> None:
            raise OSError("disk full")

    response = dispatch(Broken(), msg("clear"))
    assert response["fault"] == "daemon" and "disk full" in response["error"]


def test_dispatch_bytes_handles_garbage() -> None:
    answer = json.loads(dispatch_bytes(FakeTarget(), b"\xff not json\n"))
    assert answer["ok"] is False and answer["error"] == "malformed request"


# --- the client against a real Unix socket ------------------------------------------


def serve_once(path: str, target: FakeTarget) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        with conn, server:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            conn.sendall(dispatch_bytes(target, data))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_client_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    target = FakeTarget(config=load_rules(SEED))
    thread = serve_once(path, target)
    assert request(path, "save", {}, timeout=5) == format_save(target.config)
    thread.join(5)


def test_client_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    thread = serve_once(path, FakeTarget())
    with pytest.raises(RequestRefused, match=r"^No such service$"):
        request(path, "delete-service", {"key": ["tcp", "203.0.113.5", 80]}, timeout=5)
    thread.join(5)


def test_client_unreachable(tmp_path: Path) -> None:
    path = str(tmp_path / "nobody.sock")
    with pytest.raises(DaemonUnreachable) as info:
        request(path, "list", {}, timeout=1)
    assert path in str(info.value) and "systemctl start directord" in str(info.value)


def test_client_silent_daemon(tmp_path: Path) -> None:
    path = str(tmp_path / "mute.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def hang_up() -> None:
        conn, _ = server.accept()
        conn.close()
        server.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    with pytest.raises(DaemonFailed):
        request(path, "list", {}, timeout=2)
    thread.join(5)
