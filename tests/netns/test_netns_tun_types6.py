"""VS/TUN over GUE and GRE with IPv6 outer headers (ip_vs_tunnel_xmit_v6): the tun6
lab's real servers two routed hops away over IPv6, an IPv6 VIP, each real server
decapsulating in userspace (a dual-stack UDP socket on the GUE port, a raw IPv6 socket
of next header 47).  The kernel IPVS selftest's 32 random bytes arrive intact, a 20 MB
download arrives whole, and every packet came by the tunnel type."""

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

LAB_KIND = "tun6"  # conftest's lab fixture builds this kind
FILE_PORT = 8081
SIZE = 20 << 20

TUNNELS = {
    "gue-csum": (("--tun-type", "gue", "--tun-port", "6080"), "--tun-csum"),
    "gue-nocsum": (("--tun-type", "gue", "--tun-port", "6080"), "--tun-nocsum"),
    "gre-csum": (("--tun-type", "gre"), "--tun-csum"),
}


@pytest.mark.parametrize("tunnel", list(TUNNELS))
def test_tun_types_over_ipv6(daemon: Daemon, tunnel: str, tmp_path: Path) -> None:
    need_socat()
    lab = daemon.lab
    vip = lab.vip
    rs = lab.real_servers[0]
    args, csum = TUNNELS[tunnel]
    topology.realserver(lab, rs, "down", "-q")
    topology.realserver(lab, rs, "up", "--vip", vip, "--method", "tun", *args, "-q")
    server = " ".join((*args, csum))
    rules = "".join(
        f"-A -t {topology.addr_port(vip, port)} -s rr\n"
        f"-a -t {topology.addr_port(vip, port)} -r {topology.addr_port(rs.addr, port)} "
        f"-i {server}\n"
        for port in (PORT, FILE_PORT)
    )
    done = daemon.dirctl("restore", input=rules)
    assert done.returncode == 0, done.stderr
    sent, got, client = transfer(lab.client, rs.netns, vip, tmp_path)
    assert got == sent, f"{tunnel}: the real server got {got.hex() or 'nothing'} ({client})"
    www = tmp_path / "www"
    www.mkdir()
    want = random_file(www / "blob", SIZE)
    into = tmp_path / "got"
    with FileServer(lab, rs.netns, FILE_PORT, www, bind="::"):
        url = f"http://{topology.addr_port(vip, FILE_PORT)}/blob"
        argv = ["curl", "-sS", "-g", "--max-time", "90", "-o", str(into), url]
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
    topology.realserver(lab, rs, "down", "-q")
    summary = log.strip().splitlines()[-1]
    counts = dict(item.rsplit(" ", 1) for item in summary.split(": ", 1)[1].split(", "))
    kind = f"passed-{tunnel.split('-')[0]}"
    assert set(counts) == {kind} and int(counts[kind]) > 100, summary
