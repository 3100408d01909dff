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
    """RFC 1071 one's complement sum of ``data``, complemented.

    Computed as one integer: with 2 ** 16 = 1 (mod 0xFFFF), the data read as a
    big-endian number is congruent to the sum of its 16-bit words, and end-around-carry
    addition is addition mod 0xFFFF, save that a non-zero sum is 0xFFFF where the
    remainder is 0 (RFC 1071 section 2, "modulo 2^16 - 1")."""
    value = int.from_bytes(data, "big")
    if len(data) % 2:
        value <<= 8  # the odd last byte is the high half of a word padded with zero
    s = value % 0xFFFF
    if s == 0 and value:
        s = 0xFFFF
    return ~s & 0xFFFF


ADDR6_MASK = (1 << 128) - 1  # an IPv6 address as an integer


def word_sum(value: int) -> int:
    """The one's complement sum of the 16-bit words of ``value``, folded (0 only for 0),
    computed modulo 0xFFFF as ``internet_checksum`` is."""
    s = value % 0xFFFF
    return 0xFFFF if s == 0 and value else s


def adjust128(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3 for a 128-bit field (an IPv6 address: eight 16-bit words), as
    ip_vs_check_diff16 feeds csum_fold (net/netfilter/ipvs/ip_vs_proto_tcp.c,
    tcp_fast_csum_update for AF_INET6)."""
    s = (~csum & 0xFFFF) + word_sum(~old & ADDR6_MASK) + word_sum(new)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def replace128_partial(seed: int, old: int, new: int) -> int:
    """``replace32_partial`` for an IPv6 address under a partial checksum's seed
    (tcp_partial_csum_update / udp_partial_csum_update for AF_INET6)."""
    s = seed + word_sum(~old & ADDR6_MASK) + word_sum(new)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return s


def ipv6_pseudo_sum(buf: bytes | bytearray, proto: int, start: int, end: int) -> int:
    """The checksum of an IPv6 upper-layer packet over its pseudo-header (RFC 8200
    8.1: source, destination, upper-layer length, next header; csum_ipv6_magic) and
    ``buf[start:end]``, the packet's addresses read from its IPv6 header at 8..40."""
    pseudo = bytes(buf[8:40]) + (end - start).to_bytes(4, "big") + bytes((0, 0, 0, proto))
    return internet_checksum(pseudo + bytes(buf[start:end]))
