"""Golden cases for VS/DR and VS/TUN with IPv6, and for mixed-family tunnels.

Expected packets are built with dpkt field by field from the kernel's transmitters
(net/netfilter/ipvs/ip_vs_xmit.c):

- ip_vs_tunnel_xmit_v6 (an IPv6 real server): version 6, ``nexthdr`` IPPROTO_IPV6 (41)
  over an IPv6 packet or IPPROTO_IPIP (4) over an IPv4 one
  (ip_vs_prepare_tunneled_skb), ``payload_len`` the inner packet's length, flow label
  zeroed (``memset(&iph->flow_lbl, 0, ...)``), traffic class
  ``INET_ECN_encapsulate(dsfield, dsfield)``, ``hop_limit`` the inner TTL or hop limit,
  source the route's;
- ip_vs_tunnel_xmit (an IPv4 real server) over an IPv6 packet: protocol 41, TOS as
  above, TTL the hop limit, DF never (``*df = 0`` for AF_INET6);
- __ip_vs_get_out_rt_v6: the hop limit of an IPv6 packet is decremented before it is
  sent on (decrement_ttl), and the path MTU is the route's less the outer header
  (``dst_mtu - sizeof(struct ipv6hdr)``, 40; ``- sizeof(struct iphdr)``, 20, in
  __ip_vs_get_out_rt), a tunnel route below IPV6_MIN_MTU (or 68) being refused;
- ensure_mtu_is_adequate: an IPv6 packet that does not fit gets ICMPv6 Packet Too Big
  (type 2, code 0, RFC 4443 3.2) with that MTU, an IPv4 one with DF ICMP fragmentation
  needed (type 3, code 4, RFC 1191).

A connection's first packet goes through the whole hook (parse, schedule, transmit);
the later packets of the MTU cases are handed to the connection's transmitter through a
view of the fields ``parse`` reads, so that each case is one packet.
"""

from __future__ import annotations

import ipaddress
import re
import socket

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from director.core.conn import Conn
from director.core.engine import Director
from director.core.packet import SKB_GSO, Packet
from director.core.route import Frame, Route
from director.core.service import Dest
from director.core.xmit import DIRECT, DROP, SEND, Verdict, bind_xmit
from director.core.xmit.dr import ethernet_frame
from director.core.xmit.tun import encapsulate
from director.ctl.ops import AddServer, AddService, EditServer, apply
from director.model.config import Config, ConfigError, DestConf, ServiceConf
from tests.core.packets import ACK, CLIENT, SYN, VIP, tcp

CLIENT6 = "2001:db8:1::10"
VIP6 = "2001:db8:1::100"
RS6_LAN = "2001:db8:2::2"
RS6_REMOTE = "2001:db8:3::2"
RS_REMOTE = "198.19.0.2"
DIRECTOR6 = ipaddress.IPv6Address("2001:db8:2::1").packed
DIRECTOR4 = socket.inet_aton("198.18.0.1")
MTU = 1500


def a6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def tcp6(
    src: str = CLIENT6,
    dst: str = VIP6,
    flags: int = SYN,
    data: bytes = b"",
    hlim: int = 61,
    fc: int = 0,
    flow: int = 0,
    sport: int = 40000,
) -> bytearray:
    """An IPv6 TCP segment; dpkt computes its checksum over the IPv6 pseudo-header."""
    seg = dpkt.tcp.TCP(sport=sport, dport=8080, flags=flags, seq=1000, ack=2000, data=data)
    ip = dpkt.ip6.IP6(src=a6(src), dst=a6(dst), nxt=dpkt.ip.IP_PROTO_TCP, hlim=hlim, fc=fc,
                      flow=flow, plen=len(bytes(seg)), data=seg)  # fmt: skip
    return bytearray(bytes(ip))


def view6(buf: bytearray, skb_info: int = 0) -> Packet:
    """The fields ``parse`` reads from an IPv6 packet without extension headers."""
    protocol = buf[6]
    sport, dport = int.from_bytes(buf[40:42], "big"), int.from_bytes(buf[42:44], "big")
    flags = buf[53] if protocol == dpkt.ip.IP_PROTO_TCP else 0
    return Packet(buf, protocol, bytes(buf[8:24]), bytes(buf[24:40]), sport, dport, 40,
                  len(buf), flags, 0, skb_info)  # fmt: skip


def director(vip: str, method: str, rs: str, mtu: int = MTU) -> Director:
    d = Director()
    d.configure(Config(services=(
        ServiceConf("tcp", vip, 8080, scheduler="rr", dests=(DestConf(rs, 8080, method),)),
    )))  # fmt: skip
    for svc in d.services:
        for dest in svc.dests:
            source = DIRECTOR6 if len(dest.addr) == 16 else DIRECTOR4
            dest.route = Route(ifindex=3, source=source, mtu=mtu)
    return d


def dest_of(d: Director) -> Dest:
    (svc,) = d.services
    (dest,) = svc.dests
    return dest


def xmit6(d: Director, buf: bytearray, skb_info: int = 0) -> Verdict:
    """A packet of an IPv6 client's connection through its transmitter (ip_vs_in's
    ``cp->packet_xmit``)."""
    (svc,) = d.services
    dest = dest_of(d)
    pkt = view6(buf, skb_info)
    conn = Conn(d.tcp, pkt.protocol, pkt.saddr, pkt.sport, pkt.daddr, pkt.dport, svc, dest,
                bind_xmit(dest))  # fmt: skip
    return conn.xmit.xmit_in(conn, pkt)


def hop_less(buf: bytearray) -> bytes:
    """The IPv6 packet as it goes on: hop limit less one (no checksum covers it)."""
    out = bytearray(buf)
    out[7] -= 1
    return bytes(out)


def outer6(inner: bytes, nxt: int, tc: int, hlim: int, dst: str) -> bytes:
    ip = dpkt.ip6.IP6(src=DIRECTOR6, dst=a6(dst), nxt=nxt, hlim=hlim, fc=tc, flow=0,
                      plen=len(inner))  # fmt: skip
    return bytes(ip) + inner  # dpkt's header, then the payload as it is


# -- IPv6 in IPv6 ----------------------------------------------------------------


def test_ipv6_in_ipv6_outer_header_is_exact() -> None:
    inner = tcp6(data=b"x" * 10, hlim=61, fc=0xB8, flow=0x12345)  # DSCP EF, a flow label
    action, packet = director(VIP6, "tunnel", RS6_REMOTE).hook_in(bytearray(inner), 1.0)
    assert action == SEND
    assert isinstance(packet, bytearray)
    assert bytes(packet) == outer6(hop_less(inner), 41, 0xB8, 60, RS6_REMOTE)
    outer = dpkt.ip6.IP6(bytes(packet))
    assert (outer.nxt, outer.plen, outer.flow, outer.hlim) == (41, len(inner), 0, 60)
    assert bytes(packet[40:]) == hop_less(inner)  # the client's packet, one hop on


def test_ecn_ce_inside_is_ect0_outside() -> None:
    """INET_ECN_encapsulate: CE (3) is not copied out; the outer says ECT(0) (2)."""
    inner = tcp6(fc=0xB8 | 3)
    _, packet = director(VIP6, "tunnel", RS6_REMOTE).hook_in(bytearray(inner), 1.0)
    assert isinstance(packet, bytearray)
    assert dpkt.ip6.IP6(bytes(packet)).fc == 0xB8 | 2
    assert dpkt.ip6.IP6(bytes(packet[40:])).fc == 0xB8 | 3  # the inner mark stays


def test_ipv4_ecn_ce_inside_is_ect0_outside() -> None:
    """The same rule for IPIP (ip_vs_tunnel_xmit): TOS 0xBB inside, 0xBA outside."""
    inner = tcp(CLIENT, VIP, 40000, 8080, SYN)
    inner[1] = 0xBB
    inner[10:12] = b"\0\0"
    inner = bytearray(bytes(dpkt.ip.IP(bytes(inner))))
    _, packet = director(VIP, "tunnel", RS_REMOTE).hook_in(bytearray(inner), 1.0)
    assert isinstance(packet, bytearray)
    assert packet[1] == 0xBA and packet[21] == 0xBB


def test_ipv6_too_big_for_the_tunnel_gets_packet_too_big_with_mtu_less_40() -> None:
    """1461 bytes into a 1500-byte route to an IPv6 real server: 1460 fit."""
    d = director(VIP6, "tunnel", RS6_REMOTE)
    big = tcp6(flags=ACK, data=b"y" * (1461 - 60))
    assert len(big) == 1461
    action, answer = xmit6(d, bytearray(big))
    assert action == SEND
    assert isinstance(answer, bytearray)
    ip = dpkt.ip6.IP6(bytes(answer))
    assert (ip.src, ip.dst, ip.nxt) == (a6(VIP6), a6(CLIENT6), dpkt.ip.IP_PROTO_ICMP6)
    icmp = ip.data
    assert (icmp.type, icmp.code) == (2, 0)
    assert bytes(icmp.data)[:4] == (1460).to_bytes(4, "big")
    fits = tcp6(flags=ACK, data=b"y" * (1460 - 60))
    action, packet = xmit6(d, bytearray(fits))
    assert action == SEND and isinstance(packet, bytearray) and len(packet) == 1500


def test_a_gso_super_packet_is_never_too_big() -> None:
    """__mtu_check_toobig_v6 skips skb_is_gso: the kernel cuts it into segments."""
    big = tcp6(flags=ACK, data=b"y" * 3000)
    action, packet = xmit6(director(VIP6, "tunnel", RS6_REMOTE), bytearray(big), SKB_GSO)
    assert action == SEND and isinstance(packet, bytearray) and len(packet) == len(big) + 40


def test_a_tunnel_route_below_the_ipv6_minimum_is_no_way_out() -> None:
    """__ip_vs_get_out_rt_v6: ``mtu < IPV6_MIN_MTU`` after the 40 bytes: err_put."""
    d = director(VIP6, "tunnel", RS6_REMOTE, mtu=1319)
    assert xmit6(d, tcp6()) == (DROP, "tunnel_mtu")
    d4 = director(VIP, "tunnel", RS_REMOTE, mtu=87)  # 87 - 20 < 68
    assert d4.hook_in(tcp(CLIENT, VIP, 40000, 8080, SYN), 1.0) == (DROP, "tunnel_mtu")


def test_hop_limit_one_gets_time_exceeded() -> None:
    """decrement_ttl: ``hop_limit <= 1``: ICMPV6_TIME_EXCEED, ICMPV6_EXC_HOPLIMIT."""
    action, answer = director(VIP6, "tunnel", RS6_REMOTE).hook_in(tcp6(hlim=1), 1.0)
    assert action == SEND
    assert isinstance(answer, bytearray)
    icmp = dpkt.ip6.IP6(bytes(answer)).data
    assert (icmp.type, icmp.code) == (3, 0)


# -- mixed families ----------------------------------------------------------------


def test_ipv4_service_with_an_ipv6_real_server_tunnels_ipv4_in_ipv6() -> None:
    """The whole hook: an IPv4 client's SYN to an IPv4 VIP, scheduled to an IPv6 real
    server: next header 4, traffic class the TOS, hop limit the TTL: 60, the IPv4
    packet's 61 less the hop __ip_vs_get_out_rt's decrement_ttl takes before
    ip_vs_prepare_tunneled_skb reads it (net/netfilter/ipvs/ip_vs_xmit.c)."""

    def inner(ttl: int) -> bytearray:
        raw = tcp(CLIENT, VIP, 40000, 8080, SYN, b"hello", ttl=ttl)
        raw[1] = 0x28
        raw[10:12] = b"\0\0"
        return bytearray(bytes(dpkt.ip.IP(bytes(raw))))

    d = director(VIP, "tunnel", RS6_REMOTE)
    action, packet = d.hook_in(inner(61), 1.0)
    assert action == SEND
    assert isinstance(packet, bytearray)
    assert bytes(packet) == outer6(bytes(inner(60)), 4, 0x28, 60, RS6_REMOTE)
    (conn,) = d.conns
    assert (conn.caddr, conn.daddr) == (socket.inet_aton(CLIENT), a6(RS6_REMOTE))


def test_ipv4_with_df_too_big_for_an_ipv6_tunnel_gets_frag_needed_with_mtu_less_40() -> None:
    d = director(VIP, "tunnel", RS6_REMOTE)
    d.hook_in(tcp(CLIENT, VIP, 40000, 8080, SYN), 0.5)
    big = dpkt.ip.IP(bytes(tcp(CLIENT, VIP, 40000, 8080, ACK, b"y" * (1461 - 40))))
    big.df, big.sum = 1, 0
    action, answer = d.hook_in(bytearray(bytes(big)), 1.0)
    assert action == SEND
    assert isinstance(answer, bytearray)
    icmp = dpkt.ip.IP(bytes(answer)).data
    assert (icmp.type, icmp.code, icmp.data.mtu) == (3, 4, 1460)


def test_ipv6_service_with_an_ipv4_real_server_tunnels_ipv6_in_ipv4() -> None:
    """ip_vs_tunnel_xmit over an AF_INET6 connection: protocol 41, TOS from the
    traffic class, TTL from the hop limit (decremented), no DF, id 0."""
    inner = tcp6(fc=0xB8, hlim=61)
    d = director(VIP6, "tunnel", RS_REMOTE)
    action, packet = d.hook_in(bytearray(inner), 1.0)
    assert action == SEND
    assert isinstance(packet, bytearray)
    expected = dpkt.ip.IP(v=4, hl=5, tos=0xB8, id=0, ttl=60, p=41, src=DIRECTOR4,
                          dst=socket.inet_aton(RS_REMOTE), data=hop_less(inner))  # fmt: skip
    assert bytes(packet) == bytes(expected)
    assert dpkt.ip.IP(bytes(packet)).df == 0
    (conn,) = d.conns
    assert (conn.caddr, conn.daddr) == (a6(CLIENT6), socket.inet_aton(RS_REMOTE))


def test_ipv6_too_big_for_an_ipv4_tunnel_gets_packet_too_big_with_mtu_less_20() -> None:
    big = tcp6(flags=ACK, data=b"y" * (1481 - 60))
    action, answer = xmit6(director(VIP6, "tunnel", RS_REMOTE), bytearray(big))
    assert action == SEND
    assert isinstance(answer, bytearray)
    icmp = dpkt.ip6.IP6(bytes(answer)).data
    assert (icmp.type, bytes(icmp.data)[:4]) == (2, (1480).to_bytes(4, "big"))


@pytest.mark.parametrize(
    ("vip", "rs", "method"),
    [(VIP, RS6_LAN, "masq"), (VIP, RS6_LAN, "droute"), (VIP6, "198.18.0.2", "masq"),
     (VIP6, "198.18.0.2", "droute")],
)  # fmt: skip
def test_a_mixed_family_server_other_than_a_tunnel_is_refused(
    vip: str, rs: str, method: str
) -> None:
    """ip_vs_genl_set_cmd (net/netfilter/ipvs/ip_vs_ctl.c): ``udest.af != svc->af``
    is allowed for IP_VS_CONN_F_TUNNEL only, any other method is -EINVAL; so is an edit
    that turns a mixed-family tunnel into another method."""
    config = apply(Config(), AddService(ServiceConf("tcp", vip, 80)))
    key = ("tcp", vip, 80)
    with pytest.raises(ConfigError, match=r"^Different address family") as info:
        apply(config, AddServer(key, DestConf(rs, 80, method)))
    assert "\n" not in str(info.value)
    tunnel = apply(config, AddServer(key, DestConf(rs, 80, "tunnel")))
    with pytest.raises(ConfigError, match=re.escape("allowed only for tunneling servers")):
        apply(tunnel, EditServer(key, rs, 80, method=method))


# -- DR ------------------------------------------------------------------------------


def test_dr_hands_the_ipv6_packet_one_hop_on_to_the_neighbour() -> None:
    """ip_vs_dr_xmit_v6: the packet unchanged but for its hop limit, to the real
    server's link-layer address (an NDP neighbour), in a frame of EtherType 0x86DD."""
    request = tcp6(data=b"hello")
    action, frame = director(VIP6, "droute", RS6_LAN).hook_in(bytearray(request), 1.0)
    assert action == DIRECT
    assert frame == Frame(bytearray(hop_less(request)), a6(RS6_LAN), 3)
    assert isinstance(frame, Frame)
    rs_mac, own_mac = bytes.fromhex("02aabbccdd02"), bytes.fromhex("02aabbccdd01")
    eth = dpkt.ethernet.Ethernet(ethernet_frame(rs_mac, own_mac, frame.packet))
    assert (eth.dst, eth.src, eth.type) == (rs_mac, own_mac, dpkt.ethernet.ETH_TYPE_IP6)


def test_dr_ipv6_too_big_gets_packet_too_big_with_the_route_mtu() -> None:
    big = tcp6(flags=ACK, data=b"y" * 1300)
    action, answer = xmit6(director(VIP6, "droute", RS6_LAN, mtu=1280), bytearray(big))
    assert action == SEND
    assert isinstance(answer, bytearray)
    icmp = dpkt.ip6.IP6(bytes(answer)).data
    assert (icmp.type, bytes(icmp.data)[:4]) == (2, (1280).to_bytes(4, "big"))


def test_a_relayed_icmpv6_error_too_big_is_dropped_without_an_answer() -> None:
    """ensure_mtu_is_adequate: ``!ip_vs_iph_icmp(ipvsh)`` before icmpv6_send, and false
    returned all the same: an ICMPv6 error too big for the way is dropped."""
    d = director(VIP6, "droute", RS6_LAN, mtu=1280)
    icmp = dpkt.icmp6.ICMP6(type=1, code=4, data=b"\0" * 4 + bytes(tcp6(data=b"z" * 1300)))
    err = dpkt.ip6.IP6(src=a6("2001:db8:1::99"), dst=a6(VIP6), nxt=58, hlim=64,
                       plen=len(bytes(icmp)), data=icmp)  # fmt: skip
    buf = bytearray(bytes(err))
    pkt = Packet(buf, 58, bytes(buf[8:24]), bytes(buf[24:40]), 0, 0, 40, len(buf))
    dest = dest_of(d)
    (svc,) = d.services
    conn = Conn(d.tcp, 6, a6(CLIENT6), 40000, a6(VIP6), 8080, svc, dest, bind_xmit(dest))
    assert conn.xmit.xmit_in(conn, pkt) == (DROP, "too_big")


def test_a_relayed_ipv4_icmp_error_with_df_too_big_goes_on() -> None:
    """The IPv4 branch: ``!ip_vs_iph_icmp(ipvsh)`` keeps icmp_send from answering, and
    ensure_mtu_is_adequate returns true: the error goes on (fragmented on output)."""
    d = director(VIP, "tunnel", RS_REMOTE, mtu=576)
    quoted = bytes(tcp(VIP, CLIENT, 8080, 40000, ACK, b"q" * 600))
    unreach = dpkt.icmp.ICMP(type=3, code=3, data=dpkt.icmp.ICMP.Unreach(data=quoted))
    err = dpkt.ip.IP(src=socket.inet_aton("203.0.113.99"), dst=socket.inet_aton(VIP), p=1,
                     ttl=64, data=unreach)  # fmt: skip
    err.df = 1
    buf = bytearray(bytes(err))
    pkt = Packet(buf, 1, bytes(buf[12:16]), bytes(buf[16:20]), 0, 0, 20, len(buf))
    dest = dest_of(d)
    (svc,) = d.services
    conn = Conn(d.tcp, 6, socket.inet_aton(CLIENT), 40000, socket.inet_aton(VIP), 8080, svc,
                dest, bind_xmit(dest))  # fmt: skip
    action, packet = conn.xmit.xmit_in(conn, pkt)
    assert action == SEND
    assert isinstance(packet, bytearray) and bytes(packet[20:]) == bytes(buf)


@settings(max_examples=200, deadline=None)
@given(
    inner6=st.booleans(),
    outer6=st.booleans(),
    dsfield=st.integers(0, 255),
    hops=st.integers(2, 255),
    size=st.integers(0, 1400),
)
def test_any_packet_is_carried_whole_in_either_family(
    inner6: bool, outer6: bool, dsfield: int, hops: int, size: int
) -> None:
    """encapsulate, for every pair of families: dpkt reads the outer header back with
    the lengths, next header and hop limit the kernel writes, and the inner packet
    whole behind it; the outer TOS or traffic class is the inner one with CE made
    ECT(0) (INET_ECN_encapsulate); an IPv4 outer header's checksum is dpkt's own."""
    if inner6:
        inner = tcp6(data=b"p" * size, hlim=hops, fc=dsfield)
    else:
        ip = dpkt.ip.IP(bytes(tcp(CLIENT, VIP, 40000, 8080, ACK, b"p" * size)))
        ip.tos, ip.ttl, ip.sum = dsfield, hops, 0
        inner = bytearray(bytes(ip))
    source, destination = (DIRECTOR6, a6(RS6_REMOTE)) if outer6 else (
        DIRECTOR4, socket.inet_aton(RS_REMOTE))  # fmt: skip
    packet = encapsulate(bytearray(inner), source, destination)
    expected_ds = dsfield & 0xFC | 2 if dsfield & 3 == 3 else dsfield
    nxt = 41 if inner6 else 4
    if outer6:
        outer6_ = dpkt.ip6.IP6(bytes(packet))
        assert (outer6_.nxt, outer6_.plen, outer6_.hlim, outer6_.fc, outer6_.flow) == (
            nxt, len(inner), hops, expected_ds, 0)  # fmt: skip
        assert (outer6_.src, outer6_.dst) == (source, destination)
        assert bytes(packet[40:]) == bytes(inner)
    else:
        outer4 = dpkt.ip.IP(bytes(packet))
        assert (outer4.p, outer4.len, outer4.ttl, outer4.tos) == (
            nxt, 20 + len(inner), hops, expected_ds)  # fmt: skip
        assert outer4.df == (0 if inner6 else dpkt.ip.IP(bytes(inner)).df)
        check = dpkt.ip.IP(bytes(packet))
        check.sum = 0
        assert bytes(check)[:20] == bytes(packet[:20])  # dpkt's checksum is ours
        assert bytes(packet[20:]) == bytes(inner)
