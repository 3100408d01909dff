"""IPv4 fragmentation on output (RFC 791 section 3.2; net/ipv4/ip_output.c,
ip_do_fragment's slow path, and ip_options_fragment).

IPVS hands what it forwards to the kernel's output path, which fragments a packet
larger than the outgoing MTU unless it carries DF (those are answered with ICMP
fragmentation needed before, by the transmitters).  The director's shells send by a
raw socket with the header included and by a packet socket, neither of which
fragments, so they ask this module for the fragments instead: a datagram the kernel
reassembled before LOCAL_IN (up to 64 KiB) leaves as the kernel would send it.

Every fragment carries the original header; after the first, the options without
the copied flag are overwritten with NOOPs, so the header keeps its length.  The data
is cut at multiples of 8 bytes; a fragment being fragmented again keeps its offset,
and its last piece its MF flag.
"""

from __future__ import annotations

import struct

from director.core.checksum import internet_checksum

_DF = 0x4000
_MF = 0x2000
_OFFSET = 0x1FFF
IPOPT_END = 0
IPOPT_NOOP = 1
IPOPT_COPY = 0x80


def fragment(buf: bytes | bytearray, mtu: int) -> list[bytearray]:
    """The fragments of the IPv4 packet ``buf`` for a link of ``mtu`` bytes, or no
    fragments at all when it may not (DF) or cannot (an MTU too small for its header
    and 8 bytes) be fragmented.  A packet that fits comes back alone, unchanged."""
    ihl = (buf[0] & 0x0F) << 2
    length = buf[2] << 8 | buf[3]
    if length <= mtu:
        return [bytearray(buf[:length])]
    frag = buf[6] << 8 | buf[7]
    room = (mtu - ihl) & ~7
    if frag & _DF or room < 8:
        return []
    first = bytearray(buf[:ihl])
    later = _copied_options_only(first)
    offset = (frag & _OFFSET) << 3
    more = frag & _MF
    fragments: list[bytearray] = []
    at = ihl
    while at < length:
        size = min(room, length - at)
        last = at + size >= length
        header = bytearray(first if at == ihl else later)
        field = ((offset + at - ihl) >> 3) | (more if last else _MF)
        struct.pack_into("!H", header, 2, ihl + size)
        struct.pack_into("!H", header, 6, field)
        struct.pack_into("!H", header, 10, 0)
        struct.pack_into("!H", header, 10, internet_checksum(header))
        fragments.append(header + buf[at : at + size])
        at += size
    return fragments


def _copied_options_only(header: bytearray) -> bytearray:
    """ip_options_fragment: the options not marked to be copied become NOOPs."""
    out = bytearray(header)
    at, end = 20, len(header)
    while at < end:
        kind = out[at]
        if kind == IPOPT_END:
            break
        if kind == IPOPT_NOOP:
            at += 1
            continue
        size = out[at + 1] if at + 1 < end else 0
        if size < 2 or at + size > end:
            break  # a malformed option: leave the rest as it is
        if not kind & IPOPT_COPY:
            out[at : at + size] = bytes([IPOPT_NOOP]) * size
        at += size
    return out
