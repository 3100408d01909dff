"""Jumbo frames through the director (issue 10): packets larger than the 4 KB that
NetfilterQueue copies by default pass whole.

The NAT and DR labs with every link at MTU 9000 (client, director, bridge, servers): TCP
then uses an MSS of 8960 less options, and a UDP datagram of 8,972 bytes fits one
9,000-byte packet.  Both go through NAT in both directions (requests rewritten and sent
by the worker, replies rewritten and reinjected) and must arrive byte for byte.  Before
the fix every packet above 4,016 bytes reached the core cut short and was dropped
(``bad_length``): the TCP transfers stalled and the datagram never came back.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtools import FileServer, helper_argv, random_file, sha256_file

from director.lab import topology
from director.lab.daemon import Daemon

VIP = topology.VIP
MTU = 9000
TCP_PORT = 8088
UDP_PORT = 5353
SIZE = 4 << 20
OLD_LIMIT = 4096  # NetfilterQueue's message size: no packet above it passed before


@pytest.fixture(scope="module", params=["nat", "dr"])
def lab(request: pytest.FixtureRequest) -> Iterator[topology.Lab]:
    """The NAT and the DR lab at MTU 9000 on every link (overrides conftest's lab)."""
    built = topology.build(kind=request.param)
    try:
        links = [(built.client, "eth0"), (built.director, "ext0")]
        links += [(built.director, rs.name) for rs in built.real_servers]
        links += [(built.director, "br0")]
        links += [(rs.netns, "eth0") for rs in built.real_servers]
        for ns, ifname in links:
            built.run(ns, ["ip", "link", "set", ifname, "mtu", str(MTU)])
        topology.start_backends(built)
        yield built
    finally:
        topology.teardown(built)


def _stats(d: Daemon, service: str) -> list[int]:
    """Conns, InPkts, OutPkts, InBytes, OutBytes of ``service`` (``list --stats --exact``)."""
    out = d.dirctl("list", "-n", "--stats", "--exact").stdout
    row = next(line.split() for line in out.splitlines() if service in line)
    return [int(v) for v in row[2:7]]


def _curl(lab: topology.Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """curl from the client to VIP:TCP_PORT; the last argument is the path."""
    *options, path = args
    argv = ["curl", "-sS", "--max-time", "20", *options, f"http://{VIP}:{TCP_PORT}{path}"]
    return lab.run(lab.client, argv, check=False, timeout=40)


@pytest.mark.parametrize("lab", ["nat"], indirect=True)
def test_tcp_at_mss_8960_through_nat_byte_exact_both_ways(daemon: Daemon, tmp_path: Path) -> None:
    lab = daemon.lab
    rs1 = lab.real_servers[0]
    rules = f"-A -t {VIP}:{TCP_PORT} -s rr\n-a -t {VIP}:{TCP_PORT} -r {rs1.addr}:{TCP_PORT} -m\n"
    assert daemon.dirctl("restore", input=rules).returncode == 0
    www = tmp_path / "www"
    www.mkdir()
    down = random_file(www / "blob", SIZE)
    up = random_file(tmp_path / "upload", SIZE)
    with FileServer(lab, rs1.netns, TCP_PORT, www):
        done = _curl(lab, "-H", "Expect:", "--data-binary", f"@{tmp_path / 'upload'}", "/")
        assert done.returncode == 0, (done.stderr, daemon.log())
        assert done.stdout.split() == [up, str(SIZE)]
        _, inpkts, _, inbytes, _ = _stats(daemon, f"{VIP}:{TCP_PORT}")
        assert inbytes / inpkts > OLD_LIMIT, (inpkts, inbytes)  # jumbo segments went in

        assert daemon.dirctl("zero").returncode == 0
        got = tmp_path / "got"
        done = _curl(lab, "-o", str(got), "/blob")
        assert done.returncode == 0, (done.stderr, daemon.log())
        assert sha256_file(got) == down
        _, _, outpkts, _, outbytes = _stats(daemon, f"{VIP}:{TCP_PORT}")
        assert outbytes / outpkts > OLD_LIMIT, (outpkts, outbytes)  # and came back out


def _echo(d: Daemon, size: int, *flags: str, digest: bool = False) -> dict[str, object]:
    """One datagram of ``size`` bytes to VIP:UDP_PORT (rs1's echo, by the lab's
    method) and back (with ``digest``, its SHA-256 and length come back instead)."""
    lab = d.lab
    rs1 = lab.real_servers[0]
    flag = topology.IPVSADM_FLAG[rs1.method]
    rules = (
        f"-A -u {VIP}:{UDP_PORT} -s rr\n-a -u {VIP}:{UDP_PORT} -r {rs1.addr}:{UDP_PORT} {flag}\n"
    )
    assert d.dirctl("restore", input=rules).returncode == 0
    bind = VIP if rs1.method == "dr" else rs1.addr  # a DR server answers from the VIP
    serve = ["serve", "--bind", bind, "--port", str(UDP_PORT), "--seconds", "30", *flags]
    if digest:
        serve.append("--digest")
    echo = subprocess.Popen(
        lab.exec_argv(rs1.netns, helper_argv("udpecho.py", *serve)),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert echo.stderr is not None and echo.stderr.readline().strip() == "ready"
        ask = ["ask", "--to", VIP, "--port", str(UDP_PORT), "--size", str(size), *flags]
        answer: dict[str, object] = json.loads(
            lab.run(lab.client, helper_argv("udpecho.py", *ask)).stdout
        )
        return answer
    finally:
        echo.kill()
        echo.wait()


def test_a_9000_byte_udp_datagram_there_and_back_byte_exact(daemon: Daemon) -> None:
    """NAT: rewritten and sent by the worker, the answer rewritten in FORWARD; DR: the
    frame handed to the real server's MAC, the answer straight back from the VIP."""
    size = MTU - 28  # IPv4 and UDP headers: one 9,000-byte packet each way, DF set
    answer = _echo(daemon, size)
    assert answer["same"] and answer["from"] == VIP, (answer, daemon.log())


# 65,503 + 28 = 65,531 bytes, the most NFQUEUE copies (NFQNL_MAX_COPY_RANGE, 0xFFFF less
# the attribute header): the largest datagram that can pass a userspace director.
@pytest.mark.parametrize("size", [30000, 65503])
def test_a_datagram_larger_than_the_mtu_reaches_the_real_server_whole(
    daemon: Daemon, size: int
) -> None:
    """Without DF the client sends fragments; the director's kernel reassembles them
    before LOCAL_IN, so the worker gets the whole datagram (up to 65,531 bytes), and
    what it sends to the real server must be fragmented again, as the kernel's output
    path fragments what IPVS forwards (ip_finish_output -> ip_fragment): a raw socket
    with the header included refuses anything above the MTU (raw_send_hdrinc,
    EMSGSIZE), and a packet socket refuses a frame above the link's MTU (DR).  The
    real server answers the SHA-256 and length it reassembled.
    (A fragmented answer would need IPVS's ip_vs_gather_frags in FORWARD: not here.)"""
    answer = _echo(daemon, size, "--fragments", digest=True)
    assert answer["digest_same"] and answer["from"] == VIP, (answer, daemon.log())
