"""GUE and GRE decapsulation for a real server whose kernel has neither ``fou`` nor
``gre`` (``ip_gre``/``ip6_gre``): what VS/TUN sends with ``--tun-type gue`` or ``gre``.

The pure part of the userspace decapsulator (director.realserver.decap), as
director.realserver.ipip is for IPIP: bytes in, inner packet or a refusal out, never an
exception on what the wire brings.  The inner packet is then checked as an IPIP one
(ipip's rules: whole, to a VIP, RFC 6040 ECN).

GUE (draft-ietf-intarea-gue, the kernel's ``gue_udp_recv`` in net/ipv4/fou_core.c): a
UDP datagram to the GUE port, read from a UDP socket, so its payload only: the 4-byte
GUE header (version 0, C 0 for data, hlen the option words, proto_ctype 4 or 41, the
flags) and the inner packet after ``4 + 4 * hlen`` bytes.  The one option IPVS sends
is remote checksum offload (GUE_FLAG_PRIV, then the private flags GUE_PFLAG_REMCSUM
and the checksum's start and offset in the inner packet): the checksum is completed
here, from its seed, as ``__gue_remcsum`` has the stack do.  Any other flag or option
is refused.

GRE (RFC 2784, ``gre_parse_header``): a raw socket of protocol 47 gives the packet
with its outer IPv4 header (or, over IPv6, the payload alone); version 0, no routing,
key or sequence number; with the C bit, a checksum word that must sum to zero over the
GRE header and payload; protocol type ETH_P_IP or ETH_P_IPV6.
"""

from __future__ import annotations

import struct

from director.core.checksum import internet_checksum
from director.realserver.ipip import (
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    Inner,
    Refusal,
    check_inner,
    ipv4_header,
)

GUE_HLEN = 4
GUE_FLAG_PRIV = 0x0001
GUE_PFLAG_REMCSUM = 0x80000000
GRE_C = 0x8000
GRE_VERSION_AND_FLAGS = 0x7FFF  # everything but C: routing, key, sequence, version
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_GRE = 47
_PROTOCOLS = {ETH_P_IP: IPPROTO_IPIP, ETH_P_IPV6: IPPROTO_IPV6}
_REMCSUM = struct.Struct("!IHH")


def decapsulate_gue(
    payload: bytes | bytearray | memoryview, vips: frozenset[bytes]
) -> Inner | Refusal:
    """The packet a GUE datagram's ``payload`` (after the UDP header) carries."""
    buf = memoryview(payload)
    if len(buf) < GUE_HLEN:
        return Refusal.SHORT
    if buf[0] >> 5:  # version 0, C 0 (a control message otherwise)
        return Refusal.NOT_IPIP
    hlen = GUE_HLEN + 4 * (buf[0] & 0x1F)
    proto, flags = buf[1], buf[2] << 8 | buf[3]
    if len(buf) < hlen or proto not in (IPPROTO_IPIP, IPPROTO_IPV6):
        return Refusal.SHORT if len(buf) < hlen else Refusal.NOT_IPIP
    if flags & ~GUE_FLAG_PRIV or bool(flags) != (hlen > GUE_HLEN):
        return Refusal.NOT_IPIP
    if not flags:
        return check_inner(buf[hlen:], proto, 0, vips)
    if hlen != GUE_HLEN + _REMCSUM.size:
        return Refusal.NOT_IPIP
    private, start, offset = _REMCSUM.unpack_from(buf, GUE_HLEN)
    inner = bytearray(buf[hlen:])
    if private != GUE_PFLAG_REMCSUM or not start < offset <= len(inner) - 2:
        return Refusal.NOT_IPIP
    # The seed in place, the checksum of the rest from csum_start on completes it.
    struct.pack_into("!H", inner, offset, internet_checksum(memoryview(inner)[start:]) or 0xFFFF)
    checked = check_inner(memoryview(inner), proto, 0, vips)
    return checked if isinstance(checked, Refusal) else Inner(bytes(inner))


def decapsulate_gre(
    data: bytes | bytearray | memoryview, vips: frozenset[bytes]
) -> Inner | Refusal:
    """The packet a GRE packet carries: ``data`` as a raw IPv4 socket of protocol 47
    returns it, its outer header included."""
    buf = memoryview(data)
    outer = ipv4_header(buf)
    if isinstance(outer, Refusal):
        return outer
    ihl, total, frag, proto, _dst = outer
    if proto != IPPROTO_GRE:
        return Refusal.NOT_IPIP
    if frag & 0x3FFF:
        return Refusal.FRAGMENT
    return decapsulate_gre6(buf[ihl:total], buf[1] & 0x03, vips)


def decapsulate_gre6(
    payload: bytes | bytearray | memoryview, outer_ecn: int, vips: frozenset[bytes]
) -> Inner | Refusal:
    """The packet a GRE header and ``payload`` carry (what a raw IPv6 socket of
    protocol 47 returns, or the IPv4 packet's payload), the outer ECN beside it."""
    buf = memoryview(payload)
    if len(buf) < 4:
        return Refusal.SHORT
    flags, ethertype = struct.unpack_from("!HH", buf)
    if flags & GRE_VERSION_AND_FLAGS or ethertype not in _PROTOCOLS:
        return Refusal.NOT_IPIP
    hlen = 8 if flags & GRE_C else 4
    if len(buf) < hlen:
        return Refusal.SHORT
    if flags & GRE_C and internet_checksum(buf):
        return Refusal.NOT_IPIP
    return check_inner(buf[hlen:], _PROTOCOLS[ethertype], outer_ecn & 0x03, vips)
