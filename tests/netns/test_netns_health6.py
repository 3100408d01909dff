"""Health checks over IPv6.  Through the real daemon in the dr6 lab: an HTTP check
with the VIP-path probe takes out a DR real server that lost the IPv6 VIP from its lo
and puts it back when the VIP is there again.  The VIP-path SYN probe on its own
(director/health/synprobe.py), between a director namespace and a real server
namespace (one veth, 2001:db8:2::/64 and 198.18.0.0/24):

- DR: the IPv6 SYN in an Ethernet frame to the MAC NDP gives; a real server holding
  the VIP on lo answers SYN-ACK (healthy), one that lost it drops it (unhealthy);
- TUN: tunnelled to a real server whose userspace decapsulator (``dirctl realserver
  up --method tun``) takes it: IPv6-in-IPv6, and the mixed families, an IPv4 VIP over
  IPv6 and an IPv6 VIP over IPv4.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from director.lab import topology
from director.lab.daemon import Daemon, venv_program

LAB_KIND = "dr6"  # conftest's module-scoped lab

VIP6, VIP4 = "2001:db8:1::100", "203.0.113.5"
OWN6, RS6 = "2001:db8:2::1", "2001:db8:2::2"
OWN4, RS4 = "198.18.0.1", "198.18.0.2"


def ns_run(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert not check or done.returncode == 0, (argv, done.stdout, done.stderr)
    return done


# In the real server's namespace: a TCP listener on each VIP:80, until stdin closes.
LISTEN = r"""
import socket, sys
socks = []
for vip in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6 if ":" in vip else socket.AF_INET, socket.SOCK_STREAM)
    s.bind((vip, 80))
    s.listen()
    socks.append(s)
print("ready", flush=True)
sys.stdin.read()
"""

PROBE = r"""
import sys
from director.health.synprobe import probe
ok, reason = probe(sys.argv[1], 80, sys.argv[2], sys.argv[3], float(sys.argv[4]))
print(ok, reason)
"""


@pytest.fixture
def hosts() -> Iterator[tuple[str, str]]:
    prefix = topology.new_prefix("dhp6")
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


def probe_with_listener(
    d: str,
    r: str,
    cases: list[tuple[str, str, str]],
    vips: tuple[str, ...] = (VIP6, VIP4),
    wait: float = 3.0,
) -> list[str]:
    """Each probe's printed outcome (VIP, real server, method), with listeners up on
    ``vips``."""
    listener = subprocess.Popen(
        ["ip", "netns", "exec", r, sys.executable, "-c", LISTEN, *vips],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready", listener.stderr
        return [ns_run(d, sys.executable, "-c", PROBE, *case, str(wait)).stdout.strip()
                for case in cases]  # fmt: skip
    finally:
        listener.kill()
        listener.communicate()


def test_dr_probe_over_ipv6(hosts: tuple[str, str]) -> None:
    d, r = hosts
    for vip in (VIP6, VIP4):
        ns_run(r, "ip", "addr", "add", vip, "dev", "lo", *(("nodad",) if ":" in vip else ()))
    assert probe_with_listener(d, r, [(VIP6, RS6, "droute")]) == ["True"]
    ns_run(r, "ip", "addr", "del", f"{VIP6}/128", "dev", "lo")  # the VIP lost
    (lost,) = probe_with_listener(d, r, [(VIP6, RS6, "droute")], vips=(VIP4,), wait=1.0)
    assert lost.startswith("False no answer from"), lost


def test_tun_probes_over_every_ipv6_tunnel(hosts: tuple[str, str]) -> None:
    d, r = hosts
    done = ns_run(r, venv_program("dirctl"), "realserver", "up", "--vip", VIP6, "--vip", VIP4,
                  "--method", "tun")  # fmt: skip
    assert "realserver up" in done.stdout
    cases = [(VIP6, RS6, "tunnel"), (VIP4, RS6, "tunnel"), (VIP6, RS4, "tunnel")]
    assert probe_with_listener(d, r, cases) == ["True", "True", "True"]


def _states(d: Daemon) -> dict[str, str]:
    done = d.dirctl("list", "--checks", "--json")
    assert done.returncode == 0, done.stderr
    return {f"[{r['server'][0]}]:{r['server'][1]}": r["state"] for r in json.loads(done.stdout)}


def _wait_for(d: Daemon, server: str, state: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _states(d).get(server) == state:
            return
        time.sleep(0.1)
    raise AssertionError(f"{server} not {state} after {within}s: {_states(d)}")


def test_the_daemon_checks_ipv6_dr_servers_through_the_vip(
    lab: topology.Lab, daemon: Daemon
) -> None:
    vip = topology.addr_port(lab.vip, 80)
    check = f"# director-check -t {vip} --type http --via-vip --interval 0.5 --timeout 0.4\n"
    done = daemon.dirctl("restore", input=lab.rules() + check)
    assert done.returncode == 0, done.stderr
    rs1, rs2 = (f"[{rs.addr}]:80" for rs in lab.real_servers)
    _wait_for(daemon, rs1, "up")
    _wait_for(daemon, rs2, "up")
    netns = lab.real_servers[0].netns
    ns_run(netns, "ip", "addr", "del", f"{lab.vip}/128", "dev", "lo")  # rs1 lost the VIP
    try:
        _wait_for(daemon, rs1, "down")  # its own address still answers HTTP
        assert _states(daemon)[rs2] == "up"
    finally:
        ns_run(netns, "ip", "addr", "add", f"{lab.vip}/128", "dev", "lo", "nodad")
    _wait_for(daemon, rs1, "up")
