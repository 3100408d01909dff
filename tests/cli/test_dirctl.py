"""dirctl end to end: the protocol client hands each request to dispatch() and the
daemon's own control target (tests/target.py: in-memory hooks and routes)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from dpkt.tcp import TH_SYN
from typer.testing import CliRunner

from director.cli import dirctl
from director.core.tunneled import Link
from director.ctl import protocol
from director.ctl.dispatch import dispatch
from director.ctl.ipvsadm import format_save, load_rules
from director.model.config import Config
from director.shell.daemon import Daemon
from tests.conftest import MakeTarget
from tests.core.packets import CLIENT, VIP, tcp
from tests.target import MemoryHooks, StaticRoutes, close, make_daemon

SEED = (Path(__file__).resolve().parents[2] / "rules" / "seed-nat.rules").read_text()


@pytest.fixture
def target(make_target: MakeTarget, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    """Route dirctl's requests through dispatch() to an in-process daemon target; the
    socket paths dirctl asked for are in ``target.sockets``."""
    daemon = make_target()
    seen: list[str] = []

    def in_process(path: str, command: str, args: Any = None, timeout: float = 10.0) -> Any:
        seen.append(path)
        response = dispatch(daemon, {"version": 1, "command": command, "args": args or {}})
        if not response["ok"]:
            raise protocol.RequestRefused(response["error"])
        return response["result"]

    monkeypatch.setattr(protocol, "request", in_process)
    daemon.sockets = seen  # type: ignore[attr-defined]
    return daemon


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = dirctl.run(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_add_service_and_servers(target: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "add-service", "-t", "203.0.113.5:80", "-s", "rr")[0] == 0
    assert run(capsys, "add-server", "-t", "203.0.113.5:80", "-r", "198.18.0.2", "-m")[0] == 0
    argv = ["add-server", "-t", "203.0.113.5:80", "-r", "198.18.0.3:8000", "-m", "-w", "1"]
    assert run(capsys, *argv)[0] == 0
    assert run(capsys, "add-service", "-t", "203.0.113.5:21", "-s", "rr")[0] == 0
    assert run(capsys, "add-server", "-t", "203.0.113.5:21", "-r", "198.18.0.3:21", "-m")[0] == 0
    status, out, _ = run(capsys, "save", "-n")
    assert status == 0
    assert load_rules(out) == load_rules(SEED) == target.config


def test_tunnel_types_add_edit_and_list(target: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    """dirctl add-server/edit-server --tun-type/--tun-port/--tun-*csum, saved and
    listed (--tun-info) as ipvsadm 1.31 prints them (tests/ctl/ipvsadm131/vm_tuntype.out)."""
    assert run(capsys, "add-service", "-t", "203.0.113.7:80", "-s", "rr")[0] == 0
    argv = ["add-server", "-t", "203.0.113.7:80", "-r", "198.18.0.3", "-i", "--tun-type", "gue",
            "--tun-port", "6080", "--tun-nocsum"]  # fmt: skip
    assert run(capsys, *argv)[0] == 0
    argv = ["add-server", "-t", "203.0.113.7:80", "-r", "198.18.0.4", "-i", "--tun-type", "gre",
            "--tun-csum"]  # fmt: skip
    assert run(capsys, *argv)[0] == 0
    status, out, _ = run(capsys, "save", "-n")
    assert out.splitlines()[1:] == [
        "-a -t 203.0.113.7:80 -r 198.18.0.3:80 -i -w 1 --tun-type gue --tun-port 6080 --tun-nocsum",
        "-a -t 203.0.113.7:80 -r 198.18.0.4:80 -i -w 1 --tun-type gre --tun-csum",
    ]
    argv = ["edit-server", "-t", "203.0.113.7:80", "-r", "198.18.0.3", "--tun-remcsum"]
    assert run(capsys, *argv)[0] == 0
    status, out, _ = run(capsys, "list", "-n", "--tun-info")
    assert status == 0
    assert "  -> 198.18.0.3:80                Tunnel  gue:6080:r+c  1      0          0" in out
    assert "  -> 198.18.0.4:80                Tunnel  gre:+c        1      0          0" in out
    argv = ["add-server", "-t", "203.0.113.7:80", "-r", "198.18.0.5", "-m", "--tun-csum"]
    status, _, err = run(capsys, *argv)
    assert status == 2 and err.strip().endswith("Tunnel options conflict with forward method")


def test_bare_persistent_means_360(target: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "add-service", "-t", "203.0.113.5:443", "-p", "-s", "rr")[0] == 0
    assert run(capsys, "add-service", "-f", "9", "-p")[0] == 0
    assert run(capsys, "add-service", "-u", "203.0.113.5:53", "-p", "60", "-o")[0] == 0
    assert [s.persistent for s in target.config.services] == [360, 360, 60]


def test_edit_server_keeps_other_fields(target: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    target.commit(load_rules(SEED))
    argv = ["edit-server", "-t", "203.0.113.5:80", "-r", "198.18.0.3:8000", "-w", "7"]
    assert run(capsys, *argv)[0] == 0
    dest = target.config.services[0].dests[1]
    assert (dest.method, dest.weight) == ("masq", 7)


def test_list_and_selectors(target: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    target.commit(load_rules(SEED))
    status, out, _ = run(capsys, "list", "-n")
    assert status == 0 and out.startswith("IP Virtual Server version 1.2.1 (size=4096)\n")
    assert "TCP  203.0.113.5:21 rr\n" in out
    status, out, _ = run(capsys, "list", "-n", "-t", "203.0.113.5:21")
    assert out.splitlines()[2:] == [
        "TCP  203.0.113.5:21 rr",
        "  -> 198.18.0.3:21                Masq    1      0          0         ",
    ]
    assert run(capsys, "list", "--timeout")[1] == "Timeout (tcp tcpfin udp): 900 120 300\n"
    assert run(capsys, "list", "-c")[1].startswith("IPVS connection entries\n")
    assert '"conn_tab_size": 4096' in run(capsys, "list", "--json")[1]


def test_restore_from_file_and_stdin(
    target: Daemon,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rules = tmp_path / "rules"
    rules.write_text(SEED)
    assert run(capsys, "restore", str(rules))[0] == 0
    assert target.config == load_rules(SEED)
    assert run(capsys, "clear")[0] == 0 and target.config.services == ()
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(SEED))
    assert run(capsys, "restore")[0] == 0
    assert format_save(target.config) == format_save(load_rules(SEED))


def test_set_timeout_and_zero(target: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    target.commit(load_rules(SEED))
    assert run(capsys, "set-timeout", "0", "60", "0")[0] == 0
    assert target.config.timeouts.tcpfin == 60
    now = time.monotonic()
    for vport in (80, 21):
        target.director.hook_in(tcp(CLIENT, VIP, 40000, vport, flags=TH_SYN), now)

    def conns(port: int) -> str:
        """The Conns column of ``list --stats --exact`` for the service on ``port``."""
        out = run(capsys, "list", "-n", "--stats", "--exact", "-t", f"203.0.113.5:{port}")[1]
        return out.splitlines()[2].split()[2]

    assert (conns(80), conns(21)) == ("1", "1")
    assert run(capsys, "zero", "-t", "203.0.113.5:80")[0] == 0
    assert (conns(80), conns(21)) == ("0", "1")
    assert run(capsys, "zero")[0] == 0
    assert (conns(80), conns(21)) == ("0", "0")


def test_socket_option_and_env(
    target: Daemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run(capsys, "list")
    run(capsys, "--socket", "/tmp/a.sock", "list")
    run(capsys, "list", "--socket", "/tmp/b.sock")
    monkeypatch.setenv("DIRECTOR_SOCKET", "/tmp/c.sock")
    run(capsys, "list")
    assert target.sockets == [  # type: ignore[attr-defined]
        protocol.DEFAULT_SOCKET,
        "/tmp/a.sock",
        "/tmp/b.sock",
        "/tmp/c.sock",
    ]


BAD: list[tuple[list[str], str]] = [
    (["add-service", "-t", "203.0.113.5:80", "-s", "nope"], "Scheduler or persistence engine"),
    (["add-service", "-t", "203.0.113.5:80", "-f", "1"], "multiple 'service-address' options"),
    (["add-service", "-s", "rr"], "You need to supply the 'service-address' option"),
    (["add-service", "-t", "203.0.113.5"], "Zero port specified for non-persistent service"),
    (["add-service", "-t", "203.0.113.5:80", "-p", "abc"], "invalid timeout value `abc'"),
    (["add-service", "-t", "203.0.113.5:80", "-w", "1"], "No such option: -w"),
    (["add-server", "-t", "203.0.113.5:80", "-r", "198.18.0.9", "-m", "-i"], "multiple"),
    (["add-server", "-t", "203.0.113.5:80", "-r", "198.18.0.9", "-w", "-3"], "illegal weight"),
    (["add-server", "-t", "203.0.113.5:80", "-r", "198.18.0.2:80", "-m"], "already exists"),
    (["delete-service", "-u", "203.0.113.5:80"], "No such service"),
    # ipvsadm 1.31: -6 modifies -f only (tests/ctl/oracle/ipvsadm_v6.out).
    (["add-service", "-t", "203.0.113.5:80", "-6"], "-6 used before -f"),
    (["list", "-n", "-6"], "-6 used before -f"),
    (["list", "-n", "-f", "1", "-6"], "No such service"),
    (["delete-server", "-f", "1", "-6", "-r", "[2001:db8:2::3]"], "illegal real server address"),
    (["set-timeout", "1", "2"], "Missing argument"),
    (["set-timeout", "-5", "0", "0"], "`-5' specified: a non-negative number of seconds"),
    (["set-timeout", "0", "0", "-1"], "`-1' specified: a non-negative number of seconds"),
    (["set-timeout", "0", "x", "0"], "`x' specified: a non-negative number of seconds"),
    (["list", "-c", "--stats"], "options conflicts in the list command"),
    (["list", "-c", "--timeout"], "The option 'timeout' conflicts with the 'connection' option"),
    (["list", "-t", "203.0.113.9:80"], "No such service"),
    (["frobnicate"], "No such command"),
    ([], "no command given"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a) or "none" for a, _ in BAD])
def test_bad_input_exits_2_with_one_line(
    target: Daemon, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    target.commit(load_rules(SEED))
    before = (target.config, target.settings.rules.read_text())
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("dirctl: ") and message in err
    assert out == "" and (target.config, target.settings.rules.read_text()) == before


def test_restore_bad_line_names_it(
    target: Daemon, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.write_text(SEED + "-a -t 203.0.113.5:80 -r 198.18.0.9 -w x\n")
    status, _, err = run(capsys, "restore", str(rules))
    assert status == 2 and err == "dirctl: line 11: illegal weight specified\n"
    assert target.config == Config() and not target.settings.rules.exists()


def test_unreachable_daemon_exits_3(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = str(tmp_path / "none.sock")
    status, _, err = run(capsys, "--socket", path, "list", "-n")
    assert status == 3 and err.count("\n") == 1
    assert path in err and "systemctl start directord" in err


def test_help_is_not_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--help")
    assert status == 0 and "add-service" in out


def test_typer_cli_runner_drives_the_app(target: Daemon) -> None:
    target.commit(load_rules(SEED))
    result = CliRunner().invoke(dirctl.app, ["list", "--timeout"])
    assert result.exit_code == 0
    assert result.output == "Timeout (tcp tcpfin udp): 900 120 300\n"


def test_sysctl_shows_sets_and_refuses_all_or_nothing(
    target: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "sysctl")
    assert status == 0 and "expire_nodest_conn = 0" in out and "conn_reuse_mode = 1" in out
    status, out, _ = run(capsys, "sysctl", "expire_nodest_conn=1", "conn_reuse_mode=2")
    assert status == 0 and "expire_nodest_conn = 1" in out and "conn_reuse_mode = 2" in out
    for bad in ("nope=1", "sloppy_tcp=maybe", "conn_reuse_mode=7", "=1", "sloppy_tcp"):
        status, _, err = run(capsys, "sysctl", "sloppy_tcp=1", bad)
        assert status == 2 and len(err.strip().splitlines()) == 1, (bad, err)
    assert target.director.sysctls.sloppy_tcp is False


def test_sysctl_shows_the_kernels_defaults_of_the_packet_settings_and_sets_them(
    target: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """ipvs-sysctl.rst's defaults; conntrack=1 is refused in one line, changing nothing."""
    status, out, _ = run(capsys, "sysctl")
    for line in ("schedule_icmp = 0", "pmtu_disc = 1", "nat_icmp_send = 0", "conntrack = 0",
                 "run_estimation = 1"):  # fmt: skip
        assert line in out.splitlines(), line
    status, out, _ = run(capsys, "sysctl", "schedule_icmp=1", "pmtu_disc=0")
    assert status == 0 and "schedule_icmp = 1" in out and "pmtu_disc = 0" in out
    assert target.director.sysctls.pmtu_disc is False
    status, _, err = run(capsys, "sysctl", "nat_icmp_send=1", "conntrack=1")
    assert status == 2 and len(err.strip().splitlines()) == 1 and "conntrack" in err
    assert target.director.sysctls.nat_icmp_send is False


def test_sysctl_ignore_tunneled_leaves_the_tunnel_devices_to_the_host(
    make_target: MakeTarget, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ipvs-sysctl.rst: ignore_tunneled, default 0.  At 1 the hooks leave alone what the
    host's tunnel devices (and the userspace decapsulator's dirtun0) hand in, kept
    current as netlink's links change; at 0 nothing; kept for the next start."""
    routes = StaticRoutes(links=[Link("eth0", "veth"), Link("dirtun0", "tun"), Link("gre1", "gre"),
                                 Link("fou4", "ipip", 2)])  # fmt: skip
    daemon = make_target(SEED, routes=routes)
    monkeypatch.setattr(
        protocol,
        "request",
        lambda path, command, args=None, timeout=10.0: dispatch(
            daemon, {"version": 1, "command": command, "args": args or {}}
        )["result"],
    )
    hooks = daemon.hooks
    assert isinstance(hooks, MemoryHooks)
    status, out, _ = run(capsys, "sysctl")
    assert status == 0 and "ignore_tunneled = 0" in out.splitlines()
    assert hooks.tunneled_devs == frozenset()
    status, out, _ = run(capsys, "sysctl", "ignore_tunneled=1")
    assert status == 0 and "ignore_tunneled = 1" in out.splitlines()
    assert hooks.tunneled_devs == {"dirtun0", "gre1"}
    routes.link_table = [Link("eth0", "veth"), Link("dirtun0", "tun"), Link("t6", "ip6tnl")]
    daemon._annotate_routes()  # what netlink's RTM_NEWLINK / RTM_DELLINK run
    assert hooks.tunneled_devs == {"dirtun0", "t6"}
    again = make_daemon(daemon.settings, routes=routes)
    assert again.director.sysctls.ignore_tunneled is True
    again.commit(load_rules(SEED), persist=False)
    assert again.hooks.tunneled_devs == {"dirtun0", "t6"}  # type: ignore[attr-defined]
    close(again)
    status, out, _ = run(capsys, "sysctl", "ignore_tunneled=0")
    assert status == 0 and hooks.tunneled_devs == frozenset()


def test_which_prints_the_server_or_says_none(
    target: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "which", "tcp", "203.0.113.10:4000", "203.0.113.5:21")
    assert status == 1 and "no real server" in out
    target.commit(load_rules(SEED))  # 203.0.113.5:21 has one real server, 198.18.0.3:21
    status, out, _ = run(capsys, "which", "tcp", "203.0.113.10:4000", "203.0.113.5:21")
    assert (status, out) == (0, "198.18.0.3:21 masq\n")
    for argv in (("icmp", "1.2.3.4:1", "203.0.113.5:80"), ("tcp", "nonsense", "203.0.113.5:80")):
        status, _, err = run(capsys, "which", *argv)
        assert status == 2 and err.startswith("dirctl: ") and len(err.splitlines()) == 1


def test_list_c_asks_page_after_page(target: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    """The daemon answers one page of the connection table per request; dirctl asks
    for every page and prints one listing (one header), or one JSON snapshot."""
    from director.ctl.report import CONN_PAGE

    target.commit(load_rules(SEED))
    count = 2 * CONN_PAGE + 5
    now = time.monotonic()
    for n in range(count):  # SYNs from as many client ports: one entry each
        target.director.hook_in(tcp(CLIENT, VIP, 1024 + n, 80, flags=TH_SYN), now)
    assert len(target.director.conns) == count
    status, out, _ = run(capsys, "list", "-c")
    lines = out.splitlines()
    assert status == 0 and lines.count("IPVS connection entries") == 1
    assert len(lines) == 2 + count
    ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in lines[2:]}
    assert ports == set(range(1024, 1024 + count))
    status, out, _ = run(capsys, "list", "-c", "--json")
    snap = json.loads(out)
    assert len(snap["conns"]) == count and "conns_next" not in snap


SEED6 = (Path(__file__).resolve().parents[2] / "rules" / "seed-nat6.rules").read_text()


def test_ipv6_services_through_dirctl(target: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    """The verbs with ipvsadm 1.31's IPv6 syntax: [IPv6]:PORT services and servers,
    -f MARK -6 beside -f MARK, -M 64, which and list of one service."""
    target.commit(load_rules(SEED6))
    status, out, _ = run(capsys, "which", "tcp", "[2001:db8:1::10]:4000", "[2001:db8:1::100]:21")
    assert (status, out) == (0, "[2001:db8:2::3]:21 masq\n")
    for argv in (
        ["add-service", "-f", "1", "-6", "-s", "rr", "-p", "300", "-M", "64"],
        ["add-service", "-f", "1", "-s", "wlc"],
        ["add-server", "-f", "1", "-6", "-r", "[2001:db8:2::2]:0", "-m"],
    ):
        assert run(capsys, *argv)[:1] == (0,), argv
    status, out, _ = run(capsys, "list", "-n", "-f", "1", "-6")
    assert (status, out.splitlines()[2:]) == (0, [
        "FWM  1 IPv6 rr persistent 300 mask 64",
        "  -> [2001:db8:2::2]:0            Masq    1      0          0         ",
    ])  # fmt: skip
    assert run(capsys, "list", "-n", "-f", "1")[1].splitlines()[2:] == ["FWM  1 wlc"]
    saved = run(capsys, "save", "-n")[1]
    assert "-A -f 1 -6 -s rr -p 300 -M 64\n-a -f 1 -6 -r [2001:db8:2::2]:0 -m -w 1\n" in saved
    assert run(capsys, "delete-service", "-f", "1", "-6")[0] == 0
    assert [s.key for s in target.config.services if s.protocol == "fwm"] == [("fwm", "", 1)]
