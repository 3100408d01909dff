"""IPv6 services beside the kernel fast path: `directord --fast-path kernel` in the nat6
lab (dual stack).  The fast path is IPv4's (its hooks are iptables'); an IPv6 NAT
service is refused nothing and takes the every-packet path, both real servers
answering, while an IPv4 NAT service of the same daemon goes on the fast path."""

from __future__ import annotations

from pathlib import Path

from labtools import curl, running

from director.lab import topology
from director.lab.daemon import Daemon

LAB_KIND = "nat6"  # conftest's module-scoped lab


def test_ipv6_nat_takes_the_every_packet_path_beside_the_fast_path(
    lab: topology.Lab, tmp_path: Path
) -> None:
    v4 = "203.0.113.5"
    rules = lab.rules() + (
        f"-A -t {v4}:80 -s rr\n"
        + "".join(f"-a -t {v4}:80 -r {rs.addr4}:80 -m\n" for rs in lab.real_servers)
    )
    with running(Daemon(lab, tmp_path / "director", ["--fast-path", "kernel"])) as d:
        done = d.dirctl("restore", input=rules)
        assert done.returncode == 0, done.stderr
        bodies = [curl(lab, lab.url()) for _ in range(4)]
        assert all(b.code == 0 for b in bodies), bodies
        assert {b.body.split()[0] for b in bodies} == {"rs1", "rs2"}
        assert curl(lab, f"http://{v4}/").code == 0
        listed = d.dirctl("list", "-n", "--stats").stdout
        # Every packet of the IPv6 connections passed the worker both ways (replies
        # counted out): the every-packet path, not conntrack's.
        ipv6 = next(line for line in listed.splitlines() if line.startswith("TCP  [2001:db8"))
        conns, inpkts, outpkts = (int(x) for x in ipv6.split()[2:5])
        assert conns == 4 and inpkts > 4 and outpkts > 4, listed
