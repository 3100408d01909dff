"""The sysctl pmtu_disc in a real TUN lab: with it 0 a client's DF segments too big for
the IPIP header are not answered with fragmentation needed (ensure_mtu_is_adequate's
"If we're going to tunnel the packet and pmtu discovery is disabled, we'll just
fragment it anyway"), but tunnelled without DF (ip_vs_tunnel_xmit passes no dfp), and
the worker's send fragments the outer packets, which the real server's stack
reassembles before its decapsulator reads them (so the fragments of one outer packet
must share an identification: the worker gives a zero one a value before cutting it,
where the raw socket would fill a different one in each fragment).  A 2 MB upload
arrives byte for byte and the client never lowers its path MTU toward the VIP (with
pmtu_disc 1 it learns 1480: test_netns_pmtu.py::test_tun_pmtu_discovery_needs_no_narrow_link).
"""

from __future__ import annotations

from pathlib import Path

from labtools import FileServer, random_file, route_mtu

from director.lab import topology
from director.lab.daemon import Daemon

LAB_KIND = "tun"
VIP = topology.VIP
PORT = 8088
UPLOAD = 2 << 20


def test_pmtu_disc_off_tunnels_too_big_segments_in_fragments(
    daemon: Daemon, tmp_path: Path
) -> None:
    lab = daemon.lab
    rs1 = lab.real_servers[0]
    rules = f"-A -t {VIP}:{PORT} -s rr\n-a -t {VIP}:{PORT} -r {rs1.addr}:{PORT} -i\n"
    done = daemon.dirctl("restore", input=rules)
    assert done.returncode == 0, done.stderr
    done = daemon.dirctl("sysctl", "pmtu_disc=0")
    assert done.returncode == 0 and "pmtu_disc = 0" in done.stdout, done.stderr
    digest = random_file(tmp_path / "upload", UPLOAD)
    (tmp_path / "www").mkdir()
    lab.run(lab.client, ["ip", "route", "flush", "cache"])
    with FileServer(lab, rs1.netns, PORT, tmp_path / "www"):
        done = lab.run(
            lab.client,
            ["curl", "-sS", "--max-time", "20", "-H", "Expect:", "--data-binary",
             f"@{tmp_path / 'upload'}", f"http://{VIP}:{PORT}/"],
            check=False, timeout=30,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [digest, str(UPLOAD)]
    assert route_mtu(lab, lab.client, VIP) is None
