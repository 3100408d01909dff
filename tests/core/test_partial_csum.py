"""NAT replies that the queue hands over as GSO super-packets or with a partial checksum
(NFQA_SKB_INFO: NFQA_SKB_GSO, NFQA_SKB_CSUMNOTREADY), and ordinary ones.

Expected bytes come from dpkt and from the kernel's definitions, never from the code
under test:

- CHECKSUM_PARTIAL: the checksum field holds ``~tcp_v4_check(len, saddr, daddr, 0)``
  (__tcp_v4_send_check, net/ipv4/tcp_ipv4.c; udp4_hwcsum / udp_set_csum for UDP), the
  pseudo-header sum folded and not complemented; here it is summed by
  ``dpkt.in_cksum_add`` over the pseudo-header bytes (RFC 793 / RFC 768).
- A GSO super-packet keeps that seed, for the new addresses: tcp_snat_handler's
  CHECKSUM_PARTIAL branch (tcp_partial_csum_update, net/netfilter/ipvs/ip_vs_proto_tcp.c);
  the segmenter completes each segment's checksum from it (__udp_gso_segment).
- A small packet with a partial checksum leaves the queue CHECKSUM_NONE once its
  payload is replaced (nfqnl_mangle, net/netfilter/nfnetlink_queue.c), so it must
  carry its whole checksum: dpkt's recompute of the rewritten packet.
- A GSO packet is never refused for its size (ensure_mtu_is_adequate skips
  skb_is_gso, net/netfilter/ipvs/ip_vs_xmit.c).
"""

from __future__ import annotations

import struct

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from director.core.engine import Director
from director.core.packet import SKB_CSUMNOTREADY, SKB_GSO, parse
from director.core.xmit import ACCEPT, SEND
from director.core.xmit.mtu import too_big
from director.core.xmit.nat import rewrite
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import ACK, CLIENT, RS1, SYN, VIP, tcp, udp

PSH = dpkt.tcp.TH_PUSH


def seed(src: bytes, dst: bytes, proto: int, l4_length: int) -> int:
    """The partial checksum the kernel leaves in the field: the pseudo-header summed
    with dpkt's one's complement adder, folded, not complemented."""
    pseudo = src + dst + struct.pack("!BBH", 0, proto, l4_length)
    return ~dpkt.in_cksum_done(dpkt.in_cksum_add(0, pseudo)) & 0xFFFF


def partial(raw: bytearray) -> bytearray:
    """``raw`` as the queue shows a CHECKSUM_PARTIAL skb: the L4 checksum is the seed."""
    ip = dpkt.ip.IP(bytes(raw))
    l4 = ip.hl * 4
    at = l4 + (6 if ip.p == dpkt.ip.IP_PROTO_UDP else 16)
    out = bytearray(raw)
    out[at : at + 2] = seed(ip.src, ip.dst, ip.p, len(raw) - l4).to_bytes(2, "big")
    return out


CONFIG = Config(
    services=(
        ServiceConf("tcp", VIP, 80, scheduler="rr", dests=(DestConf(RS1, 8080, "masq"),)),
        ServiceConf("udp", VIP, 53, scheduler="rr", dests=(DestConf(RS1, 5353, "masq"),)),
    )
)


def director(fused: bool) -> Director:
    d = Director()
    d.fused = fused
    d.configure(CONFIG)
    return d


def _connected(fused: bool, proto: str = "tcp") -> Director:
    d = director(fused)
    if proto == "tcp":
        assert d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 1.0)[0] == SEND
    else:
        assert d.hook_in(udp(CLIENT, VIP, 40000, 53, b"q"), 1.0)[0] == SEND
    return d


# Each case through the fused established-flow path and through the general one.
both_paths = pytest.mark.parametrize("fused", [True, False], ids=["fused", "general"])

BIG = bytes(range(256)) * 250  # 64,000 bytes: a super-packet far above any MTU


@both_paths
def test_gso_reply_keeps_the_partial_seed_for_the_vip(fused: bool) -> None:
    d = _connected(fused)
    reply = partial(tcp(RS1, CLIENT, 8080, 40000, ACK | PSH, BIG))
    action, data = d.hook_out(bytearray(reply), 1.1, SKB_CSUMNOTREADY | SKB_GSO)
    assert action == ACCEPT
    expected = partial(tcp(VIP, CLIENT, 80, 40000, ACK | PSH, BIG))
    assert bytes(data) == bytes(expected)


@both_paths
def test_gso_udp_reply_keeps_the_partial_seed_for_the_vip(fused: bool) -> None:
    d = _connected(fused, "udp")
    reply = partial(udp(RS1, CLIENT, 5353, 40000, BIG[:30000]))
    action, data = d.hook_out(bytearray(reply), 1.1, SKB_CSUMNOTREADY | SKB_GSO)
    assert action == ACCEPT
    assert bytes(data) == bytes(partial(udp(VIP, CLIENT, 53, 40000, BIG[:30000])))


@both_paths
def test_small_partial_reply_leaves_with_its_whole_checksum(fused: bool) -> None:
    d = _connected(fused)
    reply = partial(tcp(RS1, CLIENT, 8080, 40000, ACK, b"hello"))
    action, data = d.hook_out(bytearray(reply), 1.1, SKB_CSUMNOTREADY)
    assert action == ACCEPT
    assert bytes(data) == bytes(tcp(VIP, CLIENT, 80, 40000, ACK, b"hello"))


@both_paths
def test_small_partial_udp_reply_leaves_with_its_whole_checksum(fused: bool) -> None:
    d = _connected(fused, "udp")
    reply = partial(udp(RS1, CLIENT, 5353, 40000, b"answer"))
    action, data = d.hook_out(bytearray(reply), 1.1, SKB_CSUMNOTREADY)
    assert action == ACCEPT
    assert bytes(data) == bytes(udp(VIP, CLIENT, 53, 40000, b"answer"))


@both_paths
def test_ordinary_reply_gets_rfc1624_updates(fused: bool) -> None:
    d = _connected(fused)
    action, data = d.hook_out(tcp(RS1, CLIENT, 8080, 40000, ACK, b"hello"), 1.1)
    assert action == ACCEPT
    assert bytes(data) == bytes(tcp(VIP, CLIENT, 80, 40000, ACK, b"hello"))


def test_gso_packet_is_not_refused_for_its_size():
    big = tcp(CLIENT, VIP, 40000, 80, ACK, BIG)
    big[6] |= 0x40  # DF
    assert too_big(parse(bytearray(big)), 1500) is not None  # as a plain packet: refused
    assert too_big(parse(bytearray(big), 0, SKB_CSUMNOTREADY | SKB_GSO), 1500) is None


addrs = st.binary(min_size=4, max_size=4)
ports = st.integers(min_value=1, max_value=65535)


@given(
    addrs,
    addrs,
    ports,
    ports,
    st.binary(max_size=200),
    addrs,
    ports,
    st.booleans(),
    st.booleans(),
    st.sampled_from([0, SKB_CSUMNOTREADY, SKB_CSUMNOTREADY | SKB_GSO]),
)
def test_each_rewrite_equals_a_recompute(
    src, dst, sport, dport, payload, new_addr, new_port, is_udp, rewrite_source, skb_info
):
    """Complete checksums (ordinary packets, and small partial ones, which leave the
    queue CHECKSUM_NONE) equal dpkt's full recompute of the rewritten packet; a GSO
    packet's seed equals the pseudo-header seed recomputed for the new addresses."""
    l4 = (dpkt.udp.UDP if is_udp else dpkt.tcp.TCP)(sport=sport, dport=dport, data=payload)
    proto = dpkt.ip.IP_PROTO_UDP if is_udp else dpkt.ip.IP_PROTO_TCP
    raw = bytearray(bytes(dpkt.ip.IP(src=src, dst=dst, p=proto, data=l4)))
    if is_udp and raw[26:28] == b"\x00\x00":
        return  # dpkt sent no checksum: covered by test_checksum
    if skb_info:
        raw = partial(raw)
    pkt = parse(raw, 0, skb_info)
    if rewrite_source:
        rewrite(pkt, 12, 0, new_addr, new_port)
        src, sport = new_addr, new_port
    else:
        rewrite(pkt, 16, 2, new_addr, new_port)
        dst, dport = new_addr, new_port
    l4 = (dpkt.udp.UDP if is_udp else dpkt.tcp.TCP)(sport=sport, dport=dport, data=payload)
    expected = bytearray(bytes(dpkt.ip.IP(src=src, dst=dst, p=proto, data=l4)))
    at = 26 if is_udp else 36
    if skb_info & SKB_GSO:
        expected = partial(expected)
    elif skb_info and expected[at : at + 2] == b"\x00\x00":
        # skb_checksum_help sends a folded zero as 0xFFFF (CSUM_MANGLED_0), dpkt's TCP
        # as 0: the same one's complement sum.
        expected[at : at + 2] = b"\xff\xff"
    assert bytes(pkt.buf) == bytes(expected)


def test_seed_helper_matches_the_kernel_formula():
    """The oracle's own check: summing the transport bytes with the seed in the field
    and complementing (what the hardware, or skb_checksum_help, does from csum_start)
    gives the full checksum dpkt computes."""
    for raw in (tcp(RS1, CLIENT, 8080, 40000, ACK, b"abc"), udp(RS1, CLIENT, 53, 4, b"xy")):
        at = 26 if raw[9] == 17 else 36
        seeded = partial(raw)
        assert seeded[at : at + 2] != raw[at : at + 2]
        assert dpkt.in_cksum(bytes(seeded[20:])) == int.from_bytes(raw[at : at + 2], "big")


def test_partial_and_gso_replies_of_an_established_flow_take_the_fused_path():
    """The fused path rewrites them too (Xmit.fused_out_partial), as the general does."""

    class Spy(Director):
        general = 0

        def hook_out_general(self, buf: bytearray, now: float, skb_info: int = 0):  # type: ignore[no-untyped-def]
            self.general += 1
            return super().hook_out_general(buf, now, skb_info)

    d = Spy()
    d.configure(CONFIG)
    assert d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 1.0)[0] == SEND
    d.hook_out(tcp(RS1, CLIENT, 8080, 40000, SYN | ACK), 1.0)  # the first reply: general
    assert d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK), 1.0)[0] == SEND  # ESTABLISHED
    d.general = 0
    for skb_info, data in ((SKB_CSUMNOTREADY, b"small"), (SKB_CSUMNOTREADY | SKB_GSO, BIG)):
        reply = partial(tcp(RS1, CLIENT, 8080, 40000, ACK | PSH, data))
        action, out = d.hook_out(bytearray(reply), 2.0, skb_info)
        assert action == ACCEPT
        expected = tcp(VIP, CLIENT, 80, 40000, ACK | PSH, data)
        assert bytes(out) == bytes(expected if skb_info == SKB_CSUMNOTREADY else partial(expected))
    assert d.general == 0
