"""Issue 6: ICMP errors about a NAT connection, translated in both directions.

Outward (ip_vs_out_icmp): the real server's kernel refuses a datagram for a port
nobody listens on, and the client hears it from the VIP, about VIP:vport (its connected
UDP socket fails with ECONNREFUSED, and a raw ICMP socket sees the message); a
fragmentation-needed the real server sends about a connection lowers the client's path
MTU toward the VIP.  Inward (ip_vs_in_icmp): an error a router on the client's side
sends the VIP about a connection reaches the real server rewritten to be about
RIP:rport, every checksum sound.  The services translate ports, so that a header left
untranslated shows.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from labtools import helper_argv, route_mtu

from director.lab import topology
from director.lab.daemon import Daemon

VIP = topology.VIP
CLIENT = topology.CLIENT_ADDR


@pytest.fixture
def nat(daemon: Daemon) -> Iterator[Daemon]:
    yield daemon
    daemon.lab.run(daemon.lab.client, ["ip", "route", "flush", "cache"], check=False)


def _restore(d: Daemon, rules: str) -> None:
    done = d.dirctl("restore", input=rules)
    assert done.returncode == 0, done.stderr


def _rawpkt(lab: topology.Lab, ns: str, *args: str) -> dict[str, Any]:
    done = lab.run(ns, helper_argv("rawpkt.py", *args), timeout=30)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


class Catcher:
    """``rawpkt.py icmp-catch`` in a namespace: the ICMP errors that arrive there."""

    def __init__(self, lab: topology.Lab, ns: str, seconds: float = 15.0) -> None:
        argv = helper_argv("rawpkt.py", "icmp-catch", "--seconds", str(seconds))
        self.proc = subprocess.Popen(lab.exec_argv(ns, argv), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert self.proc.stderr is not None
        assert self.proc.stderr.readline().strip() == "ready"

    def caught(self) -> list[dict[str, Any]]:
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        found: list[dict[str, Any]] = json.loads(out)["icmp"]
        return found


def test_port_unreachable_from_a_nat_real_server_comes_from_the_vip(nat: Daemon) -> None:
    lab = nat.lab
    rs1 = lab.real_servers[0]
    _restore(nat, f"-A -u {VIP}:5301 -s rr\n-a -u {VIP}:5301 -r {rs1.addr}:5302 -m\n")
    result = _rawpkt(lab, lab.client, "udp-refused", "--dst", VIP, "--port", "5301")
    assert result["outcome"] == "refused", result
    (icmp,) = result["icmp"]
    cport = result["local"][1]
    assert (icmp["src"], icmp["dst"], icmp["type"], icmp["code"]) == (VIP, CLIENT, 3, 3), icmp
    assert (icmp["inner_src"], icmp["inner_sport"]) == (CLIENT, cport), icmp
    assert (icmp["inner_dst"], icmp["inner_dport"]) == (VIP, 5301), icmp
    assert icmp["checksum_ok"] and icmp["inner_checksum_ok"], icmp


def test_frag_needed_from_a_nat_real_server_lowers_the_clients_path_mtu(nat: Daemon) -> None:
    """The real server says a datagram of the connection needs 1200 bytes: the client's
    UDP socket finds the error (only if it is about VIP:vport, from the VIP's side) and
    its kernel caches the path MTU toward the VIP."""
    lab = nat.lab
    rs1 = lab.real_servers[0]
    _restore(nat, f"-A -u {VIP}:5303 -s rr\n-a -u {VIP}:5303 -r {rs1.addr}:5304 -m\n")
    assert route_mtu(lab, lab.client, VIP) is None
    hold = subprocess.Popen(
        lab.exec_argv(lab.client, helper_argv("rawpkt.py", "udp-hold", "--dst", VIP,
                                               "--port", "5303")),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert hold.stdout is not None
        cport = json.loads(hold.stdout.readline())["local"][1]
        _rawpkt(lab, rs1.netns, "icmp-inject", "--src", rs1.addr, "--dst", CLIENT,
                "--qsrc", CLIENT, "--qsport", str(cport), "--qdst", rs1.addr,
                "--qdport", "5304", "--code", "4", "--mtu", "1200")  # fmt: skip
        deadline = time.monotonic() + 20
        while route_mtu(lab, lab.client, VIP) is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        hold.communicate(timeout=15)
    assert route_mtu(lab, lab.client, VIP) == 1200


@pytest.mark.parametrize(("code", "mtu"), [(3, 0), (4, 1300)], ids=["port-unreach", "frag-needed"])
def test_error_from_the_client_side_reaches_the_real_server_rewritten(
    nat: Daemon, code: int, mtu: int
) -> None:
    lab = nat.lab
    rs1 = lab.real_servers[0]
    _restore(nat, f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {rs1.addr}:8000 -m\n")
    catcher = Catcher(lab, rs1.netns)
    sent = _rawpkt(lab, lab.client, "icmp-about-conn", "--dst", VIP, "--port", "80",
                   "--code", str(code), "--mtu", str(mtu), "--hold", "0.5")  # fmt: skip
    caught = [c for c in catcher.caught() if c["inner_dport"] == sent["cport"]]
    assert len(caught) == 1, caught
    (icmp,) = caught
    assert (icmp["src"], icmp["dst"], icmp["type"], icmp["code"]) == (CLIENT, rs1.addr, 3, code)
    assert (icmp["inner_src"], icmp["inner_sport"]) == (rs1.addr, 8000), icmp
    assert icmp["inner_dst"] == CLIENT, icmp
    assert icmp["mtu"] == mtu, icmp
    assert icmp["checksum_ok"] and icmp["inner_checksum_ok"], icmp
