"""The in-place IPv6 NAT rewrite with RFC 1624 updates over the IPv6 pseudo-header
(16-byte addresses, no IP header checksum) equals dpkt's full recompute, as
test_checksum.py proves it for IPv4."""

from __future__ import annotations

import socket

from hypothesis import given
from hypothesis import strategies as st

from director.core.checksum import adjust128, internet_checksum, replace128_partial
from director.core.packet import parse
from director.core.xmit.nat import IP6_DADDR, IP6_SADDR, rewrite6
from tests.core.packets6 import DEST, HOP, options, recomputed, tcp6, udp6

addrs = st.binary(min_size=16, max_size=16)
ports = st.integers(min_value=1, max_value=65535)
exts = st.lists(st.sampled_from([options(HOP), options(DEST, 16), options(DEST, 24)]), max_size=3)


def _text(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, addr)


@given(
    addrs, addrs, ports, ports, st.binary(max_size=64), addrs, ports, st.booleans(),
    st.booleans(), exts,
)  # fmt: skip
def test_incremental_equals_full_recompute(
    src, dst, sport, dport, payload, new_addr, new_port, is_udp, rewrite_source, ext
):
    build = udp6 if is_udp else tcp6
    raw = build(_text(src), _text(dst), sport, dport, data=payload, ext=ext)
    pkt = parse(raw)
    if rewrite_source:
        rewrite6(pkt, IP6_SADDR, 0, new_addr, new_port)
    else:
        rewrite6(pkt, IP6_DADDR, 2, new_addr, new_port)
    assert bytes(pkt.buf) == recomputed(pkt.buf, pkt.l4, pkt.protocol)


@given(addrs, addrs, ports, st.binary(max_size=64), addrs)
def test_udp_without_checksum_gets_a_whole_one(src, dst, port, payload, new_addr):
    """udp_dnat_handler computes the whole checksum of a datagram sent without one."""
    raw = udp6(_text(src), _text(dst), port, 53, payload, csum=False)
    pkt = parse(raw)
    rewrite6(pkt, IP6_DADDR, 2, new_addr, 5353)
    assert bytes(pkt.buf) == recomputed(pkt.buf)
    assert pkt.buf[46:48] != b"\x00\x00"


@given(st.integers(0, 0xFFFF), st.integers(0, (1 << 128) - 1))
def test_adjust128_identity(csum, value):
    assert adjust128(csum, value, value) % 0xFFFF == csum % 0xFFFF


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16), st.binary())
def test_partial_seed_follows_the_address(old, new, rest):
    """replace128_partial on the seed of a pseudo-header part equals the seed of the
    part with the new address (both folded, not complemented)."""

    def seed(addr: bytes) -> int:
        return ~internet_checksum(addr + rest) & 0xFFFF

    got = replace128_partial(seed(old), int.from_bytes(old, "big"), int.from_bytes(new, "big"))
    assert got % 0xFFFF == seed(new) % 0xFFFF
