"""A view of one IPv4 packet: the header fields IPVS looks at, over a mutable buffer.

dpkt is the project's packet model: tests build and read packets with it, and crafted
packets (ICMP errors) are made with it.  The per-packet path does not call dpkt's
parser, though: ``dpkt.ip.IP(buf)`` costs about 6.5 us, while one precompiled
``struct.unpack_from`` over the same header layout costs 0.25 us (measured on the dev
machine), and the whole verdict budget is a few tens of microseconds.  The view keeps
the offsets so the transmitters can rewrite the buffer in place.

Mirrors what ``ip_vs_fill_iph_skb`` and the protocol ``conn_schedule`` hooks read.
"""

from __future__ import annotations

import struct

IPPROTO_ICMP = 1
IPPROTO_IPIP = 4
IPPROTO_TCP = 6
IPPROTO_UDP = 17

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


class PacketError(ValueError):
    """The packet cannot be handled; ``reason`` names the drop counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Packet:
    """Parsed IPv4 + TCP/UDP header fields and where they live in ``buf``.

    ``l4`` is the offset of the transport header (the IP header length, options
    included).  ``tcp_flags`` is 0 for UDP.  ``skb_info`` holds the queue's
    SKB_CSUMNOTREADY / SKB_GSO flags (0: a packet with complete checksums).
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
    """Read an IPv4 TCP or UDP packet; raise PacketError naming why it cannot be handled."""
    size = len(buf)
    if size < 20:
        raise PacketError("truncated")
    vihl, _tos, length, _id, frag, _ttl, protocol, _csum, saddr, daddr = _IP.unpack_from(buf)
    if vihl >> 4 != 4:
        raise PacketError("bad_version")
    ihl = (vihl & 0x0F) << 2
    if ihl < 20:
        raise PacketError("bad_header_length")
    if length < ihl or length > size:
        raise PacketError("bad_length")
    if frag & (_IP_MF | _IP_OFFMASK):
        raise PacketError("fragment")
    if protocol == IPPROTO_TCP:
        if length < ihl + 20:
            raise PacketError("truncated")
        sport, dport = _PORTS.unpack_from(buf, ihl)
        if buf[ihl + 12] >> 4 < 5:
            raise PacketError("bad_header_length")
        flags = buf[ihl + 13]
    elif protocol == IPPROTO_UDP:
        if length < ihl + 8:
            raise PacketError("truncated")
        sport, dport = _PORTS.unpack_from(buf, ihl)
        flags = 0
    else:
        raise PacketError("unhandled_protocol")
    if not sport or not dport:
        raise PacketError("zero_port")
    if length < size:
        del buf[length:]  # link-layer padding is not part of the packet
    return Packet(buf, protocol, saddr, daddr, sport, dport, ihl, length, flags, mark, skb_info)


# ICMP errors IPVS relays for a connection (ip_vs_in_icmp / ip_vs_out_icmp).
ICMP_DEST_UNREACH = 3
ICMP_SOURCE_QUENCH = 4
ICMP_TIME_EXCEEDED = 11
ICMP_ERRORS = frozenset((ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_TIME_EXCEEDED))


class IcmpError:
    """An ICMP error about a TCP or UDP packet: the outer packet (``pkt``, protocol
    ICMP, no ports) and the header it quotes (``inner`` and ``inner_l4`` offsets).

    An error about one of the director's own IPIP packets (VS/TUN) quotes the tunnel
    header and, inside it, the client's request: then ``tunnel_dst`` is the real
    server the tunnel went to and ``inner`` is the client's quoted request."""

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
    )

    def __init__(
        self, pkt: Packet, inner: int, inner_l4: int, tunnel_dst: bytes | None = None
    ) -> None:
        buf = pkt.buf
        self.pkt = pkt
        self.tunnel_dst = tunnel_dst
        self.inner = inner
        self.inner_l4 = inner_l4
        self.inner_protocol = buf[inner + 9]
        self.inner_saddr = bytes(buf[inner + 12 : inner + 16])
        self.inner_daddr = bytes(buf[inner + 16 : inner + 20])
        self.inner_sport, self.inner_dport = _PORTS.unpack_from(buf, inner_l4)


def parse_icmp_error(buf: bytearray, mark: int = 0) -> IcmpError | None:
    """Read an ICMP error about a TCP or UDP packet; None for any other ICMP message
    (echo and the like are the local stack's business); PacketError if malformed."""
    size = len(buf)
    if size < 20:
        raise PacketError("truncated")
    vihl, _tos, length, _id, frag, _ttl, protocol, _csum, saddr, daddr = _IP.unpack_from(buf)
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
    tunnel_dst = None
    if buf[inner + 9] == IPPROTO_IPIP:
        # ICMP for IPIP: look through the tunnel header to the client's request; a
        # quote too short to hold its ports is no use (RFC 792 asks only 8 bytes).
        tunnel_dst = bytes(buf[inner + 16 : inner + 20])
        inner = inner_l4
        inner_ihl = (buf[inner] & 0x0F) << 2
        inner_l4 = inner + inner_ihl
        if buf[inner] >> 4 != 4 or inner_ihl < 20 or length < inner_l4 + 8:
            return None
    if buf[inner + 9] not in (IPPROTO_TCP, IPPROTO_UDP):
        return None
    if length < size:
        del buf[length:]
    pkt = Packet(buf, protocol, saddr, daddr, 0, 0, ihl, length, 0, mark)
    return IcmpError(pkt, inner, inner_l4, tunnel_dst)
