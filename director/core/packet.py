"""A view of one IPv4 or IPv6 packet: the header fields IPVS looks at, over a mutable
buffer.

dpkt is the project's packet model: tests build and read packets with it, and crafted
packets (ICMP errors) are made with it.  The per-packet path does not call dpkt's
parser, though: ``dpkt.ip.IP(buf)`` costs about 6.5 us, while one precompiled
``struct.unpack_from`` over the same header layout costs 0.25 us (measured on the dev
machine), and the whole verdict budget is a few tens of microseconds.  The view keeps
the offsets so the transmitters can rewrite the buffer in place.

Mirrors what ``ip_vs_fill_iph_skb`` and the protocol ``conn_schedule`` hooks read.  The
version nibble is looked at once: an IPv4 packet takes the path it always took, an IPv6
one has its extension headers walked to the transport header as ipv6_find_hdr
(net/ipv6/exthdrs_core.c) walks them for ip_vs_fill_iph_skb_off (include/net/ip_vs.h).
"""

from __future__ import annotations

import struct

IPPROTO_ICMP = 1
IPPROTO_IPIP = 4
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_IPV6 = 41  # IPv6 in IPv6 (or in IPv4): VS/TUN's encapsulation
IPPROTO_GRE = 47
IPPROTO_ICMPV6 = 58
# VS/TUN's GUE and GRE tunnels as an ICMP error quotes them (ipvs_udp_decap,
# ipvs_gre_decap): GRE's protocol types, and its flags other than C (version 0 too).
_GRE_PROTOCOLS = {0x0800: IPPROTO_IPIP, 0x86DD: IPPROTO_IPV6}
_GRE_NOT_C = 0x7FFF

# IPv6 extension headers (NEXTHDR_*, include/net/ipv6.h) and how ipv6_find_hdr sizes
# each: ipv6_optlen, (hdrlen + 1) * 8 bytes; ipv6_authlen, (hdrlen + 2) * 4 bytes; the
# fragment header, 8.  NEXTHDR_NONE ends the chain with no transport header at all.
NEXTHDR_HOP = 0
NEXTHDR_ROUTING = 43
NEXTHDR_FRAGMENT = 44
NEXTHDR_AUTH = 51
NEXTHDR_NONE = 59
NEXTHDR_DEST = 60
_EXT_HEADERS = frozenset((NEXTHDR_HOP, NEXTHDR_ROUTING, NEXTHDR_FRAGMENT, NEXTHDR_AUTH,
                          NEXTHDR_DEST))  # fmt: skip
IPV6_HLEN = 40

TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
TH_ACK = 0x10

# NFQA_SKB_INFO (linux/netfilter/nfnetlink_queue.h), as the queue tells them: the
# transport checksum is the kernel's partial seed (the skb is CHECKSUM_PARTIAL), and
# the packet is a GSO super-packet the kernel cuts into segments on output.
SKB_CSUMNOTREADY = 1 << 0
SKB_GSO = 1 << 1

_IP = struct.Struct("!BBHHHBBH4s4s")  # version/ihl, tos, len, id, frag, ttl, proto, csum, src, dst
_PORTS = struct.Struct("!HH")
_IP_MF = 0x2000
_IP_OFFMASK = 0x1FFF
# version/class/flow label, payload length, next header, hop limit, source, destination
_IP6 = struct.Struct("!IHBB16s16s")
# The fragment header's 13-bit offset (the top bits) and M flag (the lowest bit).
_IP6_FRAG = 0xFFF9
_IP6_OFFSET = 0xFFF8


class PacketError(ValueError):
    """The packet cannot be handled; ``reason`` names the drop counter."""

    def __init__(self, reason: str, icmp: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.icmp = icmp  # unhandled_protocol: the family's ICMP (the error path's)


class Packet:
    """Parsed IPv4 or IPv6 + TCP/UDP header fields and where they live in ``buf``.

    ``l4`` is the offset of the transport header (the IP header length, options
    included; for IPv6 where the extension header chain ends, so NAT rewrites the
    transport header there and the IPv6 header's addresses at 8 and 24).  The
    addresses are 4 bytes long for IPv4, 16 for IPv6.  ``tcp_flags`` is 0 for UDP.
    ``skb_info`` holds the queue's SKB_CSUMNOTREADY / SKB_GSO flags (0: a packet with
    complete checksums).
    """

    __slots__ = (
        "buf",
        "daddr",
        "dport",
        "l4",
        "length",
        "mark",
        "protocol",
        "saddr",
        "skb_info",
        "sport",
        "tcp_flags",
    )

    def __init__(
        self,
        buf: bytearray,
        protocol: int,
        saddr: bytes,
        daddr: bytes,
        sport: int,
        dport: int,
        l4: int,
        length: int,
        tcp_flags: int = 0,
        mark: int = 0,
        skb_info: int = 0,
    ) -> None:
        self.buf = buf
        self.protocol = protocol
        self.saddr = saddr
        self.daddr = daddr
        self.sport = sport
        self.dport = dport
        self.l4 = l4
        self.length = length
        self.tcp_flags = tcp_flags
        self.mark = mark
        self.skb_info = skb_info


def parse(buf: bytearray, mark: int = 0, skb_info: int = 0) -> Packet:
    """Read an IPv4 or IPv6 TCP or UDP packet; raise PacketError naming why it cannot
    be handled."""
    size = len(buf)
    if size < 20:
        raise PacketError("truncated")
    vihl, _tos, length, _id, frag, _ttl, protocol, _csum, saddr, daddr = _IP.unpack_from(buf)
    if vihl >> 4 != 4:
        if vihl >> 4 == 6:
            return parse6(buf, mark, skb_info)
        raise PacketError("bad_version")
    ihl = (vihl & 0x0F) << 2
    if ihl < 20:
        raise PacketError("bad_header_length")
    if length < ihl or length > size:
        raise PacketError("bad_length")
    if frag & (_IP_MF | _IP_OFFMASK):
        raise PacketError("fragment")
    return _transport(buf, protocol, saddr, daddr, ihl, length, mark, skb_info, IPPROTO_ICMP)


def parse_plain4(
    buf: bytearray, protocol: int, saddr: int, daddr: int, sport: int, dport: int, mark: int = 0
) -> Packet | None:
    """``parse`` of an IPv4 packet whose fixed header the fused paths have read already
    and found plain: version 4 with no options (a 20-byte header), a total length that
    is the buffer's, not a fragment; the addresses come as integers.  The Packet
    ``parse`` makes of it, or None where ``parse`` would raise (a truncated TCP header,
    a short data offset, a zero port, a protocol not TCP or UDP): the caller parses
    then, for the error."""
    length = len(buf)
    if protocol == IPPROTO_TCP:
        if length < 40 or buf[32] < 0x50:  # the data offset's 5 words, in the high nibble
            return None
        flags = buf[33]
    elif protocol == IPPROTO_UDP:
        if length < 28:
            return None
        flags = 0
    else:
        return None
    if not sport or not dport:
        return None
    return Packet(
        buf, protocol, saddr.to_bytes(4, "big"), daddr.to_bytes(4, "big"), sport, dport, 20,
        length, flags, mark,
    )  # fmt: skip


def ipv6_length(buf: bytearray, skb_info: int = 0) -> int:
    """The length of the IPv6 packet in ``buf`` (its fixed header read by the caller
    to be there): 40 plus the payload length.  A payload length of 0 is a GSO
    super-packet beyond 64 KiB (BIG TCP; ipv6_payload_len takes the skb's length
    then); any other packet with it is refused."""
    plen = buf[4] << 8 | buf[5]
    if not plen and skb_info & SKB_GSO:
        return len(buf)
    length = IPV6_HLEN + plen
    if length > len(buf) or not plen:
        raise PacketError("bad_length")
    return length


def find_hdr(
    buf: bytearray, at: int, nexthdr: int, end: int, quoted: bool = False
) -> tuple[int, int, bool]:
    """ipv6_find_hdr with target -1: walk the extension headers from ``at`` (the next
    header ``nexthdr`` starts there) within ``end``; the transport protocol, the
    offset of its header and whether a fragment header was met (IP6_FH_F_FRAG).

    Hop-by-hop, routing (segments left or not: no IP6_FH_F_SKIP_RH), destination
    options and authentication headers are stepped over, as is the fragment header
    of an atomic fragment (offset 0, no more fragments: RFC 6946).  A later fragment
    has no transport header (ipv6_find_hdr's fragoff): PacketError ``fragment``, and
    so has a first one here, as for IPv4, since the rest of its datagram could not
    follow it; in a ``quoted`` header (an ICMP error's) a first fragment has its
    ports and is walked through.  A header that runs past ``end`` is
    ``bad_exthdr``."""
    frag = False
    while nexthdr in _EXT_HEADERS:
        if at + 8 > end:
            raise PacketError("bad_exthdr")
        if nexthdr == NEXTHDR_FRAGMENT:
            if (buf[at + 2] << 8 | buf[at + 3]) & (_IP6_OFFSET if quoted else _IP6_FRAG):
                raise PacketError("fragment")
            frag = True
            nexthdr = buf[at]
            at += 8
            continue
        size = (buf[at + 1] + 2) << 2 if nexthdr == NEXTHDR_AUTH else (buf[at + 1] + 1) << 3
        if at + size > end:
            raise PacketError("bad_exthdr")
        nexthdr = buf[at]
        at += size
    return nexthdr, at, frag


def parse6(buf: bytearray, mark: int = 0, skb_info: int = 0) -> Packet:
    """``parse`` for an IPv6 packet (version nibble 6)."""
    if len(buf) < IPV6_HLEN:
        raise PacketError("truncated")
    _vtf, _plen, nexthdr, _hlim, saddr, daddr = _IP6.unpack_from(buf)
    length = ipv6_length(buf, skb_info)
    protocol, l4, _frag = find_hdr(buf, IPV6_HLEN, nexthdr, length)
    return _transport(buf, protocol, saddr, daddr, l4, length, mark, skb_info, IPPROTO_ICMPV6)


def _transport(
    buf: bytearray,
    protocol: int,
    saddr: bytes,
    daddr: bytes,
    l4: int,
    length: int,
    mark: int,
    skb_info: int,
    icmp: int,
) -> Packet:
    """The TCP or UDP header at ``l4`` of a packet of ``length`` bytes, IPv4 or IPv6
    (``icmp``: the family's ICMP protocol, whose messages are the ICMP handlers')."""
    if protocol == IPPROTO_TCP:
        if length < l4 + 20:
            raise PacketError("truncated")
        sport, dport = _PORTS.unpack_from(buf, l4)
        if buf[l4 + 12] >> 4 < 5:
            raise PacketError("bad_header_length")
        flags = buf[l4 + 13]
    elif protocol == IPPROTO_UDP:
        if length < l4 + 8:
            raise PacketError("truncated")
        sport, dport = _PORTS.unpack_from(buf, l4)
        flags = 0
    else:
        raise PacketError("unhandled_protocol", protocol == icmp)
    if not sport or not dport:
        raise PacketError("zero_port")
    if length < len(buf):
        del buf[length:]  # link-layer padding is not part of the packet
    return Packet(buf, protocol, saddr, daddr, sport, dport, l4, length, flags, mark, skb_info)


# ICMP errors IPVS relays for a connection (ip_vs_in_icmp / ip_vs_out_icmp).
ICMP_DEST_UNREACH = 3
ICMP_SOURCE_QUENCH = 4
ICMP_TIME_EXCEEDED = 11
ICMP_ERRORS = frozenset((ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_TIME_EXCEEDED))


ICMPV6_INFOMSG_MASK = 0x80  # ICMPv6 types from 128 on are informational (RFC 4443 2.1)


class IcmpError:
    """An ICMP or ICMPv6 error about a TCP or UDP packet: the outer packet (``pkt``,
    protocol ICMP or ICMPv6, no ports; ``pkt.l4`` is the ICMP header) and the header
    it quotes (``inner`` and ``inner_l4`` offsets).

    An error about one of the director's own tunnelled packets (VS/TUN) quotes the
    tunnel header and, inside it, the client's request: then ``tunnel_dst`` is the real
    server the tunnel went to and ``inner`` is the client's quoted request.  The
    tunnel and the request need not be of one family (IPv4 in IPv6 and the reverse).
    ``tunnel_type`` says which tunnel ("ipip", "gue" or "gre"), ``tunnel_port`` GUE's
    UDP destination port and ``tunnel_ulen`` the UDP and GUE or GRE header's length
    (ip_vs_in_icmp's ``ulen``)."""

    __slots__ = (
        "inner",
        "inner_daddr",
        "inner_dport",
        "inner_l4",
        "inner_protocol",
        "inner_saddr",
        "inner_sport",
        "pkt",
        "tunnel_dst",
        "tunnel_port",
        "tunnel_type",
        "tunnel_ulen",
    )

    def __init__(
        self,
        pkt: Packet,
        inner: int,
        inner_l4: int,
        tunnel_dst: bytes | None = None,
        inner_protocol: int | None = None,
        tunnel: tuple[str, int, int] = ("ipip", 0, 0),
    ) -> None:
        buf = pkt.buf
        self.pkt = pkt
        self.tunnel_dst = tunnel_dst
        self.tunnel_type, self.tunnel_port, self.tunnel_ulen = tunnel
        self.inner = inner
        self.inner_l4 = inner_l4
        if buf[inner] >> 4 == 6:
            self.inner_saddr = bytes(buf[inner + 8 : inner + 24])
            self.inner_daddr = bytes(buf[inner + 24 : inner + 40])
        else:
            self.inner_saddr = bytes(buf[inner + 12 : inner + 16])
            self.inner_daddr = bytes(buf[inner + 16 : inner + 20])
        self.inner_protocol = buf[inner + 9] if inner_protocol is None else inner_protocol
        self.inner_sport, self.inner_dport = _PORTS.unpack_from(buf, inner_l4)


def _quoted(buf: bytearray, at: int, end: int) -> tuple[int, int] | None:
    """The protocol and transport header offset of the IPv4 or IPv6 header quoted at
    ``at`` (``end``: where the quote ends), or None where ip_vs_fill_iph_skb_icmp
    would fail or the quote is of a later fragment (no ports in it)."""
    if at + 20 > end:
        return None
    version = buf[at] >> 4
    if version == 4:
        ihl = (buf[at] & 0x0F) << 2
        return (buf[at + 9], at + ihl) if ihl >= 20 else None
    if version != 6 or at + IPV6_HLEN > end:
        return None
    try:
        protocol, l4, _frag = find_hdr(buf, at + IPV6_HLEN, buf[at + 6], end, quoted=True)
    except PacketError:
        return None
    return protocol, l4


def _tunnel_quote(
    buf: bytearray, protocol: int, at: int, end: int
) -> tuple[str, int, int, int] | None:
    """The GUE or GRE tunnel header a quote of protocol UDP or GRE holds at ``at``, as
    ipvs_udp_decap and ipvs_gre_decap read it: (type, GUE's port, header length, inner
    protocol 4 or 41), or None when it is not one (GUE version 0 and C 0, its
    proto_ctype 4 or 41; GRE with no flag but C, protocol type IPv4 or IPv6).  The
    kernel takes only an IPv4 client's packet inside; here IPv6 ones too, as for IPIP."""
    if protocol == IPPROTO_UDP:
        if end < at + 12 or buf[at + 8] >> 5 or buf[at + 9] not in (IPPROTO_IPIP, IPPROTO_IPV6):
            return None
        port = buf[at + 2] << 8 | buf[at + 3]
        return ("gue", port, 12 + 4 * (buf[at + 8] & 0x1F), buf[at + 9])
    if protocol == IPPROTO_GRE and end >= at + 4:
        flags, ethertype = _PORTS.unpack_from(buf, at)
        if flags & _GRE_NOT_C or ethertype not in _GRE_PROTOCOLS:
            return None
        return ("gre", 0, 8 if flags else 4, _GRE_PROTOCOLS[ethertype])
    return None


def _through_tunnel(
    buf: bytearray, inner: int, inner_l4: int, inner_protocol: int, end: int, tunnels: bool
) -> tuple[int, int, int, bytes | None, tuple[str, int, int]] | None:
    """An ICMP error's quote of one of VS/TUN's packets (IPIP, IPv6 in IPv6 or across
    families, GUE or GRE: the quoted header at ``inner`` of protocol ``inner_protocol``,
    its payload at ``inner_l4``) looked through to the client's request inside, as
    ip_vs_in_icmp does for IPIP: (the request's header offset, its transport offset,
    its protocol, the real server the tunnel went to, (tunnel type, GUE port, tunnel
    header length)); any other quote as it is, with no real server.  None where the
    request inside cannot be read or is too short to hold its ports (RFC 792 asks only
    8 bytes of a quote)."""
    tunnel = ("ipip", 0, 0)
    found = _tunnel_quote(buf, inner_protocol, inner_l4, end) if tunnels else None
    if found is not None:
        tunnel, inner_protocol = found[:3], found[3]
    if inner_protocol not in (IPPROTO_IPIP, IPPROTO_IPV6):
        return inner, inner_l4, inner_protocol, None, tunnel
    if buf[inner] >> 4 == 4:
        tunnel_dst = bytes(buf[inner + 16 : inner + 20])
    else:
        tunnel_dst = bytes(buf[inner + 24 : inner + 40])
    inner = inner_l4 + tunnel[2]
    quoted = _quoted(buf, inner, end)
    if quoted is None or (buf[inner] >> 4 == 4) != (inner_protocol == IPPROTO_IPIP):
        return None
    inner_protocol, inner_l4 = quoted
    if end < inner_l4 + 8:
        return None
    return inner, inner_l4, inner_protocol, tunnel_dst, tunnel


def parse_icmp_error(buf: bytearray, mark: int = 0, tunnels: bool = True) -> IcmpError | None:
    """Read an ICMP error about a TCP or UDP packet; None for any other ICMP message
    (echo and the like are the local stack's business); PacketError if malformed.
    With ``tunnels``, a quoted UDP or GRE packet that holds a GUE or GRE header is read
    as one of VS/TUN's (the engine reads it again without when no tunnel matches)."""
    size = len(buf)
    if size < 20:
        raise PacketError("truncated")
    vihl, _tos, length, _id, frag, _ttl, protocol, _csum, saddr, daddr = _IP.unpack_from(buf)
    if vihl >> 4 == 6:
        return parse_icmp6_error(buf, mark, tunnels)
    ihl = (vihl & 0x0F) << 2
    if vihl >> 4 != 4 or ihl < 20 or length < ihl or length > size:
        raise PacketError("bad_length" if vihl >> 4 == 4 and ihl >= 20 else "bad_header_length")
    if frag & (_IP_MF | _IP_OFFMASK):
        raise PacketError("fragment")
    if protocol != IPPROTO_ICMP or length < ihl + 8 or buf[ihl] not in ICMP_ERRORS:
        return None
    inner = ihl + 8
    if length < inner + 20:
        raise PacketError("icmp_truncated")
    inner_ihl = (buf[inner] & 0x0F) << 2
    inner_l4 = inner + inner_ihl
    if buf[inner] >> 4 != 4 or inner_ihl < 20 or length < inner_l4 + 8:
        raise PacketError("icmp_truncated")
    through = _through_tunnel(buf, inner, inner_l4, buf[inner + 9], length, tunnels)
    if through is None:
        return None
    inner, inner_l4, inner_protocol, tunnel_dst, tunnel = through
    if inner_protocol not in (IPPROTO_TCP, IPPROTO_UDP):
        return None
    if length < size:
        del buf[length:]
    pkt = Packet(buf, protocol, saddr, daddr, 0, 0, ihl, length, 0, mark)
    return IcmpError(pkt, inner, inner_l4, tunnel_dst, inner_protocol, tunnel)


def parse_icmp6_error(buf: bytearray, mark: int = 0, tunnels: bool = True) -> IcmpError | None:
    """``parse_icmp_error`` for ICMPv6, as ip_vs_in_icmp_v6 / ip_vs_out_icmp_v6 read
    it: every error type (the types below 128: destination unreachable, packet too
    big, time exceeded, parameter problem), informational messages being None; an
    error behind a fragment header is refused (``fragment``: errors are never
    fragmented); the quoted IPv6 header's extension headers are walked to its ports.
    A quoted IPv6-in-IPv6 (or IPv4-in-IPv6) header is one of VS/TUN's packets: looked
    through to the client's request inside, as ip_vs_in_icmp does for IPIP."""
    if len(buf) < IPV6_HLEN:
        raise PacketError("truncated")
    _vtf, _plen, nexthdr, _hlim, saddr, daddr = _IP6.unpack_from(buf)
    length = ipv6_length(buf)
    protocol, l4, frag = find_hdr(buf, IPV6_HLEN, nexthdr, length)
    if protocol != IPPROTO_ICMPV6:
        return None
    if length < l4 + 8:
        raise PacketError("icmp_truncated")
    if buf[l4] & ICMPV6_INFOMSG_MASK:
        return None
    if frag:
        raise PacketError("fragment")
    inner = l4 + 8
    if length < inner + IPV6_HLEN or buf[inner] >> 4 != 6:
        raise PacketError("icmp_truncated")
    quoted = _quoted(buf, inner, length)
    if quoted is None:
        return None
    through = _through_tunnel(buf, inner, quoted[1], quoted[0], length, tunnels)
    if through is None:
        return None
    inner, inner_l4, inner_protocol, tunnel_dst, tunnel = through
    if inner_protocol not in (IPPROTO_TCP, IPPROTO_UDP):
        return None
    if length < inner_l4 + 8:
        raise PacketError("icmp_truncated")
    if length < len(buf):
        del buf[length:]
    pkt = Packet(buf, IPPROTO_ICMPV6, saddr, daddr, 0, 0, l4, length, 0, mark)
    return IcmpError(pkt, inner, inner_l4, tunnel_dst, inner_protocol, tunnel)
