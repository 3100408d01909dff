"""IPv4 fragmentation on output, checked with dpkt (an independent parser) against
RFC 791 section 3.2 and the kernel's ip_do_fragment / ip_options_fragment
(net/ipv4/ip_output.c, net/ipv4/ip_options.c): data cut at multiples of 8 bytes, every
fragment within the MTU, MF on all but the last, offsets in 8-byte units, each header
checksum valid, the original header (id, TTL, protocol, addresses) on every fragment,
and after the first only the options with the copied flag (the others made NOOPs)."""

from __future__ import annotations

import itertools
import os
import struct

import dpkt
import pytest

from director.core.fragment import fragment
from tests.core.packets import CLIENT, VIP, udp


def _datagram(size: int, df: bool = False) -> bytearray:
    raw = dpkt.ip.IP(bytes(udp(CLIENT, VIP, 5000, 53, os.urandom(size))))
    raw.id, raw.df, raw.sum = 0x1234, int(df), 0
    return bytearray(bytes(raw))


@pytest.mark.parametrize(("size", "mtu"), [(30000, 9000), (65000, 9000), (3000, 1500),
                                           (65507, 1500), (1473, 1500), (9000, 576)])  # fmt: skip
def test_fragments_reassemble_to_the_datagram(size: int, mtu: int) -> None:
    packet = _datagram(size)
    pieces = fragment(packet, mtu)
    assert len(pieces) == -(-(len(packet) - 20) // ((mtu - 20) & ~7))
    data = b""
    for index, piece in enumerate(pieces):
        ip = dpkt.ip.IP(bytes(piece))
        assert len(piece) <= mtu and ip.len == len(piece)
        assert (ip.id, ip.ttl, ip.p, ip.src, ip.dst) == (0x1234, packet[8], 17, packet[12:16],
                                                         packet[16:20])  # fmt: skip
        assert ip.offset * 8 == len(data)  # dpkt gives the field: 8-byte units
        assert ip.mf == (index < len(pieces) - 1) and not ip.df
        if index < len(pieces) - 1:
            assert len(piece[20:]) % 8 == 0
        check = dpkt.ip.IP(bytes(piece))
        check.sum = 0
        assert dpkt.ip.IP(bytes(check)).sum == ip.sum  # dpkt recomputes the checksum
        data += bytes(piece[20:])
    assert data == bytes(packet[20:])


def test_a_packet_that_fits_is_left_alone() -> None:
    packet = _datagram(1472)
    assert fragment(packet, 1500) == [packet]


def test_df_or_a_tiny_mtu_gives_no_fragments() -> None:
    assert fragment(_datagram(3000, df=True), 1500) == []
    assert fragment(_datagram(3000), 27) == []  # 20-byte header + less than 8 bytes


def test_a_fragment_fragmented_again_keeps_its_offset_and_mf() -> None:
    whole = _datagram(20000)
    middle = fragment(whole, 9000)[1]  # offset 8976, MF set
    again = fragment(middle, 1500)
    offsets = [dpkt.ip.IP(bytes(p)).offset * 8 for p in again]
    assert offsets[0] == 8976 and all(b - a == 1480 for a, b in itertools.pairwise(offsets))
    assert all(dpkt.ip.IP(bytes(p)).mf for p in again)  # the middle one's MF stays on
    last = fragment(fragment(whole, 9000)[-1], 1500)
    assert not dpkt.ip.IP(bytes(last[-1])).mf


def test_only_copied_options_follow_the_first_fragment() -> None:
    """Security (130, copied) goes on every fragment; record route (7, not copied) only
    on the first, NOOPs in its place after (ip_options_fragment)."""
    packet = _datagram(3000)
    security = bytes([130, 11]) + bytes(9)
    record_route = bytes([7, 7, 4]) + bytes(4)
    options = security + record_route + bytes([0, 0])  # 20 bytes: END and padding
    header = bytearray(packet[:20]) + options
    header[0] = 0x45 + len(options) // 4
    struct.pack_into("!H", header, 2, len(packet) + len(options))
    with_options = header + packet[20:]
    first, second, *_ = fragment(with_options, 1500)
    assert first[20:40] == options
    assert second[20:40] == security + bytes([1]) * 7 + bytes([0, 0])
    assert len(first[40:]) % 8 == 0 and len(first) <= 1500
