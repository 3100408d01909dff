"""VS/NAT (masquerading): ip_vs_nat_xmit and ip_vs_tcp/udp_dnat_handler/snat_handler.

Requests: the destination becomes the real server (address and port), the packet is
sent on by the director.  Replies, which come back through the director because it is
the real servers' gateway, get the VIP and virtual port back as their source.  The
buffer is rewritten in place and every checksum (IP header; TCP or UDP over the
pseudo-header) is adjusted incrementally (RFC 1624), never recomputed.

A reply whose transport checksum the kernel has not computed yet (NFQA_SKB_CSUMNOTREADY:
CHECKSUM_PARTIAL, the field holds the pseudo-header seed) gets the seed updated for the
new address as tcp_snat_handler's CHECKSUM_PARTIAL branch does (tcp_partial_csum_update;
the port is in the data the seed does not cover).  A GSO super-packet keeps that seed:
the kernel cuts it into segments and completes each one's checksum from the seed
(__udp_gso_segment; tcp4_gso_segment re-seeds it from the new addresses).  A small
packet does not keep it: a verdict with a payload makes the packet CHECKSUM_NONE
(nfqnl_mangle in net/netfilter/nfnetlink_queue.c), so nothing would complete it
downstream, and its checksum is completed here as skb_checksum_help would: the sum of
the transport header and data from the seed on, complemented, a zero sent as 0xFFFF.

IPv6 (ip_vs_nat_xmit_v6): no IP header checksum; the transport checksum follows the
16-byte address over the IPv6 pseudo-header (tcp_fast_csum_update / the partial seed
for AF_INET6), at the transport header the extension header chain ends at
(``Packet.l4``).  A UDP datagram without checksum gets a whole one, as
udp_dnat_handler / udp_snat_handler compute it for any family (a zero checksum is not
allowed over IPv6 anyway, RFC 8200 8.1).  The hop limit is decremented before the
packet is sent on, as __ip_vs_get_out_rt_v6's decrement_ttl does (a hop limit of 1
gets ICMPv6 time exceeded instead), and a packet larger than the way to the real
server gets ICMPv6 packet too big (__mtu_check_toobig_v6: IPv6 routers never
fragment; a GSO super-packet is cut into segments that fit).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from director.core.checksum import (
    ADDR6_MASK,
    adjust16,
    adjust32,
    adjust128,
    internet_checksum,
    ipv6_pseudo_sum,
    replace32_partial,
    replace128_partial,
    word_sum,
)
from director.core.packet import (
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    IPV6_HLEN,
    SKB_CSUMNOTREADY,
    SKB_GSO,
)
from director.core.xmit import ACCEPT, SEND, Verdict, Xmit, register
from director.core.xmit.mtu import (
    IP_DF,
    TTL_DEC_WORDS,
    decrement_hop_limit,
    decrement_ttl,
    too_big,
)

if TYPE_CHECKING:
    from director.core.conn import Conn
    from director.core.packet import IcmpError, Packet

_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
_IP_CSUM = 10
_TCP_CSUM = 16
_UDP_CSUM = 6


def rewrite(pkt: Packet, addr_at: int, port_at: int, new_addr: bytes, new_port: int) -> None:
    """Put ``new_addr``/``new_port`` at the given IP address and L4 port offsets.

    ``addr_at`` is 12 (source) or 16 (destination) in the IP header, ``port_at`` 0
    (source) or 2 (destination) in the transport header.
    """
    buf = pkt.buf
    l4 = pkt.l4
    if pkt.skb_info & SKB_CSUMNOTREADY:
        rewrite_partial(buf, pkt.protocol, l4, pkt.length, pkt.skb_info, addr_at, port_at,
                        new_addr, new_port)  # fmt: skip
        return
    old_addr = _U32.unpack_from(buf, addr_at)[0]
    new_addr_n = _U32.unpack(new_addr)[0]
    old_port = _U16.unpack_from(buf, l4 + port_at)[0]

    ip_csum = _U16.unpack_from(buf, _IP_CSUM)[0]
    _U16.pack_into(buf, _IP_CSUM, adjust32(ip_csum, old_addr, new_addr_n))
    buf[addr_at : addr_at + 4] = new_addr
    _U16.pack_into(buf, l4 + port_at, new_port)

    csum_at = l4 + (_UDP_CSUM if pkt.protocol == IPPROTO_UDP else _TCP_CSUM)
    csum = _U16.unpack_from(buf, csum_at)[0]
    if pkt.protocol == IPPROTO_UDP and csum == 0:
        return  # RFC 768: no checksum was sent, none to keep
    csum = adjust16(adjust32(csum, old_addr, new_addr_n), old_port, new_port)
    if pkt.protocol == IPPROTO_UDP and csum == 0:
        csum = 0xFFFF  # RFC 768: a computed zero is sent as all ones
    _U16.pack_into(buf, csum_at, csum)


def rewrite_partial(
    buf: bytearray,
    protocol: int,
    l4: int,
    length: int,
    skb_info: int,
    addr_at: int,
    port_at: int,
    new_addr: bytes,
    new_port: int,
) -> None:
    """``rewrite`` for a packet whose transport checksum is the kernel's partial seed
    (NFQA_SKB_CSUMNOTREADY): the seed follows the address (tcp_partial_csum_update),
    and a packet that is not GSO leaves with its checksum completed from it."""
    old = _U32.unpack_from(buf, addr_at)[0]
    new = _U32.unpack(new_addr)[0]
    _U16.pack_into(buf, _IP_CSUM, adjust32(_U16.unpack_from(buf, _IP_CSUM)[0], old, new))
    buf[addr_at : addr_at + 4] = new_addr
    _U16.pack_into(buf, l4 + port_at, new_port)
    csum_at = l4 + (_UDP_CSUM if protocol == IPPROTO_UDP else _TCP_CSUM)
    _U16.pack_into(buf, csum_at, replace32_partial(_U16.unpack_from(buf, csum_at)[0], old, new))
    if not skb_info & SKB_GSO:
        full = internet_checksum(memoryview(buf)[l4:length])
        _U16.pack_into(buf, csum_at, full or 0xFFFF)


def rewrite_fused(
    buf: bytearray, protocol: int, addr_at: int, port_at: int, old: int, new: int,
    ip_words: int = 0,
) -> None:  # fmt: skip
    """``rewrite`` for a packet with a 20-byte IP header whose address at ``addr_at``
    and port at ``port_at`` (counted from the start of the packet) are ``old``
    (address << 16 | port, as Conn keeps them), made ``new``, with one RFC 1624 sum
    per checksum over every word that changes: one's complement addition is
    associative, and folding the carries of the whole sum gives the same 16 bits as
    folding after each word, including the same choice between the two zeros
    (tests/core/test_fused.py checks it against ``rewrite`` and a full recompute).
    ``ip_words`` is the sum of further changes to the IP header's words alone (the
    TTL's: TTL_DEC_WORDS), folded in with the address's."""
    old_addr = old >> 16
    new_addr = new >> 16
    words = (
        (~old_addr >> 16 & 0xFFFF) + (~old_addr & 0xFFFF) + (new_addr >> 16) + (new_addr & 0xFFFF)
    )
    s = (~_U16.unpack_from(buf, _IP_CSUM)[0] & 0xFFFF) + words + ip_words
    s = (s & 0xFFFF) + (s >> 16)
    _U16.pack_into(buf, _IP_CSUM, ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF)
    _U32.pack_into(buf, addr_at, new_addr)
    _U16.pack_into(buf, port_at, new & 0xFFFF)
    csum_at = 20 + (_UDP_CSUM if protocol == IPPROTO_UDP else _TCP_CSUM)
    csum = _U16.unpack_from(buf, csum_at)[0]
    if protocol == IPPROTO_UDP and not csum:
        return  # RFC 768: no checksum was sent, none to keep
    s = (~csum & 0xFFFF) + words + (~old & 0xFFFF) + (new & 0xFFFF)
    s = (s & 0xFFFF) + (s >> 16)
    csum = ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF
    _U16.pack_into(buf, csum_at, csum if csum or protocol != IPPROTO_UDP else 0xFFFF)


# The IPv6 header's source and destination addresses, and its hop limit.
IP6_SADDR = 8
IP6_DADDR = 24
_IP6_HLIM = 7


def rewrite6(pkt: Packet, addr_at: int, port_at: int, new_addr: bytes, new_port: int) -> None:
    """``rewrite`` for IPv6: ``addr_at`` is IP6_SADDR or IP6_DADDR, ``port_at`` 0 or 2 in
    the transport header at ``pkt.l4``."""
    buf = pkt.buf
    l4 = pkt.l4
    old = int.from_bytes(buf[addr_at : addr_at + 16], "big")
    new = int.from_bytes(new_addr, "big")
    old_port = _U16.unpack_from(buf, l4 + port_at)[0]
    buf[addr_at : addr_at + 16] = new_addr
    _U16.pack_into(buf, l4 + port_at, new_port)
    udp = pkt.protocol == IPPROTO_UDP
    csum_at = l4 + (_UDP_CSUM if udp else _TCP_CSUM)
    csum = _U16.unpack_from(buf, csum_at)[0]
    if pkt.skb_info & SKB_CSUMNOTREADY:
        _partial6(buf, csum_at, csum, old, new, l4, pkt.length, pkt.skb_info)
        return
    if udp and not csum:
        csum = ipv6_pseudo_sum(buf, IPPROTO_UDP, l4, pkt.length)  # the field is 0 now
    else:
        csum = adjust16(adjust128(csum, old, new), old_port, new_port)
    _U16.pack_into(buf, csum_at, (csum or 0xFFFF) if udp else csum)


def _partial6(
    buf: bytearray, csum_at: int, seed: int, old: int, new: int, l4: int, length: int,
    skb_info: int,
) -> None:  # fmt: skip
    """The partial seed at ``csum_at`` follows the address (tcp_partial_csum_update for
    AF_INET6); a packet that is not GSO leaves with its checksum completed from it,
    as ``rewrite_partial`` has it for IPv4."""
    _U16.pack_into(buf, csum_at, replace128_partial(seed, old, new))
    if not skb_info & SKB_GSO:
        full = internet_checksum(memoryview(buf)[l4:length])
        _U16.pack_into(buf, csum_at, full or 0xFFFF)


def rewrite_fused6(
    buf: bytearray, protocol: int, addr_at: int, port_at: int, old: int, new: int
) -> None:
    """``rewrite_fused`` for an IPv6 packet without extension headers: the address at
    ``addr_at`` (IP6_SADDR or IP6_DADDR) and the port at ``port_at`` (40 or 42) are
    ``old`` (address << 16 | port, as Conn keeps them for IPv6), made ``new``, with one
    RFC 1624 sum over every word that changes (tests/core/test_fused6.py checks it
    against the general path).  A UDP datagram without checksum is not taken here."""
    old_addr = old >> 16
    new_addr = new >> 16
    csum_at = 40 + (_UDP_CSUM if protocol == IPPROTO_UDP else _TCP_CSUM)
    s = (
        (~_U16.unpack_from(buf, csum_at)[0] & 0xFFFF)
        + word_sum(~old_addr & ADDR6_MASK)
        + word_sum(new_addr)
        + (~old & 0xFFFF)
        + (new & 0xFFFF)
    )
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    csum = ~s & 0xFFFF
    _U16.pack_into(buf, csum_at, csum if csum or protocol != IPPROTO_UDP else 0xFFFF)
    buf[addr_at : addr_at + 16] = new_addr.to_bytes(16, "big")
    _U16.pack_into(buf, port_at, new & 0xFFFF)


def _icmp6_checksum(err: IcmpError) -> None:
    """ICMPv6's checksum covers the pseudo-header and the whole message: recomputed,
    as ip_vs_nat_icmp_v6 has it completed (CHECKSUM_PARTIAL over csum_ipv6_magic)."""
    buf = err.pkt.buf
    at = err.pkt.l4
    buf[at + 2 : at + 4] = b"\x00\x00"
    _U16.pack_into(buf, at + 2, ipv6_pseudo_sum(buf, IPPROTO_ICMPV6, at, err.pkt.length))


def _set_addr(buf: bytearray, at: int, new: bytes, header: int) -> None:
    """Put ``new`` at ``at`` and adjust the checksum of the IP header at ``header``."""
    old = _U32.unpack_from(buf, at)[0]
    csum = _U16.unpack_from(buf, header + _IP_CSUM)[0]
    _U16.pack_into(buf, header + _IP_CSUM, adjust32(csum, old, _U32.unpack(new)[0]))
    buf[at : at + 4] = new


def _icmp_checksum(err: IcmpError) -> None:
    """ICMP's checksum covers the whole message: recomputed, as ip_vs_nat_icmp does."""
    buf = err.pkt.buf
    at = err.pkt.l4
    buf[at + 2 : at + 4] = b"\x00\x00"
    _U16.pack_into(buf, at + 2, internet_checksum(memoryview(buf)[at : err.pkt.length]))


@register
class Masquerade(Xmit):
    name = "masq"
    nooutput = False
    families = frozenset((4, 6))

    def xmit_in(self, conn: Conn, pkt: Packet) -> Verdict:
        """ip_vs_nat_xmit: TTL (__ip_vs_get_out_rt's decrement_ttl), path MTU, then the
        destination rewritten.  An IPv4 packet with a 20-byte header and complete
        checksums that needs no answer is rewritten in one sum (``fused_in``: the
        same bytes, tests/core/test_golden_ttl.py and test_fused.py prove it)."""
        if pkt.l4 == 20 and not pkt.skb_info:
            verdict = self.fused_in(conn, pkt.buf, pkt.length)
            if verdict is not None:
                return verdict
        if len(pkt.daddr) == 16:
            return self._xmit_in6(conn, pkt)
        refused = decrement_ttl(pkt)
        route = conn.dest.route
        if refused is None and route is not None:
            refused = too_big(pkt, conn.dest.path_mtu(route))
        if refused is not None:
            return refused
        rewrite(pkt, 16, 2, conn.daddr, conn.dport)
        return (SEND, pkt.buf)

    def _xmit_in6(self, conn: Conn, pkt: Packet) -> Verdict:
        """ip_vs_nat_xmit_v6: hop limit, path MTU, then the destination rewritten (in
        one sum, ``fused_in6``, when no extension header comes first and the packet
        needs no answer nor a whole checksum)."""
        if pkt.l4 == IPV6_HLEN and not pkt.skb_info:
            verdict = self.fused_in6(conn, pkt.buf, pkt.length)
            if verdict is not None:
                return verdict
        refused = decrement_hop_limit(pkt)
        route = conn.dest.route
        if refused is None and route is not None:
            refused = too_big(pkt, conn.dest.path_mtu(route))
        if refused is not None:
            return refused
        rewrite6(pkt, IP6_DADDR, 2, conn.daddr, conn.dport)
        return (SEND, pkt.buf)

    def xmit_out(self, conn: Conn, pkt: Packet) -> Verdict:
        """handle_response (ip_vs_core.c): the source becomes the VIP.  The TTL is not
        IPVS's to touch here: a reply is forwarded by the kernel (ip_forward has taken
        its hop before the FORWARD hook), and handle_response only reroutes it.  An
        IPv4 packet with a 20-byte header and complete checksums is rewritten in one
        sum, as ``xmit_in`` has it."""
        if pkt.l4 == 20 and not pkt.skb_info:
            verdict = self.fused_out(conn, pkt.buf)
            if verdict is not None:
                return verdict
        if len(pkt.saddr) == 16:
            if pkt.l4 == IPV6_HLEN and not pkt.skb_info:
                verdict = self.fused_out6(conn, pkt.buf, 0)
                if verdict is not None:
                    return verdict
            rewrite6(pkt, IP6_SADDR, 0, conn.vaddr, conn.vport)
            return (ACCEPT, pkt.buf)
        rewrite(pkt, 12, 0, conn.vaddr, conn.vport)
        return (ACCEPT, pkt.buf)

    def fused_in(self, conn: Conn, buf: bytearray, length: int) -> Verdict | None:
        dest = conn.dest
        route = dest.route
        ttl = buf[8]
        if ttl <= 1 or (route is not None and length > dest.path_mtu(route) and buf[6] & IP_DF):
            return None
        buf[8] = ttl - 1  # decrement_ttl, its checksum change in the address's sum
        rewrite_fused(buf, buf[9], 16, 22, conn.vkey, conn.dkey, TTL_DEC_WORDS)
        return (SEND, buf)

    def fused_out(self, conn: Conn, buf: bytearray) -> Verdict | None:
        rewrite_fused(buf, buf[9], 12, 20, conn.dkey, conn.vkey)
        return (ACCEPT, buf)

    def fused_in6(self, conn: Conn, buf: bytearray, length: int) -> Verdict | None:
        """``_xmit_in6`` for the fused path: what needs an answer (a hop limit of 1, a
        packet too big) or a whole checksum (UDP without one) takes the general path."""
        protocol = buf[6]
        hlim = buf[_IP6_HLIM]
        if hlim <= 1 or (protocol == IPPROTO_UDP and not buf[46] | buf[47]):
            return None
        dest = conn.dest
        route = dest.route
        if route is not None and length > dest.path_mtu(route):
            return None
        buf[_IP6_HLIM] = hlim - 1
        rewrite_fused6(buf, protocol, IP6_DADDR, 42, conn.vkey, conn.dkey)
        return (SEND, buf)

    def fused_out6(self, conn: Conn, buf: bytearray, skb_info: int) -> Verdict | None:
        protocol = buf[6]
        if skb_info & SKB_CSUMNOTREADY:
            csum_at = 40 + (_UDP_CSUM if protocol == IPPROTO_UDP else _TCP_CSUM)
            old = conn.dkey >> 16
            seed = _U16.unpack_from(buf, csum_at)[0]
            buf[IP6_SADDR : IP6_SADDR + 16] = conn.vaddr
            _U16.pack_into(buf, 40, conn.vport)
            _partial6(buf, csum_at, seed, old, conn.vkey >> 16, 40, len(buf), skb_info)
            return (ACCEPT, buf)
        if protocol == IPPROTO_UDP and not buf[46] | buf[47]:
            return None
        rewrite_fused6(buf, protocol, IP6_SADDR, 40, conn.dkey, conn.vkey)
        return (ACCEPT, buf)

    def fused_out_partial(self, conn: Conn, buf: bytearray, skb_info: int) -> Verdict | None:
        rewrite_partial(buf, conn.protocol, 20, len(buf), skb_info, 12, 0, conn.vaddr,
                        conn.vport)  # fmt: skip
        return (ACCEPT, buf)

    def icmp_in(self, conn: Conn, err: IcmpError) -> Verdict:
        """ip_vs_nat_icmp, inward: the error about VIP:vport -> client is made about
        RIP:rport -> client and sent to the real server.  The quoted transport
        checksum is left alone, as the kernel leaves it.  The error's TTL or hop limit
        is decremented first (ip_vs_icmp_xmit's and ip_vs_icmp_xmit_v6's
        __ip_vs_get_out_rt: decrement_ttl); one that runs out is dropped unanswered.
        IPv6: ip_vs_nat_icmp_v6."""
        buf = err.pkt.buf
        refused = decrement_ttl(err.pkt)  # no error answers an error
        if refused is not None:
            return refused
        if len(err.pkt.daddr) == 16:
            buf[IP6_DADDR : IP6_DADDR + 16] = conn.daddr
            buf[err.inner + IP6_SADDR : err.inner + IP6_SADDR + 16] = conn.daddr
            _U16.pack_into(buf, err.inner_l4, conn.dport)
            _icmp6_checksum(err)
            return (SEND, buf)
        _set_addr(buf, 16, conn.daddr, 0)
        _set_addr(buf, err.inner + 12, conn.daddr, err.inner)
        _U16.pack_into(buf, err.inner_l4, conn.dport)
        _icmp_checksum(err)
        return (SEND, buf)

    def icmp_out(self, conn: Conn, err: IcmpError) -> Verdict:
        """ip_vs_nat_icmp, outward: the real server's error about client -> RIP:rport
        comes from the VIP, about client -> VIP:vport."""
        buf = err.pkt.buf
        if len(err.pkt.saddr) == 16:
            buf[IP6_SADDR : IP6_SADDR + 16] = conn.vaddr
            buf[err.inner + IP6_DADDR : err.inner + IP6_DADDR + 16] = conn.vaddr
            _U16.pack_into(buf, err.inner_l4 + 2, conn.vport)
            _icmp6_checksum(err)
            return (ACCEPT, buf)
        _set_addr(buf, 12, conn.vaddr, 0)
        _set_addr(buf, err.inner + 16, conn.vaddr, err.inner)
        _U16.pack_into(buf, err.inner_l4 + 2, conn.vport)
        _icmp_checksum(err)
        return (ACCEPT, buf)
