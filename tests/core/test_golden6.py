"""Golden IPv6 packets through VS/NAT: input bytes -> expected bytes, or the drop reason.

Expected packets are built by dpkt (tests/core/packets6.py) from the fields the
kernel's IPv6 NAT writes, with dpkt computing every checksum over the IPv6
pseudo-header itself:

- ip_vs_nat_xmit_v6 (net/netfilter/ipvs/ip_vs_xmit.c): the destination becomes the
  real server (tcp_dnat_handler / udp_dnat_handler, ip_vs_proto_tcp.c / _udp.c), after
  __ip_vs_get_out_rt_v6's decrement_ttl took one off the hop limit; a hop limit of 1
  gets icmpv6_send(ICMPV6_TIME_EXCEED, ICMPV6_EXC_HOPLIMIT) instead, and a packet
  larger than the route's MTU icmpv6_send(ICMPV6_PKT_TOOBIG, 0, mtu)
  (ensure_mtu_is_adequate / __mtu_check_toobig_v6), quoting the packet as it was
  then (hop limit already decremented) as far as IPV6_MIN_MTU allows
  (net/ipv6/icmp.c, icmp6_send).
- replies (tcp_snat_handler / udp_snat_handler) get the VIP and virtual port back and
  are let go on (NF_ACCEPT at FORWARD: the forwarding path decrements the hop limit).
- a UDP datagram without checksum gets a whole one (udp_dnat_handler's "full checksum
  calculation": its check is 0).
- the extension headers are walked as ipv6_find_hdr (net/ipv6/exthdrs_core.c) walks
  them for ip_vs_fill_iph_skb_off (include/net/ip_vs.h) and stay as they were.
- ip_vs_leave for an IPv6 service: icmpv6_send(ICMPV6_DEST_UNREACH,
  ICMPV6_PORT_UNREACH) (ip_vs_core.c).
"""

from __future__ import annotations

import struct

import dpkt
import pytest

from director.core.engine import Director
from director.core.packet import SKB_CSUMNOTREADY, SKB_GSO
from director.core.route import Route
from director.core.xmit import ACCEPT, DROP, SEND
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import ACK, FIN, SYN
from tests.core.packets6 import (
    CLIENT6,
    DEST,
    HOP,
    NONE,
    RS6_1,
    RS6_2,
    VIP6,
    a6,
    auth,
    fragment,
    icmp6,
    ip6,
    options,
    routing,
    tcp6,
    udp6,
)

PSH = dpkt.tcp.TH_PUSH

SEED6 = Config(
    services=(
        ServiceConf(
            "tcp",
            VIP6,
            80,
            scheduler="rr",
            dests=(DestConf(RS6_1, 80, "masq"), DestConf(RS6_2, 8000, "masq")),
        ),
        ServiceConf("udp", VIP6, 53, scheduler="rr", dests=(DestConf(RS6_1, 5353, "masq"),)),
        ServiceConf("tcp", VIP6, 81, scheduler="rr"),  # no real server at all
    )
)


def director(mtu: int | None = None, fused: bool = True) -> Director:
    d = Director()
    d.fused = fused
    d.configure(SEED6)
    if mtu is not None:
        for svc in d.services:
            for dest in svc.dests:
                dest.route = Route(ifindex=3, source=a6("2001:db8:2::1"), mtu=mtu)
    return d


EXT = (options(HOP), routing(), fragment(), options(DEST, 16), auth())

# rr walks the newest real server first: RS6_2 (added last) takes the first connection.
IN_CASES = [
    (
        "tcp syn, DNAT with port translation, hop limit less one",
        tcp6(CLIENT6, VIP6, 40000, 80, SYN),
        SEND,
        tcp6(CLIENT6, RS6_2, 40000, 8000, SYN, hlim=60),
    ),
    (
        "tcp syn with payload behind every extension header",
        tcp6(CLIENT6, VIP6, 40001, 80, SYN, b"hello", ext=EXT),
        SEND,
        tcp6(CLIENT6, RS6_2, 40001, 8000, SYN, b"hello", ext=EXT, hlim=60),
    ),
    (
        "routing header with segments left is walked all the same",
        tcp6(CLIENT6, VIP6, 40002, 80, SYN, ext=(routing(segments_left=1),)),
        SEND,
        tcp6(CLIENT6, RS6_2, 40002, 8000, SYN, ext=(routing(segments_left=1),), hlim=60),
    ),
    (
        "udp, DNAT with port translation",
        udp6(CLIENT6, VIP6, 5000, 53, b"query"),
        SEND,
        udp6(CLIENT6, RS6_1, 5000, 5353, b"query", hlim=60),
    ),
    (
        "udp without checksum gets a whole one",
        udp6(CLIENT6, VIP6, 5001, 53, b"q", csum=False),
        SEND,
        udp6(CLIENT6, RS6_1, 5001, 5353, b"q", hlim=60),
    ),
    (
        "ack without a connection goes to the local stack",
        tcp6(CLIENT6, VIP6, 40003, 80, ACK),
        ACCEPT,
        None,
    ),
    ("not a virtual service", tcp6(CLIENT6, VIP6, 40004, 8080, SYN), ACCEPT, None),
    ("no transport header (no next header)", ip6(CLIENT6, VIP6, bytes(8), NONE), ACCEPT, None),
]


def _truncated_ext() -> bytearray:
    raw = tcp6(CLIENT6, VIP6, 40000, 80, SYN, ext=(options(DEST, 16),))
    raw[41] = 40  # 328 bytes of options in a 76-byte packet
    return raw


def _bad_doff() -> bytearray:
    raw = tcp6(CLIENT6, VIP6, 40000, 80, SYN)
    raw[52] = 0x30
    return raw


def _beyond() -> bytearray:
    raw = tcp6(CLIENT6, VIP6, 40000, 80, SYN)
    raw[4:6] = (len(raw) - 40 + 1).to_bytes(2, "big")
    return raw


DROP_CASES = [
    ("shorter than the fixed header", tcp6(CLIENT6, VIP6, 1, 80)[:39], "truncated"),
    ("payload length beyond the buffer", _beyond(), "bad_length"),
    ("payload length 0 outside GSO", ip6(CLIENT6, VIP6, bytes(8), NONE), None),
    (
        "a later fragment",
        tcp6(CLIENT6, VIP6, 40000, 80, SYN, ext=(fragment(offset=185),)),
        "fragment",
    ),
    (
        "a first fragment (more to come)",
        tcp6(CLIENT6, VIP6, 40000, 80, SYN, ext=(fragment(more=True),)),
        "fragment",
    ),
    ("an extension header past the end", _truncated_ext(), "bad_exthdr"),
    ("tcp data offset below 5", _bad_doff(), "bad_header_length"),
    ("truncated tcp header", ip6(CLIENT6, VIP6, b"\x9c\x40\x00\x50" * 4, 6), "truncated"),
    ("zero port", tcp6(CLIENT6, VIP6, 0, 80, SYN), "zero_port"),
]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "general"])
@pytest.mark.parametrize(
    ("name", "packet", "action", "expected"), IN_CASES, ids=[c[0] for c in IN_CASES]
)
def test_in(name, packet, action, expected, fused):
    got_action, data = director(fused=fused).hook_in(bytearray(packet), 1.0)
    assert got_action == action
    if expected is None:
        assert data is None
    else:
        assert bytes(data) == bytes(expected)


@pytest.mark.parametrize(("name", "packet", "reason"), DROP_CASES, ids=[c[0] for c in DROP_CASES])
def test_drop_reason(name, packet, reason):
    d = director()
    if reason is None:  # a payload length of 0 is a jumbogram: refused as bad_length
        packet = bytearray(packet)
        packet[4:6] = b"\x00\x00"
        reason = "bad_length"
    assert d.hook_in(bytearray(packet), 1.0) == (DROP, reason)
    assert d.drops[reason] == 1


def test_padding_after_the_packet_is_cut():
    d = director()
    action, data = d.hook_in(tcp6(CLIENT6, VIP6, 40000, 80, SYN) + b"\x00" * 6, 1.0)
    assert action == SEND
    assert bytes(data) == bytes(tcp6(CLIENT6, RS6_2, 40000, 8000, SYN, hlim=60))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "general"])
def test_replies_are_snat_back_to_the_vip(fused: bool):
    d = director(fused=fused)
    d.hook_in(tcp6(CLIENT6, VIP6, 40000, 80, SYN), 1.0)
    action, data = d.hook_out(tcp6(RS6_2, CLIENT6, 8000, 40000, SYN | ACK, b"x"), 1.1)
    assert action == ACCEPT
    assert bytes(data) == bytes(tcp6(VIP6, CLIENT6, 80, 40000, SYN | ACK, b"x"))
    # An established segment and the close, through the same entry.
    for flags in (ACK | PSH, FIN | ACK):
        action, data = d.hook_out(tcp6(RS6_2, CLIENT6, 8000, 40000, flags, b"y", ext=EXT), 1.2)
        assert action == ACCEPT
        assert bytes(data) == bytes(tcp6(VIP6, CLIENT6, 80, 40000, flags, b"y", ext=EXT))
    d.hook_in(udp6(CLIENT6, VIP6, 5000, 53, b"q"), 1.0)
    action, data = d.hook_out(udp6(RS6_1, CLIENT6, 5353, 5000, b"answer"), 1.1)
    assert bytes(data) == bytes(udp6(VIP6, CLIENT6, 53, 5000, b"answer"))
    assert d.totals.outpkts == 4 and d.totals.inpkts == 2


def test_an_ipv4_reply_never_finds_an_ipv6_entry():
    d = director()
    d.hook_in(tcp6(CLIENT6, VIP6, 40000, 80, SYN), 1.0)
    from tests.core.packets import tcp

    # The IPv6 addresses' last 32 bits as IPv4 addresses: no entry of theirs.
    assert d.hook_out(tcp("0.0.0.3", "0.0.0.10", 8000, 40000, ACK), 1.1) == (ACCEPT, None)
    assert d.passes["no_conn"] == 1


def test_hop_limit_one_gets_time_exceeded_from_the_vip():
    d = director()
    request = tcp6(CLIENT6, VIP6, 40000, 80, SYN, hlim=1)
    action, data = d.hook_in(bytearray(request), 1.0)
    assert action == SEND
    assert bytes(data) == bytes(icmp6(VIP6, CLIENT6, 3, 0, bytes(request), hlim=64, flow=0))


def test_too_big_gets_our_own_packet_too_big():
    """A 1,400-byte packet for a 1,280-byte way: ICMPv6 type 2 with the MTU, quoting
    the packet (hop limit less one) to 1,232 bytes, so that the error is 1,280."""
    d = director(mtu=1280)
    request = tcp6(CLIENT6, VIP6, 40000, 80, SYN | ACK, bytes(range(256)) * 5 + b"x" * 60)
    assert len(request) == 1400
    d.hook_in(tcp6(CLIENT6, VIP6, 40000, 80, SYN), 1.0)
    action, data = d.hook_in(bytearray(request), 1.1)
    assert action == SEND
    quoted = bytearray(request)
    quoted[7] = 60
    assert bytes(data) == bytes(
        icmp6(VIP6, CLIENT6, 2, 0, bytes(quoted[:1232]), 1280, hlim=64, flow=0)
    )
    assert len(data) == 1280


def test_a_packet_that_fits_is_sent():
    d = director(mtu=1400)
    request = tcp6(CLIENT6, VIP6, 40000, 80, SYN, b"x" * 1340)
    assert len(request) == 1400
    action, data = d.hook_in(bytearray(request), 1.0)
    assert action == SEND
    assert bytes(data) == bytes(tcp6(CLIENT6, RS6_2, 40000, 8000, SYN, b"x" * 1340, hlim=60))


def test_a_gso_packet_is_never_refused_for_its_size():
    d = director(mtu=1280)
    d.hook_in(tcp6(CLIENT6, VIP6, 40000, 80, SYN), 1.0)
    big = tcp6(CLIENT6, VIP6, 40000, 80, ACK, b"z" * 6000)
    action, data = d.hook_in_general(bytearray(big), 1.1)
    assert action == SEND and len(data) == 1280  # the packet too big
    dd = director(mtu=1280)
    dd.hook_in(tcp6(CLIENT6, VIP6, 40000, 80, SYN), 1.0)
    # hook_in takes no queue flags: a GSO request would come through the shell's
    # skb_info; the transmitter reads it from the packet view.
    from director.core.packet import parse
    from director.core.xmit.nat import Masquerade

    (conn,) = list(dd.conns)
    pkt = parse(bytearray(big), 0, SKB_GSO)
    action, data = Masquerade().xmit_in(conn, pkt)
    assert action == SEND
    assert bytes(data) == bytes(tcp6(CLIENT6, RS6_2, 40000, 8000, ACK, b"z" * 6000, hlim=60))


def test_no_real_server_gets_icmpv6_port_unreachable():
    d = director()
    request = tcp6(CLIENT6, VIP6, 40000, 81, SYN)
    action, data = d.hook_in(bytearray(request), 1.0)
    assert action == SEND
    assert bytes(data) == bytes(icmp6(VIP6, CLIENT6, 1, 4, bytes(request), hlim=64, flow=0))
    assert d.drops["no_dest"] == 1


# -- partial checksums (NFQA_SKB_CSUMNOTREADY) and GSO, as tests/core/test_partial_csum.py
# does for IPv4: the field holds ~tcp_v6_check(len, saddr, daddr, 0) (__tcp_v6_send_check,
# net/ipv6/tcp_ipv6.c), the pseudo-header sum folded, not complemented, here summed by
# dpkt.in_cksum_add over the RFC 8200 8.1 pseudo-header.


def seed6(src: bytes, dst: bytes, proto: int, l4_length: int) -> int:
    pseudo = src + dst + struct.pack("!IxxxB", l4_length, proto)
    return ~dpkt.in_cksum_done(dpkt.in_cksum_add(0, pseudo)) & 0xFFFF


def partial6(raw: bytearray, l4: int = 40, proto: int = 6) -> bytearray:
    """``raw`` as the queue shows a CHECKSUM_PARTIAL skb: the checksum field is the seed."""
    proto = raw[6] if l4 == 40 else proto
    at = l4 + (6 if proto == 17 else 16)
    out = bytearray(raw)
    out[at : at + 2] = seed6(bytes(raw[8:24]), bytes(raw[24:40]), proto, len(raw) - l4).to_bytes(
        2, "big"
    )
    return out


BIG = bytes(range(256)) * 250


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "general"])
def test_gso_reply_keeps_the_partial_seed_for_the_vip(fused: bool):
    d = director(fused=fused)
    d.hook_in(tcp6(CLIENT6, VIP6, 40000, 80, SYN), 1.0)
    reply = partial6(tcp6(RS6_2, CLIENT6, 8000, 40000, ACK | PSH, BIG))
    action, data = d.hook_out(bytearray(reply), 1.1, SKB_CSUMNOTREADY | SKB_GSO)
    assert action == ACCEPT
    assert bytes(data) == bytes(partial6(tcp6(VIP6, CLIENT6, 80, 40000, ACK | PSH, BIG)))


def test_gso_udp_reply_keeps_the_partial_seed_for_the_vip():
    d = director()
    d.hook_in(udp6(CLIENT6, VIP6, 5000, 53, b"q"), 1.0)
    reply = partial6(udp6(RS6_1, CLIENT6, 5353, 5000, BIG[:30000]))
    action, data = d.hook_out(bytearray(reply), 1.1, SKB_CSUMNOTREADY | SKB_GSO)
    assert action == ACCEPT
    assert bytes(data) == bytes(partial6(udp6(VIP6, CLIENT6, 53, 5000, BIG[:30000])))


def test_small_partial_reply_leaves_with_its_whole_checksum():
    d = director()
    d.hook_in(tcp6(CLIENT6, VIP6, 40000, 80, SYN), 1.0)
    reply = partial6(tcp6(RS6_2, CLIENT6, 8000, 40000, ACK, b"hello", ext=EXT), 120)
    action, data = d.hook_out(bytearray(reply), 1.1, SKB_CSUMNOTREADY)
    assert action == ACCEPT
    assert bytes(data) == bytes(tcp6(VIP6, CLIENT6, 80, 40000, ACK, b"hello", ext=EXT))


def test_gso_super_packet_beyond_64k_has_payload_length_zero():
    """BIG TCP: a GSO packet over 64 KiB says payload length 0 (ipv6_payload_len takes
    the skb's length then, include/net/ipv6.h)."""
    d = director()
    d.hook_in(tcp6(CLIENT6, VIP6, 40000, 80, SYN), 1.0)
    data = BIG + BIG[:10000]  # 74,000 bytes
    reply = partial6(tcp6(RS6_2, CLIENT6, 8000, 40000, ACK, BIG[:1000]))
    # Build the big one by hand: dpkt's 16-bit payload length cannot hold it.
    head = bytearray(reply[:60])
    head[4:6] = b"\x00\x00"
    big = head + data
    big[56:58] = seed6(a6(RS6_2), a6(CLIENT6), 6, len(big) - 40).to_bytes(2, "big")
    action, out = d.hook_out(bytearray(big), 1.1, SKB_CSUMNOTREADY | SKB_GSO)
    assert action == ACCEPT
    assert bytes(out[8:24]) == a6(VIP6) and bytes(out[40:42]) == (80).to_bytes(2, "big")
    assert out[56:58] == seed6(a6(VIP6), a6(CLIENT6), 6, len(big) - 40).to_bytes(2, "big")
    assert d.drops == {}
