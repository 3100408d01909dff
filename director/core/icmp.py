"""ICMP errors the director sends itself (``icmp_send`` as IPVS uses it).

Crafted with dpkt, the project's packet model: these are not the per-packet fast path,
only answers to a connection that cannot be scheduled (ip_vs_leave: port unreachable)
or to a packet too big for the way to its real server (ensure_mtu_is_adequate:
fragmentation needed, carrying the MTU that fits).
"""

from __future__ import annotations

import dpkt

ICMP_DEST_UNREACH = 3
ICMP_PORT_UNREACH = 3
ICMP_FRAG_NEEDED = 4


def unreachable(
    original: bytes | bytearray, code: int, mtu: int = 0, type_: int = ICMP_DEST_UNREACH
) -> bytearray:
    """ICMP destination unreachable about ``original`` (RFC 792; RFC 1812 4.3.2.3: the
    offending IP header and the first 8 bytes of its payload), from the address the
    client tried to reach back to the client.  ``mtu`` goes in the next-hop MTU field
    of fragmentation-needed messages (RFC 1191)."""
    ihl = (original[0] & 0x0F) * 4
    quoted = bytes(original[: ihl + 8])
    unreach = dpkt.icmp.ICMP.Unreach(mtu=mtu, data=quoted)
    icmp = dpkt.icmp.ICMP(type=type_, code=code, data=unreach)
    ip = dpkt.ip.IP(
        src=bytes(original[16:20]),
        dst=bytes(original[12:16]),
        p=dpkt.ip.IP_PROTO_ICMP,
        ttl=64,
        data=icmp,
    )
    return bytearray(bytes(ip))


def port_unreachable(original: bytes | bytearray) -> bytearray:
    return unreachable(original, ICMP_PORT_UNREACH)


def frag_needed(original: bytes | bytearray, mtu: int) -> bytearray:
    return unreachable(original, ICMP_FRAG_NEEDED, mtu)
