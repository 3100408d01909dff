"""The IPv4 TTL through VS/NAT in the lab (net/netfilter/ipvs/ip_vs_xmit.c decrement_ttl,
which ip_vs_nat_xmit's __ip_vs_get_out_rt calls): a client's datagram sent with TTL 2
reaches the real server with TTL 1, and one sent with TTL 1 is answered with ICMP time
exceeded (ICMP_EXC_TTL) from the VIP, which the client's socket reads from its error
queue (IP_RECVERR: EHOSTUNREACH, the ICMP type and code, the VIP as the offender) while
the real server hears nothing.  No ping: plain sockets opened in the lab's namespaces.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import sys

import pytest

from director.lab.daemon import Daemon
from director.lab.topology import in_netns

PORT = 7001
IP_RECVERR = 11
IP_RECVTTL = 12
SO_EE_ORIGIN_ICMP = 2
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err
ICMP_TIME_EXCEEDED, ICMP_EXC_TTL = 11, 0


def _ttl_of(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == socket.IP_TTL:
            return int.from_bytes(data[:4], sys.byteorder)  # an int, host order
    return None


def test_nat_takes_a_hop_and_answers_ttl_1_with_time_exceeded(daemon: Daemon) -> None:
    lab = daemon.lab
    rs1 = lab.real_servers[0]
    rules = f"-A -u {lab.vip}:{PORT} -s rr\n-a -u {lab.vip}:{PORT} -r {rs1.addr}:{PORT} -m\n"
    done = daemon.dirctl("restore", input=rules)
    assert done.returncode == 0, done.stderr

    def server_socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        sock.bind(("0.0.0.0", PORT))
        return sock

    def client_socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        sock.connect((lab.vip, PORT))
        return sock

    # A socket stays in the namespace it was made in, whichever thread uses it.
    server = in_netns(rs1.netns, server_socket)
    client = in_netns(lab.client, client_socket)
    with server, client:
        server.settimeout(5)
        client.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 2)
        client.send(b"two")
        data, ancillary, _, _ = server.recvmsg(64, socket.CMSG_SPACE(4))
        assert (data, _ttl_of(ancillary)) == (b"two", 1)

        client.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)
        client.send(b"one")
        poller = select.poll()
        poller.register(client, select.POLLERR)  # the error queue's
        assert poller.poll(5000), "no ICMP error reached the client"
        _, ancillary, _, _ = client.recvmsg(64, 512, socket.MSG_ERRQUEUE)
        (level, _, err) = next(c for c in ancillary if c[1] == IP_RECVERR)
        ee_errno, origin, type_, code, _, _, _ = _EXTENDED_ERR.unpack_from(err)
        offender = socket.inet_ntoa(err[_EXTENDED_ERR.size + 4 : _EXTENDED_ERR.size + 8])
        assert (level, ee_errno, origin, type_, code, offender) == (
            socket.IPPROTO_IP, errno.EHOSTUNREACH, SO_EE_ORIGIN_ICMP, ICMP_TIME_EXCEEDED,
            ICMP_EXC_TTL, lab.vip,
        )  # fmt: skip
        server.settimeout(1)
        with pytest.raises(TimeoutError):
            server.recvmsg(64, socket.CMSG_SPACE(4))
