"""Control protocol: op encoding, dispatch (never raises, all or nothing), the client."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from dpkt.tcp import TH_SYN

from director.core.xmit.dr import DirectRoute
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
from director.shell.daemon import Daemon
from director.shell.netfilter import VIP_SET
from tests.conftest import MakeTarget
from tests.core.packets import CLIENT, VIP, tcp

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


def test_change_is_applied_and_persisted_at_once(make_target: MakeTarget) -> None:
    target = make_target()
    command, args = encode_op(parse_line("-A -t 203.0.113.5:80 -s rr"))
    response = dispatch(target, msg(command, args))
    assert response == {"version": 1, "ok": True, "result": None, "error": "", "fault": ""}
    assert target.config == load_rules("-A -t 203.0.113.5:80 -s rr\n")
    assert target.settings.rules.read_text() == format_save(target.config)
    assert [svc.conf.port for svc in target.director.services] == [80]
    assert target.hooks.selected[0][VIP_SET] == {("203.0.113.5", 0, 0)}


def test_refused_change_commits_nothing(make_target: MakeTarget) -> None:
    target = make_target(SEED)
    before = (target.config, target.settings.rules.read_text(), target.snapshot(conns=False))
    command, args = encode_op(parse_line("-A -t 203.0.113.5:80 -s rr"))
    response = dispatch(target, msg(command, args))
    assert response["ok"] is False and response["fault"] == "caller"
    assert response["error"] == "Service already exists"
    assert (target.config, target.settings.rules.read_text(), target.snapshot(conns=False)) == (
        before
    )


def test_a_configuration_the_data_plane_refuses_changes_nothing(
    make_target: MakeTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Director.check refuses (an address family a forwarding method does not
    carry: every method carries both now, so DR is made IPv4-only for the test) is
    refused whole, with one line, and nothing changes."""
    monkeypatch.setattr(DirectRoute, "families", frozenset((4,)))
    target = make_target(SEED + "-A -t [2001:db8:1::100]:80 -s rr\n")
    before = (target.config, target.settings.rules.read_text())
    command, args = encode_op(parse_line("-a -t [2001:db8:1::100]:80 -r [2001:db8:2::2]:80 -g"))
    response = dispatch(target, msg(command, args))
    assert response["ok"] is False and response["fault"] == "caller"
    assert response["error"] == (
        "2001:db8:1::100: IPv6 with forwarding method droute is not supported by director yet"
    )
    assert (target.config, target.settings.rules.read_text()) == before


def test_restore_is_all_or_nothing(make_target: MakeTarget) -> None:
    target = make_target()
    bad = SEED + "-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m\n"
    response = dispatch(target, msg("restore", {"text": bad}))
    assert response["ok"] is False
    assert (
        response["error"].startswith("line ") and "Destination already exists" in response["error"]
    )
    assert target.config == Config() and not target.settings.rules.exists()
    assert len(target.director.services) == 0
    assert dispatch(target, msg("restore", {"text": SEED}))["ok"] is True
    assert target.config == load_rules(SEED)
    assert target.settings.rules.read_text() == format_save(load_rules(SEED))


def _syn(target: Daemon, vport: int, cport: int) -> None:
    """A client's SYN to the seed's VIP, through the real packet path."""
    target.director.hook_in(tcp(CLIENT, VIP, cport, vport, flags=TH_SYN), time.monotonic())


def _conns(target: Daemon) -> dict[int, int]:
    """Each service's connection counter, by port, as `list --stats` shows it."""
    snap = dispatch(target, msg("list", {"conns": False}))["result"]
    return {svc["port"]: svc["stats"]["conns"] for svc in snap["services"]}


def test_list_save_zero(make_target: MakeTarget) -> None:
    """ipvsadm -Z [service] (ip_vs_zero_service, ip_vs_zero_all): the counters of the
    one service (and its real servers), or of all, start again from 0."""
    target = make_target(SEED)
    for vport, cport in ((80, 40000), (80, 40001), (21, 40002)):
        _syn(target, vport, cport)
    assert _conns(target) == {80: 2, 21: 1}
    assert dispatch(target, msg("save"))["result"] == format_save(target.config)
    assert dispatch(target, msg("zero", {"service": ["tcp", "203.0.113.5", 21]}))["ok"]
    assert _conns(target) == {80: 2, 21: 0}
    missing = dispatch(target, msg("zero", {"service": ["tcp", "203.0.113.5", 22]}))
    assert missing["error"] == "No such service"
    assert _conns(target) == {80: 2, 21: 0}
    assert dispatch(target, msg("zero", {"service": None}))["ok"]
    assert _conns(target) == {80: 0, 21: 0}
    snap = dispatch(target, msg("list", {"conns": False}))["result"]
    assert snap["totals"]["conns"] == 0
    assert [d["stats"]["conns"] for svc in snap["services"] for d in svc["dests"]] == [0, 0, 0]


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (msg("list", version=2), "unsupported protocol version 2"),
        (msg("frobnicate"), "unknown command 'frobnicate'"),
        ({"version": 1, "command": "list", "args": []}, "args must be an object"),
        ({"version": 1}, "unknown command None"),
    ],
)
def test_bad_requests_get_error_responses(
    make_target: MakeTarget, message: dict[str, Any], error: str
) -> None:
    response = dispatch(make_target(), message)
    assert (response["ok"], response["error"], response["fault"]) == (False, error, "caller")


def test_daemon_failure_is_its_own_fault(make_target: MakeTarget) -> None:
    """The rules file cannot be written (its folder is a file): the daemon's fault, and
    the live tables keep what they had."""
    target = make_target(SEED)
    blocker = target.settings.rules.parent / "not-a-folder"
    blocker.write_text("")
    target.settings.rules = blocker / "rules"
    response = dispatch(target, msg("clear"))
    assert response["ok"] is False and response["fault"] == "daemon"
    assert response["error"].startswith("internal error: ") and str(blocker) in response["error"]
    assert target.config == load_rules(SEED) and len(target.director.services) == 2


def test_dispatch_bytes_handles_garbage(make_target: MakeTarget) -> None:
    answer = json.loads(dispatch_bytes(make_target(), b"\xff not json\n"))
    assert answer["ok"] is False and answer["error"].startswith("bad request: not UTF-8")


# --- the client against a real Unix socket ------------------------------------------


def serve_once(path: str, target: Daemon) -> threading.Thread:
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


def test_client_round_trip(tmp_path: Path, make_target: MakeTarget) -> None:
    path = str(tmp_path / "control.sock")
    target = make_target(SEED)
    thread = serve_once(path, target)
    assert request(path, "save", {}, timeout=5) == format_save(target.config)
    thread.join(5)


def test_client_refused(tmp_path: Path, make_target: MakeTarget) -> None:
    path = str(tmp_path / "control.sock")
    thread = serve_once(path, make_target())
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


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        ("[" * 32 + "]" * 32, False),
        ("[" * 33 + "]" * 33, True),
        ('{"a": ' * 33 + "1" + "}" * 33, True),
        ("[" + ",".join(["[[]]"] * 10_000) + "]", False),  # many brackets, none deep
        (json.dumps({"text": "[" * 100 + '\\"[' * 100}), False),  # text, escaped quotes too
        (json.dumps([["[" * 40]] * 3), False),
    ],
)
def test_nesting_is_bounded_before_parsing(text: str, deep: bool) -> None:
    """MAX_DEPTH counts arrays and objects opened inside one another, never brackets in
    strings; the refusal is a ValueError (one line), not json's RecursionError."""
    from director.ctl.protocol import MAX_DEPTH, check_depth

    assert MAX_DEPTH == 32
    if deep:
        with pytest.raises(ValueError, match="nested deeper than 32 levels"):
            check_depth(text.encode())
    else:
        check_depth(text.encode())
        json.loads(text)
