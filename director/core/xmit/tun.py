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
- its TTL or hop limit is the inner one;
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
from typing import TYPE_CHECKING

from director.core.checksum import internet_checksum
from director.core.icmp import IPV6_MIN_MTU
from director.core.route import Route
from director.core.xmit import DROP, SEND, Verdict, Xmit, register
from director.core.xmit.mtu import IP_DF, MIN_TUNNEL_MTU, out_route

if TYPE_CHECKING:
    from director.core.conn import Conn
    from director.core.packet import Packet

IPPROTO_IPIP = 4
IPPROTO_IPV6 = 41
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


def tunnel_hlen(daddr: bytes) -> int:
    """The outer header's length toward a real server at ``daddr`` (4 or 16 bytes)."""
    return TUNNEL6_HLEN if len(daddr) == 16 else TUNNEL_HLEN


def ecn_encapsulate(dsfield: int) -> int:
    """INET_ECN_encapsulate(inner, inner) (include/net/inet_ecn.h): the inner DSCP and
    ECN, but ECT(0) for CE (a congestion mark is not copied outward)."""
    if dsfield & INET_ECN_MASK == INET_ECN_CE:
        return dsfield & ~INET_ECN_MASK | INET_ECN_ECT_0
    return dsfield


def encapsulate(
    inner: bytearray, source: bytes, destination: bytes, pmtu_disc: bool = True
) -> bytearray:
    """The tunnel packet carrying ``inner`` (IPv4 or IPv6) from ``source`` to
    ``destination`` (both of the real server's family), DF copied from an IPv4
    ``inner`` unless ``pmtu_disc`` (the sysctl) is off.

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
    if len(destination) == 16:
        first = 6 << 28 | dsfield << 20  # ipv6_change_dsfield(iph, 0, dsfield); flow label 0
        return (
            bytearray(_OUTER6.pack(first, len(inner), protocol, ttl, source, destination)) + inner
        )
    length = TUNNEL_HLEN + len(inner)
    header = bytearray(
        _OUTER.pack(0x45, dsfield, length, 0, df, ttl, protocol, 0, source, destination)
    )
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return header + inner


def too_long(length: int, daddr: bytes) -> bool:
    """Whether a packet of ``length`` bytes cannot be carried toward ``daddr``: an IPv4
    total length counts the 20-byte outer header, an IPv6 payload length does not."""
    return length + (TUNNEL_HLEN if len(daddr) == 4 else 0) > MAX_IP_LEN


@register
class Tunnel(Xmit):
    name = "tunnel"
    families = frozenset((4, 6))

    def xmit_in(self, conn: Conn, pkt: Packet) -> Verdict:
        daddr = conn.daddr
        route = out_route(conn, pkt, tunnel_hlen(daddr))
        if not isinstance(route, Route):
            return route
        if too_long(pkt.length, daddr):  # no DF, and no room left for the header
            return (DROP, "too_big_to_encapsulate")
        return (SEND, encapsulate(pkt.buf, route.source, daddr, conn.dest.pmtu_disc))

    def fused_in(self, conn: Conn, buf: bytearray, length: int) -> Verdict | None:
        dest = conn.dest
        route = dest.route
        daddr = dest.addr  # conn.daddr
        if route is None:
            return None
        mtu = dest.path_mtu(route) - tunnel_hlen(daddr)
        if (
            (length > mtu and buf[6] & IP_DF)
            or mtu < (IPV6_MIN_MTU if len(daddr) == 16 else MIN_TUNNEL_MTU)
            or too_long(length, daddr)
        ):
            return None
        return (SEND, encapsulate(buf, route.source, daddr, dest.pmtu_disc))

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
        mtu = dest.path_mtu(route) - tunnel_hlen(daddr)
        if (
            length > mtu
            or mtu < (IPV6_MIN_MTU if len(daddr) == 16 else MIN_TUNNEL_MTU)
            or too_long(length, daddr)
        ):
            return None
        buf[_IP6_HLIM] = hlim - 1
        return (SEND, encapsulate(buf, route.source, daddr))

    def unreachable(self, route: Route | None) -> str | None:
        """Without a route there is no outer source address and no way out."""
        return "no route" if route is None else None
