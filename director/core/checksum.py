"""Internet checksums (RFC 1071) and their incremental update (RFC 1624).

The transmitters change addresses and ports in place; instead of summing the whole
packet again they adjust the old checksum by the difference, as the kernel's
``csum_replace4``/``inet_proto_csum_replace2`` do.  Tests prove the result equal to a
full recompute.

A packet whose transport checksum the kernel left to the hardware
(``CHECKSUM_PARTIAL``) carries in its checksum field not a checksum but the seed the
hardware starts from: the folded, not complemented, sum of the pseudo-header
(``~tcp_v4_check(len, saddr, daddr, 0)``).  An address change updates that seed as a
pseudo-header change (``replace32_partial``); a port change, inside the summed data,
leaves it alone.
"""

from __future__ import annotations

import struct


def adjust32(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), for a 32-bit field (two 16-bit words)."""
    s = (~csum & 0xFFFF) + (~old >> 16 & 0xFFFF) + (~old & 0xFFFF) + (new >> 16) + (new & 0xFFFF)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def adjust16(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3 for one 16-bit word."""
    s = (~csum & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def replace32_partial(seed: int, old: int, new: int) -> int:
    """A 32-bit pseudo-header field changed under a partial checksum's seed:
    seed' = seed + ~m + m', folded and not complemented, as tcp_partial_csum_update
    (net/netfilter/ipvs/ip_vs_proto_tcp.c) and inet_proto_csum_replace4's
    CHECKSUM_PARTIAL branch (net/core/utils.c) do it."""
    s = seed + (~old >> 16 & 0xFFFF) + (~old & 0xFFFF) + (new >> 16) + (new & 0xFFFF)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return s


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 one's complement sum of ``data``, complemented."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
