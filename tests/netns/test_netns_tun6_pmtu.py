"""Path MTU discovery through VS/TUN over IPv6 when the narrow link is past the
director (issue 14), in the tun6 lab through the real daemon: the router between the
director and the real server has a 1,400-byte link toward it, so the director's
IPv6-in-IPv6 packets of 1,500 bytes are refused there and the router's ICMPv6 packet
too big goes to the director's own tunnel address.  The director looks through it
to the client's request (as ip_vs_in_icmp does for IPIP; ip_vs_in_icmp_v6 has no such
case), learns the real server's path MTU and tells the client 1,400 less the 40-byte
outer header: a 2 MB upload arrives whole and the client's route cache holds 1,360
for the VIP."""

from __future__ import annotations

from pathlib import Path

from labtools import FileServer, random_file, route_mtu

from director.lab.daemon import Daemon

LAB_KIND = "tun6"
PORT = 8088
UPLOAD = 2 << 20
NARROW = 1400


def test_a_router_past_the_director_teaches_the_client_through_the_tunnel(
    daemon: Daemon, tmp_path: Path
) -> None:
    lab = daemon.lab
    assert lab.router is not None
    rs1 = lab.real_servers[0]
    service = f"-t [{lab.vip}]:{PORT}"
    rules = f"-A {service} -s rr\n-a {service} -r [{rs1.addr}]:{PORT} -i\n"
    done = daemon.dirctl("restore", input=rules)
    assert done.returncode == 0, done.stderr
    digest = random_file(tmp_path / "upload", UPLOAD)
    (tmp_path / "www").mkdir()
    with FileServer(lab, rs1.netns, PORT, tmp_path / "www", bind="::"):
        lab.run(lab.client, ["ip", "-6", "route", "flush", "cache"])
        lab.run(lab.router, ["ip", "link", "set", "br0", "mtu", str(NARROW)])
        try:
            done = lab.run(
                lab.client,
                ["curl", "-sSg", "--max-time", "20", "-H", "Expect:", "--data-binary",
                 f"@{tmp_path / 'upload'}", lab.url(PORT)],
                check=False, timeout=30,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert done.stdout.split() == [digest, str(UPLOAD)]
            assert route_mtu(lab, lab.client, lab.vip) == NARROW - 40
        finally:
            lab.run(lab.router, ["ip", "link", "set", "br0", "mtu", "1500"], check=False)
            lab.run(lab.client, ["ip", "-6", "route", "flush", "cache"], check=False)
