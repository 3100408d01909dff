"""Issue 4 end to end: persistence, a firewall-mark service over two ports, weight 0
draining a server while its open connection goes on, `dirctl which` and `dirctl
sysctl`, through the real daemon, iptables, NFQUEUE and curl."""

from __future__ import annotations

import collections
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtools import curl

from director.lab.daemon import Daemon
from director.lab.topology import Lab

RS1 = "rs1 198.18.0.2"
RS2 = "rs2 198.18.0.3"


@pytest.fixture
def quick(lab: Lab, tmp_path: Path) -> Iterator[Daemon]:
    """A daemon whose TIME_WAIT and CLOSE last 1 s, so finished connections go fast."""
    d = Daemon(lab, tmp_path / "quick", ["--tcp-timeout", "time_wait=1",
                                         "--tcp-timeout", "close=1"])  # fmt: skip
    d.start()
    try:
        yield d
    finally:
        assert d.stop() == 0, d.log()
        d.kill()


def restore(d: Daemon, text: str) -> None:
    done = d.dirctl("restore", input=textwrap.dedent(text))
    assert done.returncode == 0, done.stderr


def server(body: str) -> str:
    return " ".join(body.split()[:2])[: len(RS1)]


def test_persistence_keeps_a_client_then_lets_it_go_after_the_timeout(quick: Daemon) -> None:
    lab = quick.lab
    restore(
        quick,
        f"""\
        -A -t {lab.vip}:80 -s rr -p 6
        -a -t {lab.vip}:80 -r 198.18.0.2:80 -m
        -a -t {lab.vip}:80 -r 198.18.0.3:80 -m
        """,
    )
    first = {server(curl(lab, f"http://{lab.vip}/").body) for _ in range(8)}
    assert len(first) == 1, first  # rr alone would have alternated
    listed = quick.dirctl("list", "-n", "-c").stdout
    # The template (client port 0) is ASSURED: connections through it were established
    # (ip_vs_control_assure_ct; ip_vs_state_name shows a template's NONE/ASSURED).
    assert any(" ASSURED " in line and ":0 " in line for line in listed.splitlines()), listed
    # The connections close (TIME_WAIT 1 s, collected within the next second), then the
    # 6 s template is let go (one still controlling a connection when it fires would be
    # put off by 60 s, as ip_vs_conn_expire's expire_later does): wait for
    # the table to be empty rather than for a time a loaded machine may not keep.
    deadline = time.monotonic() + 30
    while (listed := quick.dirctl("list", "-n", "-c").stdout).count("\n") > 2:
        assert time.monotonic() < deadline, f"entries left after 30 s:\n{listed}"
        time.sleep(0.2)
    second = {server(curl(lab, f"http://{lab.vip}/").body) for _ in range(4)}
    assert len(second) == 1 and second != first, (first, second)


def test_fwmark_service_spans_two_ports(daemon: Daemon) -> None:
    lab = daemon.lab
    mark = ["-t", "mangle", "-A", "PREROUTING", "-d", f"{lab.vip}/32", "-p", "tcp",
            "-m", "multiport", "--dports", "80,21", "-j", "MARK", "--set-mark", "7"]  # fmt: skip
    lab.run(lab.director, ["iptables", *mark])
    try:
        restore(
            daemon,
            """\
            -A -f 7 -s rr
            -a -f 7 -r 198.18.0.2 -m
            -a -f 7 -r 198.18.0.3 -m
            """,
        )
        answers = collections.Counter(
            curl(lab, f"http://{lab.vip}:{port}/").body for port in (80, 80, 21, 21) * 2
        )
        assert set(answers) == {
            "rs1 198.18.0.2:80", "rs2 198.18.0.3:80", "rs1 198.18.0.2:21", "rs2 198.18.0.3:21",
        }, answers  # fmt: skip
        listed = daemon.dirctl("list", "-n").stdout
        assert "FWM  7 rr" in listed, listed
    finally:
        lab.run(lab.director, ["iptables", *["-D" if a == "-A" else a for a in mark]])


KEEPALIVE_CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80), timeout=5)
def ask():
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    data = b""
    while b"\\r\\n\\r\\n" not in data or not data.rstrip().endswith(b"80"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode().split("\\r\\n\\r\\n", 1)[-1].strip()
print(ask(), flush=True)
sys.stdin.readline()  # the test quiesces the server meanwhile
print(ask(), flush=True)
"""


def test_weight_zero_drains_while_the_open_connection_goes_on(daemon: Daemon) -> None:
    lab = daemon.lab
    restore(
        daemon,
        f"""\
        -A -t {lab.vip}:80 -s rr
        -a -t {lab.vip}:80 -r 198.18.0.2:80 -m
        -a -t {lab.vip}:80 -r 198.18.0.3:80 -m
        """,
    )
    client = subprocess.Popen(
        lab.exec_argv(lab.client, [sys.executable, "-c", KEEPALIVE_CLIENT, lab.vip]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdin is not None
        before = client.stdout.readline().strip()
        quiesced = "198.18.0.2" if "198.18.0.2" in before else "198.18.0.3"
        done = daemon.dirctl("edit-server", "-t", f"{lab.vip}:80", "-r", f"{quiesced}:80",
                             "-m", "-w", "0")  # fmt: skip
        assert done.returncode == 0, done.stderr
        others = {curl(lab, f"http://{lab.vip}/").body for _ in range(6)}
        assert all(quiesced not in body for body in others), others
        client.stdin.write("\n")
        client.stdin.flush()
        after = client.stdout.readline().strip()
        assert after == before, (before, after)  # the open connection still works
    finally:
        client.kill()
        client.wait()


def test_which_predicts_the_server_a_connection_gets(daemon: Daemon) -> None:
    lab = daemon.lab
    restore(
        daemon,
        f"""\
        -A -t {lab.vip}:80 -s rr
        -a -t {lab.vip}:80 -r 198.18.0.2:80 -m
        -a -t {lab.vip}:80 -r 198.18.0.3:80 -m
        """,
    )
    for _ in range(3):
        predicted = daemon.dirctl("which", "tcp", f"{lab.client_addr}:40123", f"{lab.vip}:80")
        assert predicted.returncode == 0, predicted.stderr
        again = daemon.dirctl("which", "tcp", f"{lab.client_addr}:40123", f"{lab.vip}:80")
        assert again.stdout == predicted.stdout  # asking changes nothing
        got = curl(lab, f"http://{lab.vip}/").body
        assert predicted.stdout.split()[0].split(":")[0] in got, (predicted.stdout, got)
    missing = daemon.dirctl("which", "tcp", f"{lab.client_addr}:1", f"{lab.vip}:9")
    assert missing.returncode == 1 and "no real server" in missing.stdout


def test_sysctl_shows_sets_and_refuses_bad_input(daemon: Daemon) -> None:
    shown = daemon.dirctl("sysctl").stdout
    assert "expire_nodest_conn = 0" in shown and "conn_reuse_mode = 1" in shown, shown
    done = daemon.dirctl("sysctl", "expire_nodest_conn=1", "sloppy_tcp=1")
    assert done.returncode == 0 and "expire_nodest_conn = 1" in done.stdout, done
    for bad in ("no_such=1", "conn_reuse_mode=9", "sloppy_tcp"):
        refused = daemon.dirctl("sysctl", "expire_quiescent_template=1", bad)
        assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused
    after = daemon.dirctl("sysctl").stdout
    assert "expire_quiescent_template = 0" in after, after  # all or nothing
