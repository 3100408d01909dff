"""ICMP and ICMPv6 errors the director sends itself (``icmp_send`` and ``icmpv6_send`` as
IPVS uses them).

Crafted with dpkt, the project's packet model: these are not the per-packet fast path,
only answers to a connection that cannot be scheduled (ip_vs_leave: port unreachable),
to a packet too big for the way to its real server (ensure_mtu_is_adequate:
fragmentation needed, carrying the MTU that fits) or to one whose TTL runs out on the
way (decrement_ttl: time exceeded).
"""

from __future__ import annotations

import dpkt

ICMP_DEST_UNREACH = 3
ICMP_PORT_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMP_TIME_EXCEEDED = 11
ICMP_EXC_TTL = 0  # a code of ICMP_TIME_EXCEEDED


def unreachable(
    original: bytes | bytearray,
    code: int,
    mtu: int = 0,
    type_: int = ICMP_DEST_UNREACH,
    source: bytes | None = None,
) -> bytearray:
    """ICMP destination unreachable about ``original`` (RFC 792; RFC 1812 4.3.2.3: the
    offending IP header and the first 8 bytes of its payload), from the address the
    client tried to reach (or ``source``) back to the client.  ``mtu`` goes in the
    next-hop MTU field of fragmentation-needed messages (RFC 1191); another ``type_``
    with the same layout (time exceeded: its 32 bits after the checksum unused, zero)
    is built here too."""
    ihl = (original[0] & 0x0F) * 4
    quoted = bytes(original[: ihl + 8])
    unreach = dpkt.icmp.ICMP.Unreach(mtu=mtu, data=quoted)
    icmp = dpkt.icmp.ICMP(type=type_, code=code, data=unreach)
    ip = dpkt.ip.IP(
        src=bytes(original[16:20]) if source is None else source,
        dst=bytes(original[12:16]),
        p=dpkt.ip.IP_PROTO_ICMP,
        ttl=64,
        data=icmp,
    )
    return bytearray(bytes(ip))


def port_unreachable(original: bytes | bytearray, source: bytes | None = None) -> bytearray:
    return unreachable(original, ICMP_PORT_UNREACH, source=source)


def frag_needed(original: bytes | bytearray, mtu: int) -> bytearray:
    return unreachable(original, ICMP_FRAG_NEEDED, mtu)


def ttl_exceeded(original: bytes | bytearray) -> bytearray:
    """decrement_ttl (net/netfilter/ipvs/ip_vs_xmit.c) for IPv4:
    ``icmp_send(skb, ICMP_TIME_EXCEEDED, ICMP_EXC_TTL, 0)``, from the VIP the packet
    was sent to (icmp_send's source on a local input route)."""
    return unreachable(original, ICMP_EXC_TTL, type_=ICMP_TIME_EXCEEDED)


ICMPV6_DEST_UNREACH = 1
ICMPV6_PKT_TOOBIG = 2
ICMPV6_TIME_EXCEED = 3
ICMPV6_PORT_UNREACH = 4  # a code of ICMPV6_DEST_UNREACH
ICMPV6_EXC_HOPLIMIT = 0  # a code of ICMPV6_TIME_EXCEED
IPV6_MIN_MTU = 1280
_ICMPV6_HOP_LIMIT = 64  # net.ipv6.conf.*.hop_limit's default, the route's hop limit


def icmp6_error(
    original: bytes | bytearray,
    type_: int,
    code: int,
    info: int = 0,
    source: bytes | None = None,
) -> bytearray:
    """icmp6_send (net/ipv6/icmp.c): an ICMPv6 error about the IPv6 packet
    ``original`` from the address it was sent to (an address of the director: the
    VIP), or from ``source``, back to its source, quoting as much of it as keeps the
    whole error within IPV6_MIN_MTU (RFC 4443 2.4 (c)); ``info`` is the 32-bit field
    after the checksum (the MTU of a packet too big).  The checksum covers the
    pseudo-header."""
    quoted = bytes(original[: IPV6_MIN_MTU - 40 - 8])
    icmp = dpkt.icmp6.ICMP6(type=type_, code=code, data=info.to_bytes(4, "big") + quoted)
    ip = dpkt.ip6.IP6(
        src=bytes(original[24:40]) if source is None else source,
        dst=bytes(original[8:24]),
        nxt=dpkt.ip.IP_PROTO_ICMP6,
        hlim=_ICMPV6_HOP_LIMIT,
        plen=len(icmp),
        data=icmp,
    )
    return bytearray(bytes(ip))


def port_unreachable6(original: bytes | bytearray, source: bytes | None = None) -> bytearray:
    """ip_vs_leave for an IPv6 service: ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH."""
    return icmp6_error(original, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, source=source)


def packet_too_big(original: bytes | bytearray, mtu: int) -> bytearray:
    """ensure_mtu_is_adequate for IPv6: ICMPV6_PKT_TOOBIG carrying the MTU that fits,
    never below IPV6_MIN_MTU (no IPv6 link is smaller: RFC 8200 5)."""
    return icmp6_error(original, ICMPV6_PKT_TOOBIG, 0, max(mtu, IPV6_MIN_MTU))


def hop_limit_exceeded(original: bytes | bytearray) -> bytearray:
    """decrement_ttl for IPv6: ICMPV6_TIME_EXCEED, ICMPV6_EXC_HOPLIMIT."""
    return icmp6_error(original, ICMPV6_TIME_EXCEED, ICMPV6_EXC_HOPLIMIT)
