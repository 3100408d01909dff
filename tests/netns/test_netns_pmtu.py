"""Issue 6: path MTU discovery through the director, over NAT, DR and TUN.

The director's LAN toward the real servers gets a smaller MTU (br0: 1400), the real
servers keep 1500, so they advertise an MSS that does not fit and the client's first
full-sized segments (DF, as Linux TCP sends them) are too big for the way on.  The
director answers them with ICMP fragmentation-needed, from the VIP: 1400 for NAT and
DR, 1400 - 20 for TUN's IPIP header.  A 2 MB upload must arrive byte for byte (the real
server answers with the body's SHA-256), and the client's route cache must show the
lowered path MTU toward the VIP.

TUN needs PMTU discovery even with no link narrowed (1500 - 20), and a narrower link
beyond the director (router -> real server) is reported by the router to the director
about the IPIP packet, which IPVS turns into fragmentation-needed for the client
(ip_vs_in_icmp, "ICMP for IPIP").

Errors from the client's side about a DR or TUN connection go to the real server as
they are (ip_vs_icmp_xmit).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labtools import FileServer, helper_argv, random_file, route_mtu

from director.lab import topology
from director.lab.daemon import Daemon

VIP = topology.VIP
CLIENT = topology.CLIENT_ADDR
PORT = 8088
LAN_MTU = 1400
UPLOAD = 2 << 20


@pytest.fixture(scope="module", params=["nat", "dr", "tun"])
def lab(request: pytest.FixtureRequest) -> Iterator[topology.Lab]:
    """One lab of each kind (overrides conftest's NAT lab for this module)."""
    built = topology.build(kind=request.param)
    try:
        topology.start_backends(built)
        yield built
    finally:
        topology.teardown(built)


@pytest.fixture
def served(daemon: Daemon, tmp_path: Path) -> Iterator[Daemon]:
    """The daemon with VIP:8088 on rs1 by the lab's method, rs1 serving files there;
    MTUs and the client's route cache put back afterwards."""
    lab = daemon.lab
    rs1 = lab.real_servers[0]
    flag = topology.IPVSADM_FLAG[rs1.method]
    rules = f"-A -t {VIP}:{PORT} -s rr\n-a -t {VIP}:{PORT} -r {rs1.addr}:{PORT} {flag}\n"
    done = daemon.dirctl("restore", input=rules)
    assert done.returncode == 0, done.stderr
    (tmp_path / "www").mkdir()
    with FileServer(lab, rs1.netns, PORT, tmp_path / "www"):
        try:
            yield daemon
        finally:
            lab.run(lab.director, ["ip", "link", "set", "br0", "mtu", "1500"], check=False)
            if lab.router is not None:
                lab.run(lab.router, ["ip", "link", "set", "br0", "mtu", "1500"], check=False)
            lab.run(lab.client, ["ip", "route", "flush", "cache"], check=False)


def _upload(
    lab: topology.Lab, path: Path, max_time: float = 20.0
) -> subprocess.CompletedProcess[str]:
    return lab.run(
        lab.client,
        ["curl", "-sS", "--max-time", str(max_time), "-H", "Expect:", "--data-binary",
         f"@{path}", f"http://{VIP}:{PORT}/"],
        check=False, timeout=max_time + 10,
    )  # fmt: skip


def _set_mtu(lab: topology.Lab, ns: str, ifname: str, mtu: int, d: Daemon) -> None:
    lab.run(ns, ["ip", "link", "set", ifname, "mtu", str(mtu)])
    # The daemon learns the new route MTU from netlink: give its loop a moment.
    subprocess.run(["sleep", "0.5"], check=True)
    assert d.proc is not None and d.proc.poll() is None


def test_pmtu_discovery_completes_with_a_narrower_lan(served: Daemon, tmp_path: Path) -> None:
    lab = served.lab
    digest = random_file(tmp_path / "upload", UPLOAD)
    lab.run(lab.client, ["ip", "route", "flush", "cache"])
    assert route_mtu(lab, lab.client, VIP) is None
    _set_mtu(lab, lab.director, "br0", LAN_MTU, served)
    done = _upload(lab, tmp_path / "upload")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [digest, str(UPLOAD)]
    expected = LAN_MTU - 20 if lab.kind == "tun" else LAN_MTU
    assert route_mtu(lab, lab.client, VIP) == expected


@pytest.mark.parametrize("lab", ["tun"], indirect=True)
def test_tun_pmtu_discovery_needs_no_narrow_link(served: Daemon, tmp_path: Path) -> None:
    """The IPIP header takes 20 bytes of every path: 1480 is the most the client may send."""
    lab = served.lab
    digest = random_file(tmp_path / "upload", UPLOAD)
    lab.run(lab.client, ["ip", "route", "flush", "cache"])
    done = _upload(lab, tmp_path / "upload")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [digest, str(UPLOAD)]
    assert route_mtu(lab, lab.client, VIP) == 1500 - 20


@pytest.mark.parametrize("lab", ["tun"], indirect=True)
def test_tun_pmtu_discovery_through_a_narrower_link_beyond_the_director(
    served: Daemon, tmp_path: Path
) -> None:
    """The router's link to the real servers is 1300: the router tells the director
    about the IPIP packet, and IPVS tells the client 1300 - 20 (ip_vs_in_icmp)."""
    lab = served.lab
    assert lab.router is not None
    digest = random_file(tmp_path / "upload", UPLOAD)
    lab.run(lab.client, ["ip", "route", "flush", "cache"])
    _set_mtu(lab, lab.router, "br0", 1300, served)
    done = _upload(lab, tmp_path / "upload", max_time=5.0)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [digest, str(UPLOAD)]
    assert route_mtu(lab, lab.client, VIP) == 1300 - 20


def _rawpkt(lab: topology.Lab, ns: str, *args: str) -> dict[str, Any]:
    done = lab.run(ns, helper_argv("rawpkt.py", *args), timeout=30)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("lab", ["dr", "tun"], indirect=True)
def test_error_from_the_client_side_goes_to_the_real_server_as_it_is(served: Daemon) -> None:
    """(NAT rewrites such errors: test_netns_icmp.)"""
    lab = served.lab
    rs1 = lab.real_servers[0]
    argv = helper_argv("rawpkt.py", "icmp-catch", "--seconds", "5")
    catcher = subprocess.Popen(lab.exec_argv(rs1.netns, argv), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert catcher.stderr is not None and catcher.stderr.readline().strip() == "ready"
    sent = _rawpkt(lab, lab.client, "icmp-about-conn", "--dst", VIP, "--port", str(PORT),
                   "--code", "4", "--mtu", "1300", "--hold", "0.5")  # fmt: skip
    out, err = catcher.communicate(timeout=30)
    caught = [c for c in json.loads(out)["icmp"] if c["inner_dport"] == sent["cport"]]
    assert len(caught) == 1, (caught, err)
    (icmp,) = caught
    assert (icmp["src"], icmp["dst"], icmp["type"], icmp["code"], icmp["mtu"]) == (
        CLIENT, VIP, 3, 4, 1300), icmp  # fmt: skip
    assert (icmp["inner_src"], icmp["inner_sport"], icmp["inner_dst"]) == (VIP, PORT, CLIENT)
    assert icmp["checksum_ok"] and icmp["inner_checksum_ok"], icmp
