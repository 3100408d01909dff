"""The decapsulator's IPv6 tunnels: IPv6-in-IPv6 and IPv4-in-IPv6 (RFC 2473; the
kernel hands a raw IPv6 socket the payload, the inner packet, and the outer traffic
class) and IPv6-in-IPv4 (RFC 4213, protocol 41 behind an IPv4 header).  The inner
packet goes on unchanged but for ECN (RFC 6040 §4.2: outer CE marks an ECT inner
packet CE; over Not-ECT it is refused); the IPv6 ECN bits are the traffic class's low
two (RFC 8200 §7: byte 1, bits 4-5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from director.realserver.ipip import (
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    Inner,
    Refusal,
    decapsulate,
    decapsulate6,
    vip_set,
)
from tests.realserver.test_ipip import INNER, ipv4

VIPS = vip_set(["2001:db8:1::100", "203.0.113.5"])

# Client [2001:db8:1::10]:40000 -> VIP [2001:db8:1::100]:53, UDP "q" (checksum not
# checked here), written out by hand: version 6, traffic class 0, payload 9 bytes,
# next header 17, hop limit 64.
INNER6 = bytes.fromhex(
    "60000000" "0009" "11" "40"
    "20010db8000100000000000000000010"
    "20010db8000100000000000000000100"
    "9c400035" "0009" "0000" "71"
)  # fmt: skip


def test_ipv6_in_ipv6_gives_the_inner_packet_whole() -> None:
    result = decapsulate6(INNER6, IPPROTO_IPV6, 0, VIPS)
    assert isinstance(result, Inner) and bytes(result.packet) == INNER6


def test_ipv4_in_ipv6_gives_the_inner_packet_whole() -> None:
    result = decapsulate6(INNER, IPPROTO_IPIP, 0, VIPS)
    assert isinstance(result, Inner) and bytes(result.packet) == INNER


def test_ipv6_in_ipv4_strips_the_outer_header() -> None:
    outer = ipv4("198.18.0.1", "198.19.0.2", IPPROTO_IPV6, INNER6)
    assert outer[9] == 41 and len(outer) == 20 + len(INNER6)
    result = decapsulate(outer, VIPS)
    assert isinstance(result, Inner) and bytes(result.packet) == INNER6


def _tclass(packet: bytes, tclass: int) -> bytes:
    return bytes([0x60 | tclass >> 4, (tclass & 0x0F) << 4 | packet[1] & 0x0F]) + packet[2:]


@pytest.mark.parametrize("inner_ecn", [0x01, 0x02])
def test_outer_ce_marks_an_ect_inner_ipv6_packet_ce(inner_ecn: int) -> None:
    inner = _tclass(INNER6, 0xB8 | inner_ecn)
    result = decapsulate6(inner, IPPROTO_IPV6, 0x03, VIPS)
    assert isinstance(result, Inner)
    out = bytes(result.packet)
    assert out[0] == 0x6B and out[1] == 0xB0  # traffic class 0xBB: DSCP kept, CE
    assert out[2:] == inner[2:]
    # The same through IPv4: the outer TOS's ECN.
    again = decapsulate(ipv4("198.18.0.1", "198.19.0.2", 41, inner, tos=0x03), VIPS)
    assert isinstance(again, Inner) and bytes(again.packet) == out


@pytest.mark.parametrize(
    ("description", "result", "reason"),
    [
        ("IPv4 inside next header 41", decapsulate6(INNER, IPPROTO_IPV6, 0, VIPS),
         Refusal.INNER_NOT_IPV6),
        ("IPv6 inside next header 4", decapsulate6(INNER6, IPPROTO_IPIP, 0, VIPS),
         Refusal.INNER_NOT_IPV4),
        ("GRE", decapsulate6(INNER6, 47, 0, VIPS), Refusal.NOT_IPIP),
        ("short", decapsulate6(INNER6[:39], IPPROTO_IPV6, 0, VIPS), Refusal.INNER_BAD_LENGTH),
        ("empty", decapsulate6(b"", IPPROTO_IPV6, 0, VIPS), Refusal.INNER_BAD_LENGTH),
        ("payload length too long", decapsulate6(INNER6[:-1], IPPROTO_IPV6, 0, VIPS),
         Refusal.INNER_BAD_LENGTH),
        ("trailing bytes", decapsulate6(INNER6 + b"x", IPPROTO_IPV6, 0, VIPS),
         Refusal.INNER_BAD_LENGTH),
        ("not a VIP", decapsulate6(INNER6[:24] + bytes(15) + b"\x01" + INNER6[40:],
                                   IPPROTO_IPV6, 0, VIPS), Refusal.NOT_A_VIP),
        ("CE over Not-ECT", decapsulate6(INNER6, IPPROTO_IPV6, 0x03, VIPS),
         Refusal.ECN_CE_ON_NOT_ECT),
        ("IPv6 in IPv4, cut", decapsulate(ipv4("198.18.0.1", "198.19.0.2", 41, INNER6[:-2]),
                                          VIPS), Refusal.INNER_BAD_LENGTH),
    ],
)  # fmt: skip
def test_refusals(description: str, result: object, reason: Refusal) -> None:
    assert result is reason, description


@given(st.binary(max_size=120), st.sampled_from([4, 41, 47]), st.integers(0, 255))
def test_random_payloads_never_raise(data: bytes, proto: int, tclass: int) -> None:
    assert isinstance(decapsulate6(data, proto, tclass, VIPS), Inner | Refusal)
