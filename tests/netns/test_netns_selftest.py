"""The kernel's IPVS selftest (tools/testing/selftests/net/netfilter/ipvs.sh), with
director in place of IPVS and SPEC §3's addresses in place of the selftest's.

::

    client (ns0)                 director (ns1)               real server (ns2)
    br0 203.0.113.10/24 ─ veth01 ── veth10 203.0.113.1/24
        │                           veth12 198.18.0.1/24 ──── veth21 198.18.0.2/24
        └───────────────── veth02 ─────────────────────────── veth20 203.0.113.20/24
    route VIP via .1             VIP 198.51.100.5/32 on lo

The same over IPv6 (SPEC §3's IPv6 networks): client 2001:db8:1::10/64, director
2001:db8:1::1/64 and 2001:db8:2::1/64, real server 2001:db8:2::2/64 and, on the
client's link, 2001:db8:1::20/64, VIP 2001:db8:1::100/128 on the director's lo.

For each of DR, NAT and TUN the client sends 32 random bytes to VIP:8080 with socat
and a socat listener on the real server must receive them intact.  As in ipvs.sh,
DR and TUN replies go straight from the real server to the client (over veth20);
for NAT the real server loses that link and routes through the director.  The real
server is prepared by ``dirctl realserver up`` instead of hand-set sysctls.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from socat32 import PORT, need_socat, transfer

from director.lab import topology
from director.lab.daemon import Daemon

FLAG = {"dr": "-g", "nat": "-m", "tun": "-i"}


@dataclass(frozen=True)
class Addresses:
    vip: str
    cip: str  # the client
    gip: str  # the director, client side
    dip: str  # the director, real-server side
    rip: str  # the real server, director side
    sip: str  # the real server, on the client's link
    prefixlen: int
    host: int  # the VIP's prefix length
    forwarding: str  # the sysctl ipvs.sh sets

    @property
    def six(self) -> bool:
        return ":" in self.vip


FAMILIES = {
    4: Addresses("198.51.100.5", "203.0.113.10", "203.0.113.1", "198.18.0.1", "198.18.0.2",
                 "203.0.113.20", 24, 32, "net.ipv4.ip_forward"),
    6: Addresses("2001:db8:1::100", "2001:db8:1::10", "2001:db8:1::1", "2001:db8:2::1",
                 "2001:db8:2::2", "2001:db8:1::20", 64, 128, "net.ipv6.conf.all.forwarding"),
}  # fmt: skip
NODAD = 0x02  # IFA_F_NODAD: the IPv6 addresses are usable at once


def _build(lab: topology.Lab, a: Addresses) -> None:
    from pyroute2 import NetNS, netns

    rs = lab.real_servers[0].netns
    flags = NODAD if a.six else 0
    for name in lab.namespaces:
        netns.create(name)
        with NetNS(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")

    def up(ns: NetNS, ifname: str, addr: str | None = None) -> None:
        idx = ns.link_lookup(ifname=ifname)[0]
        if addr:
            ns.addr("add", index=idx, address=addr, prefixlen=a.prefixlen, flags=flags)
        ns.link("set", index=idx, state="up")

    with NetNS(lab.client) as ns:
        ns.link("add", ifname="veth01", kind="veth",
                peer={"ifname": "veth10", "net_ns_fd": lab.director})  # fmt: skip
        ns.link("add", ifname="veth02", kind="veth", peer={"ifname": "veth20", "net_ns_fd": rs})
        ns.link("add", ifname="br0", kind="bridge")
        br = ns.link_lookup(ifname="br0")[0]
        for port in ("veth01", "veth02"):
            ns.link("set", index=ns.link_lookup(ifname=port)[0], master=br)
            up(ns, port)
        up(ns, "br0", a.cip)
        ns.route("add", dst=f"{a.vip}/{a.host}", gateway=a.gip)
    with NetNS(lab.director) as ns:
        ns.link("add", ifname="veth12", kind="veth", peer={"ifname": "veth21", "net_ns_fd": rs})
        up(ns, "veth10", a.gip)
        up(ns, "veth12", a.dip)
        lo = ns.link_lookup(ifname="lo")[0]
        ns.addr("add", index=lo, address=a.vip, prefixlen=a.host, flags=flags)
    with NetNS(rs) as ns:
        up(ns, "veth21", a.rip)
        up(ns, "veth20", a.sip)


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def selftest(request: pytest.FixtureRequest) -> Iterator[tuple[topology.Lab, Addresses]]:
    need_socat()
    a = FAMILIES[request.param]
    prefix = topology.new_prefix("dst")
    lab = topology.Lab(
        prefix=prefix,
        client=f"{prefix}-client",
        director=f"{prefix}-director",
        real_servers=(topology.RealServerHost("rs", a.rip, f"{prefix}-rs"),),
        vip=a.vip,
        client_addr=a.cip,
    )
    try:
        _build(lab, a)
        yield lab, a
    finally:
        topology.teardown(lab)


def _prepare(lab: topology.Lab, a: Addresses, method: str) -> None:
    """The method-specific part of ipvs.sh's test_dr / test_nat / test_tun."""
    rs = lab.real_servers[0]
    if method == "nat":
        topology.set_sysctl(lab.director, a.forwarding, "1")
        lab.run(rs.netns, ["ip", "link", "del", "veth20"])
        lab.run(rs.netns, ["ip", "route", "add", "default", "via", a.dip, "dev", "veth21"])
        return
    if method == "dr":
        topology.set_sysctl(lab.director, a.forwarding, "1")
        extra: tuple[str, ...] = ()
    else:
        topology.set_sysctl(lab.director, a.forwarding, "0")
        topology.set_sysctl(lab.director, "net.ipv4.conf.all.send_redirects", "0")
        topology.set_sysctl(lab.director, "net.ipv4.conf.default.send_redirects", "0")
        extra = ("--decap", "userspace")
    topology.realserver(lab, rs, "up", "--vip", a.vip, "--method", method, *extra)


@pytest.mark.parametrize("method", ["dr", "nat", "tun"])
def test_32_random_bytes_reach_the_real_server_intact(
    selftest: tuple[topology.Lab, Addresses], method: str, tmp_path: Path
) -> None:
    lab, a = selftest
    _prepare(lab, a, method)
    d = Daemon(lab, tmp_path / "director")
    d.start()
    try:
        vip, rip = topology.addr_port(a.vip, PORT), topology.addr_port(a.rip, PORT)
        rules = f"-A -t {vip} -s rr\n-a -t {vip} -r {rip} {FLAG[method]}\n"
        done = d.dirctl("restore", input=rules)
        assert done.returncode == 0, done.stderr
        sent, got, client = transfer(lab.client, lab.real_servers[0].netns, a.vip, tmp_path)
        assert got == sent, f"{method}: the real server got {got.hex() or 'nothing'} ({client})"
        stats = d.dirctl("list", "-n", "--stats").stdout
        assert f"  -> {rip}" in stats, stats
    finally:
        assert d.stop() == 0, d.log()
