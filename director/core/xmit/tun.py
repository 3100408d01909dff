"""VS/TUN, IP-in-IP tunnelling (ip_vs_tunnel_xmit and ip_vs_tunnel_xmit_v6, RFC 2003,
RFC 2473).

The client's packet is carried unchanged inside a new IP header to the real server,
which may sit behind routers; it decapsulates the packet, owns the VIP and replies to
the client directly.  The outer header is of the real server's family and the inner
one of the service's: IPVS lets a tunnel carry either family in either (an IPv4
service with IPv6 real servers and the reverse, the one kind of mixed-family pool
ip_vs_genl_set_cmd accepts), so there are four cases, told apart by the inner
packet's version and the real server address's length:

- the outer protocol (next header) is IPPROTO_IPIP (4) for an IPv4 packet inside and
  IPPROTO_IPV6 (41) for an IPv6 one (ip_vs_prepare_tunneled_skb);
- its TOS (IPv4) or traffic class (IPv6) is the inner DSCP with the inner ECN
  field, except that CE inside gives ECT(0) outside (INET_ECN_encapsulate, RFC 6040's
  normal mode); the IPv6 flow label is 0;
- its TTL or hop limit is the inner one, after the inner packet has lost its hop
  (__ip_vs_get_out_rt's decrement_ttl, before ip_vs_prepare_tunneled_skb reads it);
- an IPv4 outer header copies DF from an IPv4 packet (the kernel's default, sysctl
  pmtu_disc=1; with it 0, ip_vs_tunnel_xmit passes no ``dfp`` and DF stays clear) and
  never sets it over an IPv6 one (``*df = 0``);
- its source is the director's address on the route toward the real server.

The path MTU the packet must fit is the route's less the outer header, 20 bytes for
IPv4 and 40 for IPv6 (__ip_vs_get_out_rt and __ip_vs_get_out_rt_v6 in
IP_VS_RT_MODE_TUNNEL), a route too narrow for that (below 68, or IPv6's minimum 1280)
is no way out at all; a packet that does not fit is answered as ensure_mtu_is_adequate
answers (director.core.xmit.mtu): ICMP fragmentation needed for IPv4 with DF, ICMPv6
Packet Too Big for IPv6.  A packet that would grow past the 65535 bytes an IPv4 total
length or an IPv6 payload length can say is refused.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from director.core.checksum import internet_checksum, ipv6_pseudo_sum
from director.core.icmp import IPV6_MIN_MTU
from director.core.packet import SKB_CSUMNOTREADY
from director.core.route import Route
from director.core.xmit import DROP, SEND, Verdict, Xmit, register
from director.core.xmit.mtu import IP_DF, MIN_TUNNEL_MTU, ip_decrease_ttl, out_route

if TYPE_CHECKING:
    from director.core.conn import Conn
    from director.core.packet import Packet

IPPROTO_IPIP = 4
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_IPV6 = 41
IPPROTO_GRE = 47
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
PORT_RANGE = (32768, 60999)  # net.ipv4.ip_local_port_range's default
TUNNEL_HLEN = 20  # sizeof(struct iphdr): the outer header toward an IPv4 real server
TUNNEL6_HLEN = 40  # sizeof(struct ipv6hdr): toward an IPv6 real server
MAX_IP_LEN = 65535
_OUTER = struct.Struct("!BBHHHBBH4s4s")
_OUTER6 = struct.Struct("!IHBB16s16s")  # version/class/flow, payload length, nexthdr, hops
_IP_DF = 0x4000
_IP6_HLIM = 7
INET_ECN_MASK = 0x03
INET_ECN_ECT_0 = 0x02
INET_ECN_CE = 0x03
_UDP = struct.Struct("!HHHH")
_UDP_HLEN = 8  # sizeof(struct udphdr)
_GUE_HLEN = 4  # sizeof(struct guehdr)
_GUE_REMCSUM_LEN = 8  # GUE_LEN_PRIV + GUE_PLEN_REMCSUM
_GUE_FLAG_PRIV = 0x0001  # GUE_FLAG_PRIV: htons(1 << 0)
_GUE_PFLAG_REMCSUM = 0x80000000  # GUE_PFLAG_REMCSUM: htonl(1U << 31)
_GUE_REMCSUM = struct.Struct("!IHH")  # private flags, csum_start, csum_start + offset
_TCP_CSUM = 16  # offsetof(struct tcphdr, check)
_UDP_CSUM = 6  # offsetof(struct udphdr, check)
_GRE = struct.Struct("!HH")
_GRE_CSUM = struct.Struct("!HHHH")
_GRE_HLEN = 4  # the base header: flags and version, protocol type
_GRE_CSUM_LEN = 4  # the checksum and its reserved word
_GRE_C = 0x8000  # GRE_CSUM
_PSEUDO = struct.Struct("!xBH")  # zero, protocol, length: after the two addresses


def encap_hlen(tun_type: str = "ipip", tun_flags: str = "nocsum", partial: bool = False) -> int:
    """The bytes between the outer IP header and the client's packet, as
    __ip_vs_get_out_rt takes them off the MTU: none for IPIP; a UDP header and a GUE
    header for GUE, with GUE's private flags and remote checksum option when
    --tun-remcsum meets a packet whose checksum is still partial (GUE_LEN_PRIV +
    GUE_PLEN_REMCSUM); GRE's base header, with its checksum word under --tun-csum
    (gre_calc_hlen)."""
    if tun_type == "gue":
        return (
            _UDP_HLEN + _GUE_HLEN + (_GUE_REMCSUM_LEN if partial and tun_flags == "remcsum" else 0)
        )
    if tun_type == "gre":
        return _GRE_HLEN + (_GRE_CSUM_LEN if tun_flags == "csum" else 0)
    return 0


def tunnel_hlen(
    daddr: bytes, tun_type: str = "ipip", tun_flags: str = "nocsum", partial: bool = False
) -> int:
    """The outer headers' length toward a real server at ``daddr`` (4 or 16 bytes):
    the IP header and the tunnel type's (encap_hlen)."""
    return (TUNNEL6_HLEN if len(daddr) == 16 else TUNNEL_HLEN) + encap_hlen(
        tun_type, tun_flags, partial
    )


def ecn_encapsulate(dsfield: int) -> int:
    """INET_ECN_encapsulate(inner, inner) (include/net/inet_ecn.h): the inner DSCP and
    ECN, but ECT(0) for CE (a congestion mark is not copied outward)."""
    if dsfield & INET_ECN_MASK == INET_ECN_CE:
        return dsfield & ~INET_ECN_MASK | INET_ECN_ECT_0
    return dsfield


def udp_flow_src_port(inner: bytearray, low: int = PORT_RANGE[0], high: int = PORT_RANGE[1]) -> int:
    """udp_flow_src_port (include/net/udp.h) as ipvs_gue_encap calls it: a hash of the
    client's flow (its addresses, protocol and ports, the same both ways as
    __flow_hash_consistentify makes them), obfuscated as ``hash ^= hash << 16`` and
    scaled into the local port range [low, high) (net.ipv4.ip_local_port_range,
    32768 60999 by default).  The kernel's flow hash is jhash with a boot-random
    seed; here it is CRC-32, so a flow keeps its port across restarts."""
    if inner[0] >> 4 == 6:
        addrs = sorted((bytes(inner[8:24]), bytes(inner[24:40])))
        protocol, at = inner[6], 40
    else:
        addrs = sorted((bytes(inner[12:16]), bytes(inner[16:20])))
        protocol, at = inner[9], (inner[0] & 0x0F) << 2
    ports = sorted((bytes(inner[at : at + 2]), bytes(inner[at + 2 : at + 4])))
    value = zlib.crc32(b"".join((*addrs, bytes((protocol,)), *ports)))
    value = (value ^ value << 16) & 0xFFFFFFFF
    return (value * (high - low) >> 32) + low


def _gue(
    inner: bytearray, protocol: int, tun_port: int, tun_flags: str, partial_l4: int
) -> tuple[int, bytearray]:
    """ipvs_gue_encap: the UDP header (source port udp_flow_src_port, destination the
    real server's --tun-port, checksum filled in by encapsulate) and the GUE header
    (version 0, C 0, hlen, proto_ctype the inner protocol, flags 0), with GUE_FLAG_PRIV,
    GUE_PFLAG_REMCSUM and the checksum's start and offset in the client's packet when
    --tun-remcsum meets a partial checksum (``partial_l4``: the client's transport
    header, its checksum left for the real server to complete)."""
    options = b""
    flags = 0
    if tun_flags == "remcsum" and partial_l4:
        flags = _GUE_FLAG_PRIV
        offset = _TCP_CSUM if protocol_of(inner) == IPPROTO_TCP else _UDP_CSUM
        options = _GUE_REMCSUM.pack(_GUE_PFLAG_REMCSUM, partial_l4, partial_l4 + offset)
    gue = bytes((len(options) >> 2, protocol)) + flags.to_bytes(2, "big") + options
    length = _UDP_HLEN + len(gue) + len(inner)
    udp = _UDP.pack(udp_flow_src_port(inner), tun_port, length, 0)
    return IPPROTO_UDP, bytearray(udp + gue)


def _gre(
    inner: bytearray, protocol: int, tun_port: int, tun_flags: str, partial_l4: int
) -> tuple[int, bytearray]:
    """ipvs_gre_encap / gre_build_header: version 0, the C bit and a checksum word
    (filled in by encapsulate, RFC 2784 2.5) under --tun-csum, the protocol type
    ETH_P_IP or ETH_P_IPV6."""
    ethertype = ETH_P_IP if protocol == IPPROTO_IPIP else ETH_P_IPV6
    if tun_flags == "csum":
        return IPPROTO_GRE, bytearray(_GRE_CSUM.pack(_GRE_C, ethertype, 0, 0))
    return IPPROTO_GRE, bytearray(_GRE.pack(0, ethertype))


# The tunnel types' encapsulations between the outer IP header and the client's packet
# (IPIP has none): (inner, inner protocol, port, flags, partial l4) -> (outer protocol,
# header).
ENCAPS: dict[str, Callable[[bytearray, int, int, str, int], tuple[int, bytearray]]] = {
    "gue": _gue,
    "gre": _gre,
}


def protocol_of(inner: bytearray) -> int:
    """The client's packet's transport protocol (IPv6: its next header)."""
    return inner[6] if inner[0] >> 4 == 6 else inner[9]


def _fill_checksum(packet: bytearray, at: int, protocol: int, tun_flags: str) -> None:
    """The checksum of the encapsulation starting at ``at``: UDP's over the outer
    pseudo-header unless --tun-nocsum (udp_set_csum / udp6_set_csum with nocheck, 0;
    CSUM_MANGLED_0 for a sum of 0), GRE's over its header and the packet behind it
    under --tun-csum (gre_checksum)."""
    if protocol == IPPROTO_UDP and tun_flags != "nocsum":
        end = len(packet)
        if packet[0] >> 4 == 6:
            csum = ipv6_pseudo_sum(packet, IPPROTO_UDP, at, end)
        else:
            pseudo = packet[12:20] + _PSEUDO.pack(IPPROTO_UDP, end - at)
            csum = internet_checksum(bytes(pseudo) + packet[at:end])
        struct.pack_into("!H", packet, at + 6, csum or 0xFFFF)
    elif protocol == IPPROTO_GRE and tun_flags == "csum":
        struct.pack_into("!H", packet, at + 4, internet_checksum(memoryview(packet)[at:]))


def encapsulate(
    inner: bytearray,
    source: bytes,
    destination: bytes,
    pmtu_disc: bool = True,
    tun_type: str = "ipip",
    tun_port: int = 0,
    tun_flags: str = "nocsum",
    partial_l4: int = 0,
) -> bytearray:
    """The tunnel packet carrying ``inner`` (IPv4 or IPv6) from ``source`` to
    ``destination`` (both of the real server's family), DF copied from an IPv4
    ``inner`` unless ``pmtu_disc`` (the sysctl) is off; with ``tun_type`` gue or gre,
    the UDP and GUE or the GRE header in between (ENCAPS), their checksum as
    ``tun_flags`` says (ip_vs_tunnel_xmit / ip_vs_tunnel_xmit_v6).

    The IPv4 identification is left 0: the kernel picks one when the raw socket sends
    it (IP_HDRINCL fills a zero id), as ip_select_ident does for the kernel's tunnel.
    """
    if inner[0] >> 4 == 6:
        protocol = IPPROTO_IPV6
        dsfield = (inner[0] & 0x0F) << 4 | inner[1] >> 4  # ipv6_get_dsfield
        ttl = inner[7]  # hop_limit
        df = 0
    else:
        protocol = IPPROTO_IPIP
        dsfield = inner[1]
        ttl = inner[8]
        df = (inner[6] << 8 | inner[7]) & _IP_DF if pmtu_disc else 0
    dsfield = ecn_encapsulate(dsfield)
    encap = ENCAPS.get(tun_type)
    middle = bytearray()
    if encap is not None:
        protocol, middle = encap(inner, protocol, tun_port, tun_flags, partial_l4)
    if len(destination) == 16:
        first = 6 << 28 | dsfield << 20  # ipv6_change_dsfield(iph, 0, dsfield); flow label 0
        packet = bytearray(
            _OUTER6.pack(first, len(middle) + len(inner), protocol, ttl, source, destination)
        )
    else:
        length = TUNNEL_HLEN + len(middle) + len(inner)
        packet = bytearray(
            _OUTER.pack(0x45, dsfield, length, 0, df, ttl, protocol, 0, source, destination)
        )
        struct.pack_into("!H", packet, 10, internet_checksum(packet))
    at = len(packet)
    packet += middle
    packet += inner
    if middle:
        _fill_checksum(packet, at, protocol, tun_flags)
    return packet


def too_long(length: int, daddr: bytes, encap: int = 0) -> bool:
    """Whether a packet of ``length`` bytes cannot be carried toward ``daddr`` behind
    ``encap`` bytes of UDP and GUE or GRE: an IPv4 total length counts the 20-byte
    outer header, an IPv6 payload length does not."""
    return length + encap + (TUNNEL_HLEN if len(daddr) == 4 else 0) > MAX_IP_LEN


@register
class Tunnel(Xmit):
    """ip_vs_tunnel_xmit and ip_vs_tunnel_xmit_v6, through the real server's tunnel
    type (dest->tun_type, tun_port, tun_flags): IPIP, GUE or GRE."""

    name = "tunnel"
    families = frozenset((4, 6))

    def xmit_in(self, conn: Conn, pkt: Packet) -> Verdict:
        dest = conn.dest
        daddr = conn.daddr
        partial = bool(pkt.skb_info & SKB_CSUMNOTREADY)
        encap = encap_hlen(dest.tun_type, dest.tun_flags, partial)
        route = out_route(conn, pkt, tunnel_hlen(daddr) + encap)
        if not isinstance(route, Route):
            return route
        if too_long(pkt.length, daddr, encap):  # no DF, and no room left for the header
            return (DROP, "too_big_to_encapsulate")
        return (
            SEND,
            encapsulate(
                pkt.buf, route.source, daddr, dest.pmtu_disc, dest.tun_type, dest.tun_port,
                dest.tun_flags, pkt.l4 if partial else 0,
            ),
        )  # fmt: skip

    def fused_in(self, conn: Conn, buf: bytearray, length: int) -> Verdict | None:
        dest = conn.dest
        route = dest.route
        daddr = dest.addr  # conn.daddr
        if route is None or buf[8] <= 1:
            return None
        encap = encap_hlen(dest.tun_type, dest.tun_flags)
        mtu = dest.path_mtu(route) - tunnel_hlen(daddr) - encap
        if (
            (length > mtu and buf[6] & IP_DF)
            or mtu < (IPV6_MIN_MTU if len(daddr) == 16 else MIN_TUNNEL_MTU)
            or too_long(length, daddr, encap)
        ):
            return None
        ip_decrease_ttl(buf)
        return (
            SEND,
            encapsulate(buf, route.source, daddr, dest.pmtu_disc, dest.tun_type, dest.tun_port,
                        dest.tun_flags),
        )  # fmt: skip

    def fused_in6(self, conn: Conn, buf: bytearray, length: int) -> Verdict | None:
        """``xmit_in`` for the fused path and an IPv6 packet: the hop limit less one,
        then the tunnel packet; what needs an answer or a refusal (a hop limit of 1,
        a packet too big, a route too narrow) takes the general path."""
        hlim = buf[_IP6_HLIM]
        dest = conn.dest
        route = dest.route
        if hlim <= 1 or route is None:
            return None
        daddr = dest.addr  # conn.daddr
        encap = encap_hlen(dest.tun_type, dest.tun_flags)
        mtu = dest.path_mtu(route) - tunnel_hlen(daddr) - encap
        if (
            length > mtu
            or mtu < (IPV6_MIN_MTU if len(daddr) == 16 else MIN_TUNNEL_MTU)
            or too_long(length, daddr, encap)
        ):
            return None
        buf[_IP6_HLIM] = hlim - 1
        return (
            SEND,
            encapsulate(buf, route.source, daddr, True, dest.tun_type, dest.tun_port,
                        dest.tun_flags),
        )  # fmt: skip

    def unreachable(self, route: Route | None) -> str | None:
        """Without a route there is no outer source address and no way out."""
        return "no route" if route is None else None
