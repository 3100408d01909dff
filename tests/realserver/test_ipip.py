"""The decapsulator's pure part: golden IPIP packets in, inner packets or refusals out."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from director.core.checksum import internet_checksum
from director.realserver.ipip import Inner, Refusal, decapsulate, vip_set

VIPS = vip_set(["203.0.113.5"])


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, tos: int = 0, frag: int = 0x4000,
         ihl: int = 5, total: int | None = None, version: int = 4) -> bytes:  # fmt: skip
    """An IPv4 header with a correct checksum, then ``payload``."""
    options = b"\x01" * (ihl * 4 - 20)  # NOPs
    length = ihl * 4 + len(payload) if total is None else total
    head = struct.pack(
        "!BBHHHBBH4s4s", version << 4 | ihl, tos, length, 0x1234, frag, 64, proto, 0,
        bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))),
    ) + options  # fmt: skip
    csum = internet_checksum(head)
    return head[:10] + struct.pack("!H", csum) + head[12:] + payload


# Client 203.0.113.10:40000 -> VIP 203.0.113.5:8080, a TCP SYN (checksum not checked here).
TCP_SYN = bytes.fromhex("9c401f90000003e80000000050027210abcd0000")
INNER = ipv4("203.0.113.10", "203.0.113.5", 6, TCP_SYN)
OUTER = ipv4("198.18.0.1", "198.19.0.2", 4, INNER)


# The same packets written out by hand: the builder above must agree with them.
GOLDEN_INNER = bytes.fromhex(
    "45000028"
    "1234"
    "4000"
    "40"
    "06"
    "b08b"
    "cb00710a"
    "cb007105"  # 203.0.113.10 -> 203.0.113.5, TCP
    "9c401f90000003e80000000050027210abcd0000"  # :40000 -> :8080 SYN
)
GOLDEN_OUTER = (
    bytes.fromhex(
        "4500003c1234400040049c61c6120001c6130002"  # 198.18.0.1 -> 198.19.0.2, proto 4
    )
    + GOLDEN_INNER
)


def test_golden_packets_match_the_builder() -> None:
    assert (INNER, OUTER) == (GOLDEN_INNER, GOLDEN_OUTER)


def test_golden_outer_header_is_stripped_exactly() -> None:
    result = decapsulate(GOLDEN_OUTER, VIPS)
    assert isinstance(result, Inner)
    assert bytes(result.packet) == GOLDEN_INNER
    # Passed on as it came: a view into the receive buffer, no copy.
    assert isinstance(result.packet, memoryview)


def test_outer_options_are_stripped_too() -> None:
    outer = ipv4("198.18.0.1", "198.18.0.2", 4, INNER, ihl=7)
    result = decapsulate(outer, VIPS)
    assert isinstance(result, Inner) and bytes(result.packet) == INNER


def test_trailing_bytes_beyond_outer_total_length_are_ignored() -> None:
    result = decapsulate(OUTER + b"\x00" * 6, VIPS)  # Ethernet padding, say
    assert isinstance(result, Inner) and bytes(result.packet) == INNER


@pytest.mark.parametrize(
    ("description", "packet", "reason"),
    [
        ("empty", b"", Refusal.SHORT),
        ("19 bytes", OUTER[:19], Refusal.SHORT),
        ("IPv6 outer", bytes([0x60]) + OUTER[1:], Refusal.OUTER_NOT_IPV4),
        ("IHL 4", ipv4("198.18.0.1", "198.18.0.2", 4, INNER, ihl=4, total=len(INNER) + 16)[:16]
         + b"\x00" * 4 + INNER, Refusal.OUTER_BAD_LENGTH),
        ("total length beyond the data", OUTER[:-1], Refusal.OUTER_BAD_LENGTH),
        ("total length below the header", ipv4("198.18.0.1", "198.18.0.2", 4, INNER, total=10),
         Refusal.OUTER_BAD_LENGTH),
        ("GRE, not IPIP", ipv4("198.18.0.1", "198.18.0.2", 47, INNER), Refusal.NOT_IPIP),
        ("first fragment", ipv4("198.18.0.1", "198.18.0.2", 4, INNER, frag=0x2000),
         Refusal.FRAGMENT),
        ("later fragment", ipv4("198.18.0.1", "198.18.0.2", 4, INNER, frag=0x0010),
         Refusal.FRAGMENT),
        ("no inner packet", ipv4("198.18.0.1", "198.18.0.2", 4, b""), Refusal.INNER_BAD_LENGTH),
        ("IPv6 inside", ipv4("198.18.0.1", "198.18.0.2", 4, bytes([0x60]) + INNER[1:]),
         Refusal.INNER_NOT_IPV4),
        ("inner cut short", ipv4("198.18.0.1", "198.18.0.2", 4, INNER[:-4]),
         Refusal.INNER_BAD_LENGTH),
        ("inner shorter than the outer says", ipv4("198.18.0.1", "198.18.0.2", 4, INNER + b"xy"),
         Refusal.INNER_BAD_LENGTH),
        ("inner to another address", ipv4("198.18.0.1", "198.18.0.2", 4,
         ipv4("203.0.113.10", "198.18.0.9", 6, TCP_SYN)), Refusal.NOT_A_VIP),
        ("CE over Not-ECT", ipv4("198.18.0.1", "198.18.0.2", 4, INNER, tos=0x03),
         Refusal.ECN_CE_ON_NOT_ECT),
    ],
)  # fmt: skip
def test_refusals(description: str, packet: bytes, reason: Refusal) -> None:
    assert decapsulate(packet, VIPS) is reason, description


@pytest.mark.parametrize("inner_ecn", [0x01, 0x02])
def test_outer_ce_marks_an_ect_inner_packet_ce_with_a_correct_checksum(inner_ecn: int) -> None:
    inner = ipv4("203.0.113.10", "203.0.113.5", 6, TCP_SYN, tos=0xB8 | inner_ecn)
    result = decapsulate(ipv4("198.18.0.1", "198.18.0.2", 4, inner, tos=0x03), VIPS)
    assert isinstance(result, Inner)
    out = bytes(result.packet)
    assert out[1] == 0xB8 | 0x03
    assert internet_checksum(out[:20]) == 0
    assert out[:1] + out[2:10] + out[12:] == inner[:1] + inner[2:10] + inner[12:]


@pytest.mark.parametrize(("outer_tos", "inner_tos"), [(0x00, 0x02), (0x02, 0x00), (0x01, 0x03)])
def test_other_ecn_combinations_leave_the_inner_packet_alone(
    outer_tos: int, inner_tos: int
) -> None:
    inner = ipv4("203.0.113.10", "203.0.113.5", 6, TCP_SYN, tos=inner_tos)
    result = decapsulate(ipv4("198.18.0.1", "198.18.0.2", 4, inner, tos=outer_tos), VIPS)
    assert isinstance(result, Inner) and bytes(result.packet) == inner


@given(st.binary(max_size=120))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert isinstance(decapsulate(data, VIPS), Inner | Refusal)


@given(st.integers(min_value=0, max_value=len(OUTER) - 1), st.integers(0, 255))
def test_mutated_packets_never_raise(offset: int, value: int) -> None:
    mutated = bytearray(OUTER)
    mutated[offset] = value
    result = decapsulate(mutated, VIPS)
    if isinstance(result, Inner):
        assert bytes(result.packet[16:20]) == bytes([203, 0, 113, 5])
