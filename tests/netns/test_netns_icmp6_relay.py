"""ICMPv6 errors relayed through VS/NAT both ways in the nat6 lab (issue 14), through the
real daemon, ip6tables and NFQUEUE.  Inward, a packet too big about the VIP's reply,
sent to the VIP from outside, reaches the NAT real server rewritten (ip_vs_in_icmp_v6 ->
ip_vs_icmp_xmit_v6 -> ip_vs_nat_icmp_v6, net/netfilter/ipvs/ip_vs_core.c and
ip_vs_xmit.c): the real server's own stack takes it as an error about its own reply
(udpv6_err finds its socket by the quoted, rewritten addresses and ports) and caches
the path MTU toward the client, which it could not if the quote still named the VIP.
Outward, the real server's port unreachable reaches the client from the VIP, about
the VIP's port (ip_vs_out_icmp_v6)."""

from __future__ import annotations

import subprocess
import sys
import time

from labtools import route_mtu

from director.lab.daemon import Daemon

LAB_KIND = "nat6"
PORT = 5300
RS_PORT = 5301  # so the quoted port must be rewritten for the real server to know it
CLIENT_PORT = 40053

# The real server's UDP socket, bound to its own address and port (the quote must name
# them for its stack to find it): it says when it listens and what it got, and stays
# open (the error is about it) until its stdin closes.
SERVER = f"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], {RS_PORT}))
print("ready", flush=True)
s.settimeout(20)
data, peer = s.recvfrom(2048)
print("got", peer[0], peer[1], flush=True)
sys.stdin.read()
"""

# The client: a datagram to the VIP, then, once the real server has it, the ICMPv6
# packet too big a router on the client's side would send the VIP about the VIP's
# 1,400-byte answer (the kernel completes a raw ICMPv6 socket's checksum).
CLIENT = """
import socket, struct, sys
vip, client, step = sys.argv[1], sys.argv[2], sys.argv[5]
port, cport = int(sys.argv[3]), int(sys.argv[4])
if step == "send":
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.bind(("::", cport))
    u.sendto(b"q", (vip, port))
else:
    payload = b"a" * (1400 - 48)
    udp = struct.pack("!HHHH", port, cport, 8 + len(payload), 0x1234) + payload
    head = struct.pack("!IHBB", 6 << 28, len(udp), 17, 64)
    head += socket.inet_pton(socket.AF_INET6, vip) + socket.inet_pton(socket.AF_INET6, client)
    error = struct.pack("!BBHI", 2, 0, 0, 1280) + (head + udp)[:1232]
    r = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    r.sendto(error, (vip, 0))
"""


def test_packet_too_big_from_outside_reaches_the_nat_real_server(daemon: Daemon) -> None:
    lab = daemon.lab
    rs1 = lab.real_servers[0]
    rules = (
        f"-A -u [{lab.vip}]:{PORT} -s rr\n-a -u [{lab.vip}]:{PORT} -r [{rs1.addr}]:{RS_PORT} -m\n"
    )
    done = daemon.dirctl("restore", input=rules)
    assert done.returncode == 0, done.stderr
    lab.run(rs1.netns, ["ip", "-6", "route", "flush", "cache"])
    assert route_mtu(lab, rs1.netns, lab.client_addr) is None
    server = subprocess.Popen(
        lab.exec_argv(rs1.netns, [sys.executable, "-c", SERVER, rs1.addr]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        args = [lab.vip, lab.client_addr, str(PORT), str(CLIENT_PORT)]
        lab.run(lab.client, [sys.executable, "-c", CLIENT, *args, "send"])
        got = server.stdout.readline().split()
        assert got == ["got", lab.client_addr, str(CLIENT_PORT)], server.stderr
        lab.run(lab.client, [sys.executable, "-c", CLIENT, *args, "error"])
        deadline = time.monotonic() + 10
        while route_mtu(lab, rs1.netns, lab.client_addr) != 1280:
            assert time.monotonic() < deadline, "the real server learned no path MTU"
            time.sleep(0.1)
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=10)
        lab.run(rs1.netns, ["ip", "-6", "route", "flush", "cache"], check=False)


# A connected UDP socket hears of the ICMPv6 port unreachable about its datagram as
# ECONNREFUSED, if the error names the VIP and port it sent to.
REFUSED = """
import socket, sys
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.settimeout(5)
u.connect((sys.argv[1], int(sys.argv[2])))
u.send(b"q")
try:
    u.recv(100)
    print("answer")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("silence")
"""


def test_port_unreachable_from_the_nat_real_server_reaches_the_client_from_the_vip(
    daemon: Daemon,
) -> None:
    """ip_vs_out_icmp_v6 / handle_response_icmp: the real server's error about the
    client's datagram to RS:5301 comes from the VIP about VIP:5300, so the client's
    connected socket (to the VIP) takes it."""
    lab = daemon.lab
    rs1 = lab.real_servers[0]
    service = f"-u [{lab.vip}]:{PORT}"
    rules = f"-A {service} -s rr\n-a {service} -r [{rs1.addr}]:{RS_PORT} -m\n"
    done = daemon.dirctl("restore", input=rules)
    assert done.returncode == 0, done.stderr
    # Nothing listens on the real server's port: its stack answers port unreachable.
    out = lab.run(lab.client, [sys.executable, "-c", REFUSED, lab.vip, str(PORT)]).stdout
    assert out.split() == ["refused"]
