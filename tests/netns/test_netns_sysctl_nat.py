"""The sysctl nat_icmp_send in a real NAT lab (ip_vs_out_hook: a packet from a NAT real
server's address and port that belongs to no connection, with the sysctl set, is
answered with ICMP port unreachable, icmp_send choosing the director's own address
toward the real server, and dropped).  Off, the kernel's default, such a datagram goes
on to the client as the director forwards it.

And cache_bypass in the same lab, with a policy route that delivers a firewall-mark
service's packets to another host locally, as a transparent cache cluster has it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from labtools import FileServer, helper_argv

from director.lab import topology
from director.lab.daemon import Daemon

VIP = topology.VIP
CLIENT = topology.CLIENT_ADDR
PORT = 5353
CPORT = 40000

_LISTEN = (
    "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    f"s.bind(('', {CPORT})); s.settimeout(3); print('ready', flush=True)\n"
    "try: print(s.recvfrom(100)[0].decode())\n"
    "except TimeoutError: print('nothing')"
)


def _send_stray(rs_addr: str) -> str:
    return (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(({rs_addr!r}, {PORT})); s.sendto(b'stray', ({CLIENT!r}, {CPORT}))"
    )


@pytest.mark.parametrize("on", [False, True], ids=["off", "on"])
def test_nat_icmp_send_answers_a_stray_datagram_of_a_nat_real_server(
    daemon: Daemon, on: bool
) -> None:
    lab = daemon.lab
    rs1 = lab.real_servers[0]
    rules = f"-A -u {VIP}:{PORT} -s rr\n-a -u {VIP}:{PORT} -r {rs1.addr}:{PORT} -m\n"
    done = daemon.dirctl("restore", input=rules)
    assert done.returncode == 0, done.stderr
    done = daemon.dirctl("sysctl", f"nat_icmp_send={int(on)}")
    assert done.returncode == 0, done.stderr
    catcher = subprocess.Popen(
        lab.exec_argv(rs1.netns, helper_argv("rawpkt.py", "icmp-catch", "--seconds", "3")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    listener = subprocess.Popen(
        lab.exec_argv(lab.client, [sys.executable, "-c", _LISTEN]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert catcher.stderr is not None and catcher.stderr.readline().strip() == "ready"
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        lab.run(rs1.netns, [sys.executable, "-c", _send_stray(rs1.addr)], timeout=10)
        heard, _ = listener.communicate(timeout=15)
        out, err = catcher.communicate(timeout=15)
    finally:
        for proc in (catcher, listener):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    caught = json.loads(out)["icmp"]
    if not on:
        assert heard.strip() == "stray" and caught == [], (heard, caught)
        return
    assert heard.strip() == "nothing"
    assert len(caught) == 1, (caught, err)
    (icmp,) = caught
    assert (icmp["src"], icmp["dst"], icmp["type"], icmp["code"]) == (
        topology.DIRECTOR_INSIDE, rs1.addr, 3, 3), icmp  # fmt: skip
    assert (icmp["inner_src"], icmp["inner_sport"], icmp["inner_dst"], icmp["inner_dport"]) == (
        rs1.addr, PORT, CLIENT, CPORT), icmp  # fmt: skip


MARK = 7
ORIGIN_PORT = 8089


@pytest.mark.parametrize("on", [False, True], ids=["off", "on"])
def test_cache_bypass_sends_a_cacheless_flow_on_to_its_origin(
    daemon: Daemon, tmp_path: Path, on: bool
) -> None:
    """A transparent cache cluster as IPVS needs it: the director's mangle rule marks
    the clients' web traffic to any host, a policy route delivers marked packets
    locally (LOCAL_IN), and the firewall-mark service -f 7 has no cache server left.
    Off, the client is refused (port unreachable); on, its connection to the origin
    server (rs2, which is no real server) is carried there unchanged and the origin
    answers it directly."""
    lab = daemon.lab
    origin = lab.real_servers[1]
    done = daemon.dirctl("restore", input=f"-A -f {MARK} -s rr\n")
    assert done.returncode == 0, done.stderr
    done = daemon.dirctl("sysctl", f"cache_bypass={int(on)}")
    assert done.returncode == 0, done.stderr
    steer = [
        ["iptables", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "-d", origin.addr,
         "--dport", str(ORIGIN_PORT), "-j", "MARK", "--set-mark", str(MARK)],
        ["ip", "rule", "add", "fwmark", str(MARK), "lookup", "100"],
        ["ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"],
    ]  # fmt: skip
    for argv in steer:
        lab.run(lab.director, argv)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "page").write_text("from the origin\n")
    try:
        with FileServer(lab, origin.netns, ORIGIN_PORT, tmp_path / "www"):
            done = lab.run(
                lab.client,
                ["curl", "-sS", "--max-time", "5", f"http://{origin.addr}:{ORIGIN_PORT}/page"],
                check=False, timeout=15,
            )  # fmt: skip
    finally:
        lab.run(lab.director, ["iptables", "-t", "mangle", "-D", *steer[0][3:]], check=False)
        lab.run(lab.director, ["ip", "rule", "del", "fwmark", str(MARK), "lookup", "100"],
                check=False)  # fmt: skip
        lab.run(lab.director, ["ip", "route", "flush", "table", "100"], check=False)
    if not on:
        assert done.returncode == 7, done  # CURLE_COULDNT_CONNECT at once, not a timeout
        return
    assert done.returncode == 0, done.stderr
    assert done.stdout == "from the origin\n"
    listed = daemon.dirctl("list", "-c", "-n").stdout
    assert "0.0.0.0:0" in listed, listed
