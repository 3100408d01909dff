"""The sysctl ignore_tunneled on a director that is also a TUN real server (userspace
decapsulator, `dirctl realserver up --method tun --decap userspace` in the director's
own namespace): a client's UDP datagram to the VIP, tunnelled in IPIP to the
director's address, comes out of dirtun0 into LOCAL_IN.  At 0 (the kernel's default)
the director schedules it as any other (NAT to rs1, counted in the service's
statistics); at 1 it is the host's, as net/netfilter/ipvs/ip_vs_core.c ip_vs_in_hook
leaves a packet whose outer one it marked ipvs_property: a local listener on the VIP
gets it, rs1 nothing, and the director's counters do not move.  dirtun0 appears after
the sysctl is set: the hooks learn it from netlink's RTM_NEWLINK (and its end from
RTM_DELLINK)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from labtools import HERE, running

from director.ctl import protocol
from director.lab import topology
from director.lab.daemon import Daemon

PORT = 5454
CPORT = 40404

_LISTEN = (
    "import socket; s = socket.socket(socket.{family}, socket.SOCK_DGRAM); "
    "s.bind(({addr!r}, {PORT})); s.settimeout(3); print('ready', flush=True)\n"
    "try: print(s.recvfrom(100)[0].decode())\n"
    "except TimeoutError: print('nothing')"
)
# A client's datagram to the VIP in IPIP to the director's address (the kernel writes
# the outer header: a raw socket of protocol 4); in IPv6, IPv6-in-IPv6 (41).
_SEND = (
    f"import socket, sys; sys.path.insert(0, {str(HERE)!r}); import pkt6\n"
    "inner = pkt6.{build}({client!r}, {vip!r}, {CPORT}, {PORT}, b'tunnelled')\n"
    "s = socket.socket(socket.{family}, socket.SOCK_RAW, {proto})\n"
    "s.sendto(inner, ({outside!r}, 0))"
)


def _stats(d: Daemon) -> dict[str, Any]:
    result = protocol.request(str(d.socket_path), "list", {"conns": False}, 5.0)
    (svc,) = result["services"]
    return dict(svc["stats"])


def _tunnel_set(d: Daemon) -> str:
    name = "director-tunneled6" if d.lab.family == 6 else "director-tunneled"
    done = d.lab.run(d.lab.director, ["ipset", "list", name], check=False)
    return done.stdout


@pytest.mark.parametrize("on", [False, True], ids=["off", "on"])
def test_a_packet_decapsulated_here_is_scheduled_only_with_the_sysctl_0(
    daemon: Daemon, on: bool
) -> None:
    check(daemon, on)


@pytest.mark.parametrize("on", [False, True], ids=["off", "on"])
def test_with_the_kernel_fast_path_too(lab: topology.Lab, tmp_path: Path, on: bool) -> None:
    """--fast-path kernel: the datagram is a fast service's opening packet, queued from
    mangle PREROUTING and DNATed at 0; at 1 it opens no fast flow."""
    with running(Daemon(lab, tmp_path / "d", ["--fast-path", "kernel"])) as d:
        check(d, on, CPORT + 1 + on)


def check(daemon: Daemon, on: bool, cport: int = CPORT) -> None:
    """The test, in the lab's family (test_netns_ignore_tunneled6.py: IPv6), from the
    client's port ``cport`` (a flow conntrack carries from an earlier test, as the
    fast path's are, keeps its DNAT whatever the hooks say now)."""
    lab = daemon.lab
    rs1 = lab.real_servers[0]
    six = lab.family == 6
    vip = lab.vip
    family = "AF_INET6" if six else "AF_INET"
    virtual, real = topology.addr_port(vip, PORT), topology.addr_port(rs1.addr, PORT)
    rules = f"-A -u {virtual} -s rr\n-a -u {virtual} -r {real} -m\n"
    done = daemon.dirctl("restore", input=rules)
    assert done.returncode == 0, done.stderr
    done = daemon.dirctl("sysctl", f"ignore_tunneled={int(on)}")
    assert done.returncode == 0 and f"ignore_tunneled = {int(on)}" in done.stdout, done.stderr
    dirctl = topology._dirctl()
    up = [dirctl, "realserver", "up", "--vip", vip, "--method", "tun", "--decap", "userspace"]
    lab.run(lab.director, [*up, "-q"])
    listeners: list[subprocess.Popen[str]] = []
    try:
        deadline = time.monotonic() + 10
        while on and "dirtun0" not in _tunnel_set(daemon):
            assert time.monotonic() < deadline, _tunnel_set(daemon)
            time.sleep(0.1)
        if not on:
            assert "dirtun0" not in _tunnel_set(daemon)
        before = _stats(daemon)
        for ns, addr in ((lab.director, vip), (rs1.netns, "")):
            code = _LISTEN.format(family=family, addr=addr, PORT=PORT)
            listeners.append(subprocess.Popen(
                lab.exec_argv(ns, [sys.executable, "-c", code]),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))  # fmt: skip
        for proc in listeners:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        send = _SEND.format(
            build="udp6" if six else "udp4", client=lab.client_addr, vip=vip, CPORT=cport,
            PORT=PORT, family=family, proto=41 if six else 4,
            outside=topology.DIRECTOR_OUTSIDE6 if six else topology.DIRECTOR_OUTSIDE,
        )  # fmt: skip
        lab.run(lab.client, [sys.executable, "-c", send], timeout=10)
        local, remote = (proc.communicate(timeout=15)[0].strip() for proc in listeners)
        after = _stats(daemon)
    finally:
        for proc in listeners:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        lab.run(lab.director, [dirctl, "realserver", "down", "-q"], check=False)
    if on:
        assert (local, remote) == ("tunnelled", "nothing")
        assert after["conns"] == before["conns"] and after["inpkts"] == before["inpkts"], after
        deadline = time.monotonic() + 10  # dirtun0 gone (RTM_DELLINK): out of the set
        while "dirtun0" in _tunnel_set(daemon):
            assert time.monotonic() < deadline, _tunnel_set(daemon)
            time.sleep(0.1)
    else:
        assert (local, remote) == ("nothing", "tunnelled")
        assert after["conns"] == before["conns"] + 1, (before, after)
        assert after["inpkts"] == before["inpkts"] + 1, (before, after)
