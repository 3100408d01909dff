"""The kernel's IPVS selftest (tools/testing/selftests/net/netfilter/ipvs.sh), with
director in place of IPVS and SPEC §3's addresses in place of the selftest's.

::

    client (ns0)                 director (ns1)               real server (ns2)
    br0 203.0.113.10/24 ─ veth01 ── veth10 203.0.113.1/24
        │                           veth12 198.18.0.1/24 ──── veth21 198.18.0.2/24
        └───────────────── veth02 ─────────────────────────── veth20 203.0.113.20/24
    route VIP via .1             VIP 198.51.100.5/32 on lo

For each of DR, NAT and TUN the client sends 32 random bytes to VIP:8080 with socat
and a socat listener on the real server must receive them intact.  As in ipvs.sh,
DR and TUN replies go straight from the real server to the client (over veth20);
for NAT the real server loses that link and routes through the director.  The real
server is prepared by ``dirctl realserver up`` instead of hand-set sysctls.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from socat32 import PORT, need_socat, transfer

from director.lab import topology
from director.lab.daemon import Daemon

VIP = "198.51.100.5"
CIP, GIP, DIP, RIP, SIP = "203.0.113.10", "203.0.113.1", "198.18.0.1", "198.18.0.2", "203.0.113.20"
FLAG = {"dr": "-g", "nat": "-m", "tun": "-i"}


def _build(lab: topology.Lab) -> None:
    from pyroute2 import NetNS, netns

    rs = lab.real_servers[0].netns
    for name in lab.namespaces:
        netns.create(name)
        with NetNS(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")

    def up(ns: NetNS, ifname: str, addr: str | None = None) -> None:
        idx = ns.link_lookup(ifname=ifname)[0]
        if addr:
            ns.addr("add", index=idx, address=addr, prefixlen=24)
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
        up(ns, "br0", CIP)
        ns.route("add", dst=f"{VIP}/32", gateway=GIP)
    with NetNS(lab.director) as ns:
        ns.link("add", ifname="veth12", kind="veth", peer={"ifname": "veth21", "net_ns_fd": rs})
        up(ns, "veth10", GIP)
        up(ns, "veth12", DIP)
        ns.addr("add", index=ns.link_lookup(ifname="lo")[0], address=VIP, prefixlen=32)
    with NetNS(rs) as ns:
        up(ns, "veth21", RIP)
        up(ns, "veth20", SIP)


@pytest.fixture
def selftest() -> Iterator[topology.Lab]:
    need_socat()
    prefix = topology.new_prefix("dst")
    lab = topology.Lab(
        prefix=prefix,
        client=f"{prefix}-client",
        director=f"{prefix}-director",
        real_servers=(topology.RealServerHost("rs", RIP, f"{prefix}-rs"),),
        vip=VIP,
        client_addr=CIP,
    )
    try:
        _build(lab)
        yield lab
    finally:
        topology.teardown(lab)


def _prepare(lab: topology.Lab, method: str) -> None:
    """The method-specific part of ipvs.sh's test_dr / test_nat / test_tun."""
    rs = lab.real_servers[0]
    if method == "nat":
        topology.set_sysctl(lab.director, "net.ipv4.ip_forward", "1")
        lab.run(rs.netns, ["ip", "link", "del", "veth20"])
        lab.run(rs.netns, ["ip", "route", "add", "default", "via", DIP, "dev", "veth21"])
        return
    if method == "dr":
        topology.set_sysctl(lab.director, "net.ipv4.ip_forward", "1")
        extra: tuple[str, ...] = ()
    else:
        topology.set_sysctl(lab.director, "net.ipv4.ip_forward", "0")
        topology.set_sysctl(lab.director, "net.ipv4.conf.all.send_redirects", "0")
        topology.set_sysctl(lab.director, "net.ipv4.conf.default.send_redirects", "0")
        extra = ("--decap", "userspace")
    topology.realserver(lab, rs, "up", "--vip", VIP, "--method", method, *extra)


@pytest.mark.parametrize("method", ["dr", "nat", "tun"])
def test_32_random_bytes_reach_the_real_server_intact(
    selftest: topology.Lab, method: str, tmp_path: Path
) -> None:
    lab = selftest
    _prepare(lab, method)
    d = Daemon(lab, tmp_path / "director")
    d.start()
    try:
        rules = f"-A -t {VIP}:{PORT} -s rr\n-a -t {VIP}:{PORT} -r {RIP}:{PORT} {FLAG[method]}\n"
        done = d.dirctl("restore", input=rules)
        assert done.returncode == 0, done.stderr
        sent, got, client = transfer(lab.client, lab.real_servers[0].netns, VIP, tmp_path)
        assert got == sent, f"{method}: the real server got {got.hex() or 'nothing'} ({client})"
        stats = d.dirctl("list", "-n", "--stats").stdout
        assert f"{RIP}:{PORT}" in stats, stats
    finally:
        assert d.stop() == 0, d.log()
