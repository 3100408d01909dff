"""VS/TUN over GUE and GRE (ipvsadm --tun-type gue|gre) to real servers two routed
hops away (the TUN lab: director -> router -> rs1, rs2).

This machine's kernel has neither ``fou`` nor ``gre``: each real server decapsulates
in userspace (``dirctl realserver up --method tun --tun-type gue --tun-port N`` or
``--tun-type gre``: a UDP socket on the GUE port, a raw socket of protocol 47).  For
each tunnel type and checksum option: the kernel IPVS selftest's 32 random bytes
(tools/testing/selftests/net/netfilter/ipvs.sh) arrive intact, a 20 MB download
arrives whole, and what the director sent was of that type (the real server's
decapsulator counted the packets it passed, with nothing refused).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from labtools import FileServer, random_file, route_mtu, sha256_file
from socat32 import PORT, need_socat, transfer

from director.lab import topology
from director.lab.daemon import Daemon

LAB_KIND = "tun"  # conftest's lab fixture builds this kind
VIP = topology.VIP
FILE_PORT = 8081
SIZE = 20 << 20

TUNNELS = {
    "gue-nocsum": (("--tun-type", "gue", "--tun-port", "6080"), "--tun-nocsum"),
    "gue-csum": (("--tun-type", "gue", "--tun-port", "6080"), "--tun-csum"),
    "gue-remcsum": (("--tun-type", "gue", "--tun-port", "6080"), "--tun-remcsum"),
    "gre-nocsum": (("--tun-type", "gre"), "--tun-nocsum"),
    "gre-csum": (("--tun-type", "gre"), "--tun-csum"),
}


@pytest.mark.parametrize("tunnel", list(TUNNELS))
def test_tun_types_two_routed_hops_away(daemon: Daemon, tunnel: str, tmp_path: Path) -> None:
    need_socat()
    lab = daemon.lab
    rs = lab.real_servers[0]
    args, csum = TUNNELS[tunnel]
    topology.realserver(lab, rs, "down", "-q")
    topology.realserver(lab, rs, "up", "--vip", VIP, "--method", "tun", *args, "-q")
    hops = lab.run(lab.director, ["ip", "route", "get", rs.addr]).stdout
    assert f"via {topology.ROUTER_INSIDE}" in hops, hops
    server = " ".join((*args, csum))
    rules = "".join(
        f"-A -t {VIP}:{port} -s rr\n-a -t {VIP}:{port} -r {rs.addr}:{port} -i {server}\n"
        for port in (PORT, FILE_PORT)
    )
    done = daemon.dirctl("restore", input=rules)
    assert done.returncode == 0, done.stderr
    saved = daemon.dirctl("save").stdout
    assert f"-i -w 1 {server}" in saved, saved

    sent, got, client = transfer(lab.client, rs.netns, VIP, tmp_path)
    assert got == sent, f"{tunnel}: the real server got {got.hex() or 'nothing'} ({client})"

    www = tmp_path / "www"
    www.mkdir()
    want = random_file(www / "blob", SIZE)
    into = tmp_path / "got"
    with FileServer(lab, rs.netns, FILE_PORT, www):
        url = f"http://{VIP}:{FILE_PORT}/blob"
        argv = ["curl", "-sS", "--max-time", "90", "-o", str(into), url]
        done = lab.run(lab.client, argv, check=False, timeout=120)
    assert done.returncode == 0, (done.stderr, daemon.log())
    assert sha256_file(into) == want
    code = "from director.realserver import host; print(host.state_dir())"
    state = Path(lab.run(rs.netns, [sys.executable, "-c", code]).stdout.strip())
    pid = json.loads((state / "state.json").read_text())["decap_pid"]
    os.kill(pid, signal.SIGTERM)  # the decapsulator this test's `up` started logs its counts
    deadline = time.monotonic() + 10
    while "decap dirtun0:" not in (log := (state / "decap.log").read_text()):
        assert time.monotonic() < deadline, log
        time.sleep(0.1)
    summary = log.strip().splitlines()[-1]
    topology.realserver(lab, rs, "down", "-q")
    counts = dict(item.rsplit(" ", 1) for item in summary.split(": ", 1)[1].split(", "))
    kind = f"passed-{tunnel.split('-')[0]}"  # every packet came by the tunnel type
    assert set(counts) == {kind} and int(counts[kind]) > 100, summary


PMTU = {  # tunnel -> (realserver up options, the server's options, outer headers' length)
    "gue": (("--tun-type", "gue", "--tun-port", "6080"), "--tun-csum", 20 + 8 + 4),
    "gre": (("--tun-type", "gre"), "--tun-nocsum", 20 + 4),
    "gre-csum": (("--tun-type", "gre"), "--tun-csum", 20 + 8),
}


@pytest.mark.parametrize("tunnel", list(PMTU))
def test_path_mtu_through_gue_and_gre(daemon: Daemon, tunnel: str, tmp_path: Path) -> None:
    """Path MTU discovery through each tunnel type: a 2 MB upload of full-sized DF
    segments arrives whole, the client learning 1500 less the outer IP and tunnel
    headers from the director (__ip_vs_get_out_rt's MTU, ensure_mtu_is_adequate), then,
    the router's link toward the real server narrowed to 1300, 1300 less them from the
    router's error about the director's GUE or GRE packet, looked through
    (ip_vs_in_icmp with ipvs_udp_decap / ipvs_gre_decap: ``mtu -= hlen_ipip + ulen``)."""
    lab = daemon.lab
    assert lab.router is not None
    rs = lab.real_servers[0]
    args, csum, overhead = PMTU[tunnel]
    topology.realserver(lab, rs, "down", "-q")
    topology.realserver(lab, rs, "up", "--vip", VIP, "--method", "tun", *args, "-q")
    server = " ".join((*args, csum))
    vip, rip = f"{VIP}:{FILE_PORT}", f"{rs.addr}:{FILE_PORT}"
    rules = f"-A -t {vip} -s rr\n-a -t {vip} -r {rip} -i {server}\n"
    done = daemon.dirctl("restore", input=rules)
    assert done.returncode == 0, done.stderr
    digest = random_file(tmp_path / "upload", 2 << 20)
    (tmp_path / "www").mkdir()
    upload = ["curl", "-sS", "--max-time", "10", "-H", "Expect:", "--data-binary",
              f"@{tmp_path / 'upload'}", f"http://{VIP}:{FILE_PORT}/"]  # fmt: skip
    try:
        with FileServer(lab, rs.netns, FILE_PORT, tmp_path / "www"):
            lab.run(lab.client, ["ip", "route", "flush", "cache"])
            done = lab.run(lab.client, upload, check=False, timeout=30)
            assert done.returncode == 0, done.stderr
            assert done.stdout.split() == [digest, str(2 << 20)]
            assert route_mtu(lab, lab.client, VIP) == 1500 - overhead
            lab.run(lab.client, ["ip", "route", "flush", "cache"])
            lab.run(lab.router, ["ip", "link", "set", "br0", "mtu", "1300"])
            done = lab.run(lab.client, upload, check=False, timeout=30)
            assert done.returncode == 0, done.stderr
            assert done.stdout.split() == [digest, str(2 << 20)]
            assert route_mtu(lab, lab.client, VIP) == 1300 - overhead
    finally:
        lab.run(lab.router, ["ip", "link", "set", "br0", "mtu", "1500"], check=False)
        lab.run(lab.client, ["ip", "route", "flush", "cache"], check=False)
        topology.realserver(lab, rs, "down", "-q", check=False)
