"""ICMP errors the director sends itself (``icmp_send`` as ip_vs_leave uses it).

Crafted with dpkt, the project's packet model: this is not the per-packet fast path,
only the answer to a connection that cannot be scheduled.
"""

from __future__ import annotations

import dpkt

ICMP_DEST_UNREACH = 3
ICMP_PORT_UNREACH = 3


def port_unreachable(original: bytes | bytearray) -> bytearray:
    """ICMP destination unreachable / port unreachable about ``original`` (RFC 792, RFC 1812
    4.3.2.3: the offending IP header and the first 8 bytes of its payload), from the
    address the client tried to reach back to the client."""
    ihl = (original[0] & 0x0F) * 4
    quoted = bytes(original[: ihl + 8])
    icmp = dpkt.icmp.ICMP(
        type=ICMP_DEST_UNREACH,
        code=ICMP_PORT_UNREACH,
        data=dpkt.icmp.ICMP.Unreach(data=quoted),
    )
    ip = dpkt.ip.IP(
        src=bytes(original[16:20]),
        dst=bytes(original[12:16]),
        p=dpkt.ip.IP_PROTO_ICMP,
        ttl=64,
        data=icmp,
    )
    return bytearray(bytes(ip))
