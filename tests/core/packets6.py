"""IPv6 packet builders for the core tests, made with dpkt (dpkt.ip6), as packets.py
makes IPv4 ones: dpkt computes every checksum itself over the IPv6 pseudo-header, so
packets built here are an independent oracle for the in-place rewrites.

Addresses are of 2001:db8::/32 (SPEC section 3).  Extension headers are given as
(next header number, bytes) pairs made by the helpers below; the builder chains them
(each one's first byte names the next) between the fixed header and the transport
header.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

import dpkt

CLIENT6 = "2001:db8:3::a"
VIP6 = "2001:db8:1::100"
RS6_1 = "2001:db8:2::2"
RS6_2 = "2001:db8:2::3"
ROUTER6 = "2001:db8:3::1"

HOP, ROUTING, FRAGMENT, AUTH, NONE, DEST = 0, 43, 44, 51, 59, 60

Ext = tuple[int, bytes]


def a6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def options(kind: int, size: int = 8) -> Ext:
    """A hop-by-hop (HOP) or destination options (DEST) header of ``size`` bytes padded
    with Pad1 options (RFC 8200 4.2)."""
    return (kind, bytes((0, size // 8 - 1)) + bytes(size - 2))


def routing(segments_left: int = 0, size: int = 24) -> Ext:
    """A routing header (type 4, segment routing) of ``size`` bytes."""
    return (ROUTING, bytes((0, size // 8 - 1, 4, segments_left)) + bytes(size - 4))


def fragment(offset: int = 0, more: bool = False, ident: int = 0x12345678) -> Ext:
    """A fragment header: ``offset`` in 8-byte units, the M flag."""
    return (FRAGMENT, struct.pack("!BBHI", 0, 0, offset << 3 | more, ident))


def auth(words: int = 4) -> Ext:
    """An authentication header of (words + 2) * 4 bytes (RFC 4302)."""
    size = (words + 2) * 4
    return (AUTH, bytes((0, words)) + bytes(size - 2))


def ip6(
    src: str,
    dst: str,
    payload: dpkt.Packet | bytes,
    proto: int,
    ext: Sequence[Ext] = (),
    hlim: int = 61,
    flow: int = 0x12345,
) -> bytearray:
    """An IPv6 packet of ``payload`` (next header ``proto``), its checksum computed by
    dpkt when it has one, behind the extension headers ``ext``."""
    if isinstance(payload, dpkt.udp.UDP):
        payload.ulen = len(payload)
    packet = dpkt.ip6.IP6(
        src=a6(src), dst=a6(dst), nxt=proto, hlim=hlim, plen=len(payload), data=payload
    )
    packet.flow = flow
    raw = bytearray(bytes(packet))
    if not ext:
        return raw
    chain = bytearray()
    kinds = [kind for kind, _ in ext] + [proto]
    for (_kind, body), following in zip(ext, kinds[1:], strict=True):
        chain += bytes((following,)) + body[1:]
    raw[6] = kinds[0]
    raw[4:6] = (len(raw) - 40 + len(chain)).to_bytes(2, "big")
    return raw[:40] + chain + raw[40:]


def tcp6(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    flags: int = dpkt.tcp.TH_ACK,
    data: bytes = b"",
    ext: Sequence[Ext] = (),
    hlim: int = 61,
) -> bytearray:
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=2000, data=data)
    return ip6(src, dst, seg, dpkt.ip.IP_PROTO_TCP, ext, hlim)


def udp6(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    data: bytes = b"",
    ext: Sequence[Ext] = (),
    hlim: int = 61,
    csum: bool = True,
) -> bytearray:
    raw = ip6(src, dst, dpkt.udp.UDP(sport=sport, dport=dport, data=data), 17, ext, hlim)
    if not csum:
        at = len(raw) - 8 - len(data) + 6
        raw[at : at + 2] = b"\x00\x00"
    return raw


def icmp6(
    src: str,
    dst: str,
    type_: int,
    code: int,
    quoted: bytes,
    info: int = 0,
    hlim: int = 50,
    flow: int = 0x12345,
) -> bytearray:
    """An ICMPv6 error quoting ``quoted`` (its checksum by dpkt, over the pseudo-header).
    The director's own errors have hop limit 64 and flow label 0."""
    message = dpkt.icmp6.ICMP6(type=type_, code=code, data=struct.pack("!I", info) + quoted)
    return ip6(src, dst, message, dpkt.ip.IP_PROTO_ICMP6, hlim=hlim, flow=flow)


def recomputed(raw: bytes | bytearray, l4: int = 40, proto: int | None = None) -> bytes:
    """The same IPv6 packet with its transport (or ICMPv6) checksum computed from
    scratch by dpkt; ``l4``: where the transport header of ``proto`` starts, behind
    extension headers, which dpkt is shown without (the pseudo-header does not cover
    them)."""
    bare = bytearray(raw[:40]) + raw[l4:]
    if proto is not None:
        bare[6] = proto
    bare[4:6] = (len(bare) - 40).to_bytes(2, "big")
    packet = dpkt.ip6.IP6(bytes(bare))
    packet.data.sum = 0
    return bytes(raw[:l4]) + bytes(packet)[40:]
