"""IPv6 end to end (issue 14) in the nat6, dr6 and tun6 labs, through the real daemon,
ip6tables, NFQUEUE and real clients and servers.

- path MTU discovery through each method: the director's LAN toward the real servers
  narrowed to 1400, a 2 MB upload arrives whole and the client's route cache holds the
  path MTU to the VIP, 1400 for NAT and DR, 1400 - 40 for TUN (the outer IPv6 header,
  net/netfilter/ipvs/ip_vs_xmit.c __ip_vs_get_out_rt_v6: a tunnel's mtu less sizeof(struct
  ipv6hdr), then __mtu_check_toobig_v6 and ICMPV6_PKT_TOOBIG);
- a mixed-family tunnel: an IPv4 service whose real servers are IPv6 (IPv4 in IPv6,
  as IPVS allows for tunnels only).

The kernel IPVS selftest's scenario over IPv6 is test_netns_selftest.py's IPv6 half;
the seed example over IPv6, persistence with -M 64 and save/restore of IPv6 rules are
in test_netns_ipv6_nat.py (the nat6 lab alone).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from labtools import FileServer, random_file, route_mtu
from socat32 import PORT, need_socat, transfer

from director.lab import topology
from director.lab.daemon import Daemon

UPLOAD = 2 << 20
LAN_MTU = 1400
FILE_PORT = 8088
# The outer header a tunnel adds: IPv6's 40 bytes (IPv4 in IPv6 too), IPIP's 20.
OUTER = {"tun": 40}


@pytest.fixture(scope="module", params=["nat6", "dr6", "tun6"])
def lab(request: pytest.FixtureRequest) -> Iterator[topology.Lab]:
    """One IPv6 lab of each method (overrides conftest's NAT lab for this module)."""
    built = topology.build(kind=request.param)
    try:
        yield built
    finally:
        topology.teardown(built)


def _restore(d: Daemon, rules: str) -> None:
    done = d.dirctl("restore", input=rules)
    assert done.returncode == 0, done.stderr


def _rules(lab: topology.Lab, vip: str, port: int) -> str:
    """One service on ``vip``:``port`` over rs1 by the lab's method."""
    rs1 = lab.real_servers[0]
    flag = topology.IPVSADM_FLAG[rs1.method]
    service = topology.addr_port(vip, port)
    return (
        f"-A -t {service} -s rr\n-a -t {service} -r {topology.addr_port(rs1.addr, port)} {flag}\n"
    )


def _upload(lab: topology.Lab, path: Path, url: str) -> tuple[int, str, str]:
    done = lab.run(
        lab.client,
        ["curl", "-sSg", "--max-time", "20", "-H", "Expect:", "--data-binary", f"@{path}", url],
        check=False, timeout=30,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def test_pmtu_discovery_through_a_narrower_lan(daemon: Daemon, tmp_path: Path) -> None:
    """The client learns the MTU of the way on from the director's packet too big."""
    lab = daemon.lab
    rs1 = lab.real_servers[0]
    _restore(daemon, _rules(lab, lab.vip, FILE_PORT))
    digest = random_file(tmp_path / "upload", UPLOAD)
    (tmp_path / "www").mkdir()
    with FileServer(lab, rs1.netns, FILE_PORT, tmp_path / "www", bind="::"):
        lab.run(lab.client, ["ip", "-6", "route", "flush", "cache"])
        assert route_mtu(lab, lab.client, lab.vip) is None
        lab.run(lab.director, ["ip", "link", "set", "br0", "mtu", str(LAN_MTU)])
        try:
            code, out, err = _upload(lab, tmp_path / "upload", lab.url(FILE_PORT))
            assert code == 0, err
            assert out.split() == [digest, str(UPLOAD)]
            expected = LAN_MTU - OUTER.get(lab.method_kind, 0)
            assert route_mtu(lab, lab.client, lab.vip) == expected
        finally:
            lab.run(lab.director, ["ip", "link", "set", "br0", "mtu", "1500"], check=False)
            lab.run(lab.client, ["ip", "-6", "route", "flush", "cache"], check=False)


@pytest.mark.parametrize("lab", ["tun6"], indirect=True)
def test_mixed_family_tunnel_ipv4_service_ipv6_real_server(daemon: Daemon, tmp_path: Path) -> None:
    """-t 203.0.113.5:8080 -r [2001:db8:3::2]:8080 -i: the IPv4 packet goes to the real
    server inside IPv6 (IPVS's mixed-family tunnel, ip_vs_tunnel_xmit_v6 with an IPv4
    inner packet); the real server, holding the IPv4 VIP too, answers the client directly."""
    need_socat()
    lab = daemon.lab
    rs1 = lab.real_servers[0]
    topology.realserver(lab, rs1, "up", "--vip", topology.VIP, "--vip", lab.vip,
                        "--method", "tun", "-q")  # fmt: skip
    try:
        _restore(daemon, _rules(lab, topology.VIP, PORT))
        listed = daemon.dirctl("list", "-n").stdout
        assert f"  -> [{rs1.addr}]:{PORT}" in listed and "Tunnel" in listed, listed
        sent, got, client = transfer(lab.client, rs1.netns, topology.VIP, tmp_path)
        assert got == sent, f"the real server got {got.hex() or 'nothing'} ({client})"
    finally:
        topology.realserver(lab, rs1, "up", "--vip", lab.vip, "--method", "tun", "-q")
