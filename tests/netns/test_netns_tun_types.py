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
from labtools import FileServer, random_file, sha256_file
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
