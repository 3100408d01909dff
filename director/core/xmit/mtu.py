"""The path-MTU check every transmitter makes before sending (ensure_mtu_is_adequate).

IPv4: a packet with DF set that does not fit the way to its real server is answered
with ICMP fragmentation needed carrying the MTU that fits; the client's stack lowers
its path MTU and sends again (RFC 1191).  Without DF the packet goes on and is
fragmented on output, as the kernel's ip_fragment would (the shells use
director.core.fragment).

IPv6: no router fragments (RFC 8200 §5), so any packet that does not fit is dropped
and answered with ICMPv6 Packet Too Big carrying the MTU that fits (RFC 8201;
__mtu_check_toobig_v6 and ``icmpv6_send(skb, ICMPV6_PKT_TOOBIG, 0, mtu)``).

Either way a GSO super-packet is never refused: the kernel cuts it into segments that
fit (both checks skip skb_is_gso).  An ICMP error being relayed (ip_vs_iph_icmp) gets
no answer of its own: a too-big IPv4 one goes on to be fragmented, a too-big IPv6 one
is dropped.  The packet's family is its version nibble, so the check serves the NAT,
DR and TUN transmitters of either family alike.

Before the MTU check the packet loses one hop (decrement_ttl, as __ip_vs_get_out_rt
and __ip_vs_get_out_rt_v6 call it for a route that is not local): a TTL or hop limit
of 1 or 0 is answered with ICMP or ICMPv6 time exceeded.  A GSO or partial-checksum
packet loses it alike: the TTL is in the IP header's checksum only, never in the
transport one, and the kernel copies it into every segment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.icmp import (
    IPV6_MIN_MTU,
    frag_needed,
    hop_limit_exceeded,
    packet_too_big,
    ttl_exceeded,
)
from director.core.packet import SKB_GSO, Packet
from director.core.route import Route
from director.core.xmit import DROP, SEND, Verdict

if TYPE_CHECKING:
    from director.core.conn import Conn

_IP_DF = 0x40  # in the first byte of the fragment field
IP_DF = _IP_DF
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
MIN_TUNNEL_MTU = 68  # __ip_vs_get_out_rt's floor for a tunnel toward an IPv4 real server
_IP6_HLIM = 7
_IP_TTL = 8
_IP_CSUM = 10
# ip_decrease_ttl's change as a word of an RFC 1624 eqn. 3 sum: the TTL's word one
# 0x0100 less adds ~0x0100 (the same 16 bits as check + htons(0x0100) with its carry).
TTL_DEC_WORDS = 0xFEFF


def too_big(pkt: Packet, mtu: int) -> Verdict | None:
    """The answer if ``pkt`` needs more than ``mtu`` bytes and may not be fragmented on
    the way (None: it goes on)."""
    if pkt.length <= mtu or pkt.skb_info & SKB_GSO:
        return None
    buf = pkt.buf
    if len(pkt.daddr) == 16:
        if pkt.protocol == IPPROTO_ICMPV6:
            return (DROP, "too_big")
        return (SEND, packet_too_big(buf, mtu))
    if buf[6] & _IP_DF and pkt.protocol != IPPROTO_ICMP:
        return (SEND, frag_needed(buf, mtu))
    return None


def ip_decrease_ttl(buf: bytearray) -> None:
    """ip_decrease_ttl (include/net/ip.h): the TTL of the IPv4 header at the start of
    ``buf`` less one, its checksum plus htons(0x0100) with the end-around carry."""
    check = (buf[_IP_CSUM] << 8 | buf[_IP_CSUM + 1]) + 0x0100
    check = (check + (check >= 0xFFFF)) & 0xFFFF
    buf[_IP_CSUM] = check >> 8
    buf[_IP_CSUM + 1] = check & 0xFF
    buf[_IP_TTL] -= 1


def decrement_ttl(pkt: Packet) -> Verdict | None:
    """decrement_ttl (net/netfilter/ipvs/ip_vs_xmit.c), which __ip_vs_get_out_rt and
    __ip_vs_get_out_rt_v6 call for every packet sent on a route that is not local:
    the TTL (ip_decrease_ttl) or hop limit less one, in place, or the answer when it
    was 1 or 0 (counted as IPSTATS_MIB_INHDRERRORS there): ICMP time exceeded
    (ICMP_EXC_TTL), none to an ICMP error being relayed (icmp_send answers no error
    with another)."""
    buf = pkt.buf
    if len(pkt.daddr) == 16:
        return decrement_hop_limit(pkt)
    if buf[_IP_TTL] > 1:
        ip_decrease_ttl(buf)
        return None
    if pkt.protocol == IPPROTO_ICMP:
        return (DROP, "ttl")
    return (SEND, ttl_exceeded(buf))


def decrement_hop_limit(pkt: Packet) -> Verdict | None:
    """decrement_ttl for IPv6 (ip_vs_xmit.c): the hop limit less one, in place, or the
    answer when it was 1 or 0: ICMPv6 time exceeded (hop limit), none to an ICMPv6
    error being relayed (icmpv6_send answers no error with another)."""
    buf = pkt.buf
    hlim = buf[_IP6_HLIM]
    if hlim > 1:
        buf[_IP6_HLIM] = hlim - 1
        return None
    if pkt.protocol == IPPROTO_ICMPV6:
        return (DROP, "hop_limit")
    return (SEND, hop_limit_exceeded(buf))


def out_route(conn: Conn, pkt: Packet, overhead: int = 0) -> Route | Verdict:
    """The prologue of the DR and TUN transmitters (__ip_vs_get_out_rt and
    __ip_vs_get_out_rt_v6): the route toward the real server, or the verdict when
    there is none (dropped as ``no_route``), when the packet's TTL or hop limit runs
    out (decrement_ttl), when a tunnel's route is narrower than its outer header allows
    (``overhead`` bytes of it: below 68 bytes toward an IPv4 real server, below
    IPV6_MIN_MTU toward an IPv6 one, dropped as ``tunnel_mtu``), or when the packet
    does not fit the path MTU less ``overhead`` (ensure_mtu_is_adequate; with the
    sysctl pmtu_disc off, an IPv4 packet into an IPv4 tunnel goes on to be fragmented:
    "If we're going to tunnel the packet and pmtu discovery is disabled, we'll just
    fragment it anyway".  Into an IPv6 tunnel it is still answered: the worker sends
    no IPv6 fragments)."""
    dest = conn.dest
    route = dest.route
    if route is None:
        return (DROP, "no_route")
    refused = decrement_ttl(pkt)
    if refused is not None:
        return refused
    mtu = dest.path_mtu(route) - overhead
    if overhead and mtu < (IPV6_MIN_MTU if len(dest.addr) == 16 else MIN_TUNNEL_MTU):
        return (DROP, "tunnel_mtu")
    if overhead and not dest.pmtu_disc and len(pkt.daddr) == 4 == len(dest.addr):
        return route
    return too_big(pkt, mtu) or route
