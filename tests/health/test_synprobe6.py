"""The VIP-path probe's IPv6 SYN, checked by dpkt (its own checksum over the IPv6
pseudo-header, RFC 8200 §8.1), and its reply filter's shape; the probe itself runs in
tests/netns/test_netns_health6.py."""

from __future__ import annotations

import socket

import dpkt

from director.health.synprobe import TH_SYN, reply_filter6, tcp_packet

SRC = socket.inet_pton(socket.AF_INET6, "2001:db8:2::1")
VIP = socket.inet_pton(socket.AF_INET6, "2001:db8:1::100")


def test_the_ipv6_syn_is_whole_and_its_checksum_right() -> None:
    packet = tcp_packet(SRC, VIP, 40000, 80, 0x01020304, 0, TH_SYN)
    ip6 = dpkt.ip6.IP6(packet)
    assert (ip6.v, ip6.nxt, ip6.hlim, ip6.plen) == (6, 6, 64, len(packet) - 40)
    assert (ip6.src, ip6.dst) == (SRC, VIP)
    tcp = ip6.data
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.flags) == (40000, 80, 0x01020304, dpkt.tcp.TH_SYN)
    assert dpkt.tcp.parse_opts(tcp.opts) == [(dpkt.tcp.TCP_OPT_MSS, b"\x05\xa0")]  # 1440
    assert tcp.sum
    tcp.sum = 0  # dpkt computes it anew when it packs: the same bytes come out
    assert bytes(dpkt.ip6.IP6(src=SRC, dst=VIP, nxt=6, hlim=64, data=tcp, plen=len(tcp))) == (
        packet
    )


def test_the_ipv6_reply_filter_tests_every_word() -> None:
    """Next header, four words of each address, two ports: 11 tests, then accept and
    drop; every test jumps to the drop when it fails."""
    program = reply_filter6(VIP, 80, SRC, 40000)
    assert len(program) == 8 * (2 * 11 + 2)
    last = 2 * 11 + 1
    for at in range(1, 2 * 11, 2):
        code, jt, jf = program[8 * at], program[8 * at + 2], program[8 * at + 3]
        assert (code, jt, at + 1 + jf) == (0x15, 0, last)
