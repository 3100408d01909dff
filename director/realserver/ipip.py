"""IPIP decapsulation (RFC 2003) for a real server whose kernel has no ``ipip`` module,
and the IPv6 tunnels (RFC 2473 IPv6-in-IPv6 and IPv4-in-IPv6, RFC 4213 IPv6-in-IPv4)
for one that has no ``ip6_tunnel`` or ``sit`` either.

The director's VS/TUN transmitter wraps the client's packet in an outer IPv4 header
(protocol 4) addressed to the real server.  The kernel's ``ipip`` driver would strip
it and hand the inner packet to the stack as if it had arrived on ``tunl0``; the
userspace decapsulator does the same through a TUN device, and this module is its
pure part: bytes in, inner packet or a refusal reason out.  It never raises on what
the wire brings.

What it refuses, as the kernel's ``ipip_rcv``/``ip_tunnel_rcv`` would (or stricter,
since a userspace relay must not become an open one):

* an outer header that is not IPv4, is short, or whose lengths disagree;
* an outer protocol other than 4, or a fragment (the kernel reassembles before a
  raw socket sees the packet, so one here is malformed);
* an inner packet that is not a whole IPv4 packet;
* an inner destination that is not one of the host's VIPs (only VIP traffic is
  injected, so the decapsulator cannot be used to reach anything else);
* RFC 6040's one forbidden combination: outer ECN CE over a Not-ECT inner packet.

ECN follows RFC 6040 §4.2 (normal mode, as ``INET_ECN_decapsulate``): outer CE over
an ECT inner packet marks the inner one CE, with the header checksum adjusted
incrementally (RFC 1624); an inner IPv6 packet's ECN is in its traffic class (RFC 8200
§7), which has no checksum.

The outer header says what is inside: protocol or next header 4 an IPv4 packet, 41 an
IPv6 one (IPPROTO_IPV6).  ``decapsulate`` takes an IPv4 outer header (a raw IPv4
socket returns it); an IPv6 one never reaches userspace (a raw IPv6 socket returns the
payload alone, the kernel having checked and reassembled it), so ``decapsulate6``
takes the payload, its next header and the outer traffic class (IPV6_RECVTCLASS).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from director.core.checksum import adjust16

IPPROTO_IPIP = 4
IPPROTO_IPV6 = 41
IPV4_MIN_HEADER = 20
IPV6_HEADER = 40
ECN_MASK = 0x03
ECN_NOT_ECT = 0x00
ECN_CE = 0x03
_FRAGMENT_MASK = 0x3FFF  # MF flag and fragment offset
_HEAD = struct.Struct("!BBHHHBBH4s4s")


class Refusal(enum.Enum):
    """Why a received packet was not decapsulated (a counter name each)."""

    SHORT = "short"
    OUTER_NOT_IPV4 = "outer-not-ipv4"
    OUTER_BAD_LENGTH = "outer-bad-length"
    NOT_IPIP = "not-ipip"
    FRAGMENT = "fragment"
    INNER_NOT_IPV4 = "inner-not-ipv4"
    INNER_NOT_IPV6 = "inner-not-ipv6"
    INNER_BAD_LENGTH = "inner-bad-length"
    NOT_A_VIP = "not-a-vip"
    ECN_CE_ON_NOT_ECT = "ecn-ce-on-not-ect"


@dataclass(frozen=True, slots=True)
class Inner:
    """The decapsulated packet, ready to be written to the TUN device."""

    packet: bytes | memoryview


def vip_set(vips: Iterable[str]) -> frozenset[bytes]:
    """The VIPs as the packed addresses (4 or 16 bytes) destinations are compared with."""
    return frozenset(ipaddress.ip_address(v).packed for v in vips)


def ipv4_header(buf: memoryview) -> tuple[int, int, int, int, bytes] | Refusal:
    """(header length, total length, fragment field, protocol, destination) or why not."""
    if len(buf) < IPV4_MIN_HEADER:
        return Refusal.SHORT
    ver_ihl, _tos, total, _ident, frag, _ttl, proto, _csum, _src, dst = _HEAD.unpack_from(buf)
    if ver_ihl >> 4 != 4:
        return Refusal.OUTER_NOT_IPV4
    ihl = (ver_ihl & 0x0F) * 4
    if ihl < IPV4_MIN_HEADER or total < ihl or total > len(buf):
        return Refusal.OUTER_BAD_LENGTH
    return ihl, total, frag, proto, dst


def decapsulate(data: bytes | bytearray | memoryview, vips: frozenset[bytes]) -> Inner | Refusal:
    """Strip the outer IPv4 header of an IPIP (or IPv6-in-IPv4) packet; check and
    return the inner one.

    ``data`` is what a raw IPv4 socket of protocol 4 or 41 returns: the outer header
    included.  The result is a view into ``data`` when the inner packet is passed on
    unchanged.
    """
    buf = memoryview(data)
    outer = ipv4_header(buf)
    if isinstance(outer, Refusal):
        return outer
    ihl, total, frag, proto, _dst = outer
    if proto not in (IPPROTO_IPIP, IPPROTO_IPV6):
        return Refusal.NOT_IPIP
    if frag & _FRAGMENT_MASK:
        return Refusal.FRAGMENT
    return check_inner(buf[ihl:total], proto, buf[1] & ECN_MASK, vips)


def decapsulate6(
    payload: bytes | bytearray | memoryview, next_header: int, tclass: int, vips: frozenset[bytes]
) -> Inner | Refusal:
    """Check and return the packet an IPv6 tunnel carried: ``payload`` what a raw IPv6
    socket of protocol ``next_header`` (4 or 41) returned, ``tclass`` the outer header's
    traffic class."""
    if next_header not in (IPPROTO_IPIP, IPPROTO_IPV6):
        return Refusal.NOT_IPIP
    return check_inner(memoryview(payload), next_header, tclass & ECN_MASK, vips)


def check_inner(
    inner_buf: memoryview, proto: int, outer_ecn: int, vips: frozenset[bytes]
) -> Inner | Refusal:
    """The inner packet of protocol ``proto`` checked: whole, to a VIP; ECN applied."""
    if proto == IPPROTO_IPV6:
        return _inner6(inner_buf, outer_ecn, vips)
    inner = ipv4_header(inner_buf)
    if inner is Refusal.OUTER_NOT_IPV4:
        return Refusal.INNER_NOT_IPV4
    if isinstance(inner, Refusal):
        return Refusal.INNER_BAD_LENGTH
    _ihl, inner_total, _frag, _proto, inner_dst = inner
    if inner_total != len(inner_buf):
        return Refusal.INNER_BAD_LENGTH
    if inner_dst not in vips:
        return Refusal.NOT_A_VIP
    inner_ecn = inner_buf[1] & ECN_MASK
    if outer_ecn != ECN_CE or inner_ecn == ECN_CE:
        return Inner(inner_buf)
    if inner_ecn == ECN_NOT_ECT:
        return Refusal.ECN_CE_ON_NOT_ECT
    return Inner(_mark_ce(inner_buf))


def _inner6(inner_buf: memoryview, outer_ecn: int, vips: frozenset[bytes]) -> Inner | Refusal:
    """An inner IPv6 packet: version 6, its payload length the rest, to a VIP; its ECN
    (the traffic class's low bits: byte 1, bits 4-5) marked CE under an outer CE."""
    if len(inner_buf) >= 1 and inner_buf[0] >> 4 != 6:
        return Refusal.INNER_NOT_IPV6
    if len(inner_buf) < IPV6_HEADER:
        return Refusal.INNER_BAD_LENGTH
    if IPV6_HEADER + (inner_buf[4] << 8 | inner_buf[5]) != len(inner_buf):
        return Refusal.INNER_BAD_LENGTH
    if bytes(inner_buf[24:40]) not in vips:
        return Refusal.NOT_A_VIP
    inner_ecn = inner_buf[1] >> 4 & ECN_MASK
    if outer_ecn != ECN_CE or inner_ecn == ECN_CE:
        return Inner(inner_buf)
    if inner_ecn == ECN_NOT_ECT:
        return Refusal.ECN_CE_ON_NOT_ECT
    out = bytearray(inner_buf)
    out[1] |= ECN_CE << 4
    return Inner(bytes(out))


def _mark_ce(inner: memoryview) -> bytes:
    """A copy of ``inner`` with ECN set to CE and its header checksum adjusted."""
    out = bytearray(inner)
    old_word = out[0] << 8 | out[1]
    out[1] |= ECN_CE
    new_word = out[0] << 8 | out[1]
    csum = adjust16(out[10] << 8 | out[11], old_word, new_word)
    out[10], out[11] = csum >> 8, csum & 0xFF
    return bytes(out)
