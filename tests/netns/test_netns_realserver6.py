"""``dirctl realserver up|down`` for IPv6 VIPs, on a real server namespace with a
"director" namespace beside it (one veth, 2001:db8:2::/64 and 198.18.0.0/24):

- DR: the VIP goes on lo as a /128 and the real server never answers a neighbour
  solicitation for it (Linux answers NS only for the receiving device's addresses,
  ndisc_recv_ns), while its own address resolves; down takes the VIP away again;
- TUN: the userspace decapsulator delivers to a socket on the VIP what the director
  sends tunnelled as IPv6-in-IPv6, IPv4-in-IPv6 and IPv6-in-IPv4 (this kernel has no
  ip6_tunnel nor sit); down stops it and leaves the host as it was.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pkt6 import udp4, udp6

from director.lab import topology
from director.lab.daemon import venv_program

VIP6, VIP4 = "2001:db8:1::100", "203.0.113.5"
CLIENT6, CLIENT4 = "2001:db8:1::10", "203.0.113.10"
OWN6, RS6 = "2001:db8:2::1", "2001:db8:2::2"
OWN4, RS4 = "198.18.0.1", "198.18.0.2"


def ns_run(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert not check or done.returncode == 0, (argv, done.stdout, done.stderr)
    return done


@pytest.fixture
def hosts() -> Iterator[tuple[str, str]]:
    """(director, real server) namespaces."""
    prefix = topology.new_prefix("drs6")
    d, r = f"{prefix}d", f"{prefix}r"
    for ns in (d, r):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", d, "link", "add", "eth0", "type", "veth", "peer", "name",
                        "eth0", "netns", r], check=True)  # fmt: skip
        for ns, own6, own4 in ((d, OWN6, OWN4), (r, RS6, RS4)):
            ns_run(ns, "sh", "-c", "echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad")
            for argv in (["link", "set", "lo", "up"], ["link", "set", "eth0", "up"],
                         ["addr", "add", f"{own6}/64", "dev", "eth0", "nodad"],
                         ["addr", "add", f"{own4}/24", "dev", "eth0"]):  # fmt: skip
                ns_run(ns, "ip", *argv)
        yield d, r
    finally:
        ns_run(r, venv_program("dirctl"), "realserver", "down", check=False)
        topology._kill_namespace_pids(r)
        for ns in (d, r):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def dirctl(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return ns_run(ns, venv_program("dirctl"), "realserver", *args, check=False)


def addrs(ns: str) -> set[tuple[str, str, int]]:
    shown = json.loads(ns_run(ns, "ip", "-j", "addr").stdout)
    return {(x["ifname"], a["local"], a["prefixlen"]) for x in shown for a in x["addr_info"]}


def neighbour_state(ns: str, addr: str, wait: float = 5.0) -> list[str]:
    """The states ``ip -6 neigh`` shows for ``addr`` once it is REACHABLE or FAILED, or
    after ``wait`` seconds (a packet asks for it first)."""
    ns_run(ns, sys.executable, "-c",
           "import socket,sys; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
           "s.sendto(b'x', (sys.argv[1], 9))", addr)  # fmt: skip
    deadline = time.monotonic() + wait
    while True:
        shown = json.loads(ns_run(ns, "ip", "-j", "-6", "neigh", "show", addr).stdout or "[]")
        states = [s for entry in shown for s in entry.get("state", [])]
        if time.monotonic() > deadline or any(s in ("REACHABLE", "FAILED") for s in states):
            return states
        time.sleep(0.1)


def test_dr_ipv6_vip_on_lo_is_never_announced(hosts: tuple[str, str]) -> None:
    d, r = hosts
    before = addrs(r)
    done = dirctl(r, "up", "--vip", VIP6, "--method", "dr")
    assert done.returncode == 0, done.stderr
    assert f"ip addr add {VIP6}/128 dev lo" in done.stdout
    assert ("lo", VIP6, 128) in addrs(r)
    # The director asks for the VIP on the LAN as if it were a neighbour: no answer.
    ns_run(d, "ip", "-6", "route", "add", f"{VIP6}/128", "dev", "eth0")
    assert "REACHABLE" in neighbour_state(d, RS6)  # the real server does answer NDP
    assert "REACHABLE" not in neighbour_state(d, VIP6, wait=2.0)  # three solicitations
    done = dirctl(r, "down")
    assert done.returncode == 0, done.stderr
    assert addrs(r) == before


# In the real server's namespace: a UDP socket on each VIP:53 (bound once the
# decapsulator's device holds them); prints each datagram with its source, 10 s at most.
LISTEN = r"""
import select, socket, sys, time
socks = []
for family, vip in ((socket.AF_INET6, sys.argv[1]), (socket.AF_INET, sys.argv[2])):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((vip, 53))
    socks.append(s)
print("ready", flush=True)
want, deadline = int(sys.argv[3]), time.monotonic() + 10
while want and time.monotonic() < deadline:
    for s in select.select(socks, [], [], 0.2)[0]:
        data, peer = s.recvfrom(100)
        print(data.decode(), peer[0], flush=True)
        want -= 1
"""

# In the director's namespace: each packet (hex) sent tunnelled to the real server:
# argv triples of outer family (4 or 6), inner protocol (4 or 41) and the packet.
TUNNEL = r"""
import socket, sys
rs = {4: sys.argv[1], 6: sys.argv[2]}
args = sys.argv[3:]
for i in range(0, len(args), 3):
    family, proto, packet = int(args[i]), int(args[i + 1]), bytes.fromhex(args[i + 2])
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    s = socket.socket(af, socket.SOCK_RAW, proto)
    s.sendto(packet, (rs[family], 0))
"""


def test_tun_ipv6_the_decapsulator_takes_every_ipv6_tunnel(hosts: tuple[str, str]) -> None:
    d, r = hosts
    before = addrs(r)
    done = dirctl(r, "up", "--vip", VIP6, "--vip", VIP4, "--method", "tun")
    assert done.returncode == 0, done.stderr
    assert ("dirtun0", VIP6, 128) in addrs(r) and ("dirtun0", VIP4, 32) in addrs(r)
    assert len(decapsulators(r)) == 1
    packets = [
        ("6", "41", udp6(CLIENT6, VIP6, 40001, 53, b"6in6")),
        ("6", "4", udp4(CLIENT4, VIP4, 40002, 53, b"4in6")),
        ("4", "41", udp6(CLIENT6, VIP6, 40003, 53, b"6in4")),
    ]
    listener = subprocess.Popen(
        ["ip", "netns", "exec", r, sys.executable, "-c", LISTEN, VIP6, VIP4, str(len(packets))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        argv = [word for family, proto, packet in packets for word in (family, proto, packet.hex())]
        ns_run(d, sys.executable, "-c", TUNNEL, RS4, RS6, *argv)
        got, err = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    assert sorted(got.splitlines()) == [f"4in6 {CLIENT4}", f"6in4 {CLIENT6}", f"6in6 {CLIENT6}"], (
        got, err, dirctl(r, "status").stdout)  # fmt: skip
    done = dirctl(r, "down")
    assert done.returncode == 0, done.stderr
    assert addrs(r) == before
    assert not decapsulators(r)


def decapsulators(ns: str) -> list[str]:
    """The command lines of the decapsulators running in ``ns``."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    found = []
    for pid in pids.split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "director.realserver.decap" in cmdline:
            found.append(cmdline)
    return found
