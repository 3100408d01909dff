"""Golden packet cases: input bytes -> expected output bytes, or the drop reason.

Expected packets are built by dpkt from the fields the kernel's NAT handlers would
write (ip_vs_nat_xmit / tcp_dnat_handler / tcp_snat_handler), with dpkt computing every
checksum itself.  A request leaves one hop older (TTL 61 -> 60: ip_vs_nat_xmit's
__ip_vs_get_out_rt calls decrement_ttl, net/netfilter/ipvs/ip_vs_xmit.c); a reply keeps
its TTL (handle_response in ip_vs_core.c does not touch it: the kernel's ip_forward
took the reply's hop before the FORWARD hook that queues it).
"""

from __future__ import annotations

import socket

import dpkt
import pytest

from director.core.engine import Director
from director.core.xmit import ACCEPT, DROP, SEND
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import ACK, CLIENT, RS1, RS2, SYN, VIP, tcp, udp

SEED = Config(
    services=(
        ServiceConf(
            "tcp",
            VIP,
            80,
            scheduler="rr",
            dests=(DestConf(RS1, 80, "masq"), DestConf(RS2, 8000, "masq")),
        ),
        ServiceConf("udp", VIP, 53, scheduler="rr", dests=(DestConf(RS1, 5353, "masq"),)),
        ServiceConf("tcp", VIP, 81, scheduler="rr"),  # no real server at all
    )
)


def director() -> Director:
    d = Director()
    d.configure(SEED)
    return d


def fragment() -> bytearray:
    raw = tcp(CLIENT, VIP, 40000, 80, SYN)
    raw[6] |= 0x20  # more fragments
    return raw


def bad_ihl() -> bytearray:
    raw = tcp(CLIENT, VIP, 40000, 80, SYN)
    raw[0] = 0x44  # header length 16 bytes
    return raw


def bad_length() -> bytearray:
    raw = tcp(CLIENT, VIP, 40000, 80, SYN)
    raw[2:4] = (len(raw) + 10).to_bytes(2, "big")
    return raw


def unknown_version() -> bytearray:
    raw = tcp(CLIENT, VIP, 40000, 80, SYN)
    raw[0] = 0x55
    return raw


def bad_doff() -> bytearray:
    raw = tcp(CLIENT, VIP, 40000, 80, SYN)
    raw[32] = 0x30  # data offset 3 words
    return raw


# rr walks the newest real server first: RS2 (added last) takes the first connection.
IN_CASES = [
    (
        "tcp syn, DNAT with port translation",
        tcp(CLIENT, VIP, 40000, 80, SYN),
        SEND,
        tcp(CLIENT, RS2, 40000, 8000, SYN, ttl=60),
    ),
    (
        "tcp syn with payload and IP options",
        tcp(CLIENT, VIP, 40001, 80, SYN, b"hello", opts=b"\x01\x01\x01\x00"),
        SEND,
        tcp(CLIENT, RS2, 40001, 8000, SYN, b"hello", opts=b"\x01\x01\x01\x00", ttl=60),
    ),
    (
        "udp, DNAT with port translation",
        udp(CLIENT, VIP, 5000, 53, b"query"),
        SEND,
        udp(CLIENT, RS1, 5000, 5353, b"query", ttl=60),
    ),
    (
        "udp without checksum keeps none",
        udp(CLIENT, VIP, 5001, 53, b"q", csum=False),
        SEND,
        udp(CLIENT, RS1, 5001, 5353, b"q", csum=False, ttl=60),
    ),
    (
        "ack without a connection goes to the local stack",
        tcp(CLIENT, VIP, 40002, 80, ACK),
        ACCEPT,
        None,
    ),
    ("not a virtual service", tcp(CLIENT, VIP, 40003, 8080, SYN), ACCEPT, None),
]

DROP_CASES = [
    ("empty", bytearray(), "truncated"),
    ("short header", bytearray(tcp(CLIENT, VIP, 1, 80)[:19]), "truncated"),
    ("version nibble neither 4 nor 6", unknown_version(), "bad_version"),
    ("header length below 20", bad_ihl(), "bad_header_length"),
    ("total length beyond the buffer", bad_length(), "bad_length"),
    ("fragment", fragment(), "fragment"),
    ("tcp data offset below 5", bad_doff(), "bad_header_length"),
    ("truncated tcp header", bytearray(tcp(CLIENT, VIP, 1, 80)[:30]), "bad_length"),
]


@pytest.mark.parametrize(
    ("name", "packet", "action", "expected"), IN_CASES, ids=[c[0] for c in IN_CASES]
)
def test_in(name, packet, action, expected):
    got_action, data = director().hook_in(bytearray(packet), 1.0)
    assert got_action == action
    if expected is None:
        assert data is None
    else:
        assert bytes(data) == bytes(expected)


@pytest.mark.parametrize(("name", "packet", "reason"), DROP_CASES, ids=[c[0] for c in DROP_CASES])
def test_drop_reason(name, packet, reason):
    d = director()
    assert d.hook_in(bytearray(packet), 1.0) == (DROP, reason)
    assert d.drops[reason] == 1


def test_reply_is_snat_back_to_the_vip():
    d = director()
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 1.0)
    action, data = d.hook_out(tcp(RS2, CLIENT, 8000, 40000, SYN | ACK, b"x"), 1.1)
    assert action == ACCEPT
    assert bytes(data) == bytes(tcp(VIP, CLIENT, 80, 40000, SYN | ACK, b"x"))


def test_reply_of_unknown_flow_passes_untouched():
    d = director()
    assert d.hook_out(tcp(RS1, CLIENT, 80, 40000, ACK), 1.0) == (ACCEPT, None)


def test_no_real_server_gets_icmp_port_unreachable():
    d = director()
    request = tcp(CLIENT, VIP, 40000, 81, SYN)
    action, data = d.hook_in(bytearray(request), 1.0)
    assert action == SEND
    icmp = dpkt.ip.IP(bytes(data))
    assert (socket.inet_ntoa(icmp.src), socket.inet_ntoa(icmp.dst)) == (VIP, CLIENT)
    assert (icmp.data.type, icmp.data.code) == (3, 3)
    assert bytes(icmp.data.data.data) == bytes(request[:28])
    assert d.drops["no_dest"] == 1


def test_ipv6_is_taken_by_every_method():
    """Director.check: NAT, DR and TUN carry IPv6 (ip_vs_nat_xmit_v6, ip_vs_dr_xmit_v6,
    ip_vs_tunnel_xmit_v6), and a tunnel carries either family in either."""

    def six(method: str, rs: str = "2001:db8:2::2", vip: str = "2001:db8:1::100") -> Config:
        dest = DestConf(rs, 80, method)
        return Config(services=(ServiceConf("tcp", vip, 80, dests=(dest,)),))

    for method in ("masq", "droute", "tunnel"):
        Director.check(six(method))
    Director.check(six("tunnel", rs="198.19.0.2"))
    Director.check(six("tunnel", vip="203.0.113.5"))
    Director.check(SEED)  # IPv4: fine
