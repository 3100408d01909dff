"""The in-place NAT rewrite with RFC 1624 updates equals dpkt's full recompute."""

from __future__ import annotations

import socket

import dpkt
from hypothesis import given
from hypothesis import strategies as st

from director.core.checksum import adjust16, adjust32, internet_checksum
from director.core.packet import parse
from director.core.xmit.nat import rewrite

addrs = st.binary(min_size=4, max_size=4)
ports = st.integers(min_value=1, max_value=65535)


def _recomputed(raw: bytes) -> bytes:
    """The same packet with every checksum computed from scratch by dpkt."""
    ip = dpkt.ip.IP(raw)
    ip.sum = 0
    ip.data.sum = 0
    return bytes(ip)


@given(
    addrs, addrs, ports, ports, st.binary(max_size=64), addrs, ports, st.booleans(), st.booleans()
)
def test_incremental_equals_full_recompute(
    src, dst, sport, dport, payload, new_addr, new_port, is_udp, rewrite_source
):
    l4 = (dpkt.udp.UDP if is_udp else dpkt.tcp.TCP)(sport=sport, dport=dport, data=payload)
    proto = dpkt.ip.IP_PROTO_UDP if is_udp else dpkt.ip.IP_PROTO_TCP
    raw = bytearray(bytes(dpkt.ip.IP(src=src, dst=dst, p=proto, data=l4)))
    if is_udp and raw[26:28] == b"\x00\x00":
        return  # dpkt sent no checksum; covered by test_udp_without_checksum
    pkt = parse(raw)
    if rewrite_source:
        rewrite(pkt, 12, 0, new_addr, new_port)
    else:
        rewrite(pkt, 16, 2, new_addr, new_port)
    assert bytes(pkt.buf) == _recomputed(bytes(pkt.buf))


def test_udp_without_checksum_stays_without():
    dgram = dpkt.udp.UDP(sport=5000, dport=53, data=b"q")
    raw = bytearray(
        bytes(dpkt.ip.IP(src=b"\x01\x02\x03\x04", dst=b"\x05\x06\x07\x08", p=17, data=dgram))
    )
    raw[26:28] = b"\x00\x00"
    pkt = parse(raw)
    rewrite(pkt, 16, 2, socket.inet_aton("198.18.0.2"), 53)
    assert pkt.buf[26:28] == b"\x00\x00"


@given(
    st.binary(min_size=2, max_size=40).filter(lambda b: len(b) % 2 == 0),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
)
def test_adjust16_matches_recompute(data, index, word, _):
    words = bytearray(data)
    at = (index % (len(words) // 2)) * 2
    before = internet_checksum(words)
    old = int.from_bytes(words[at : at + 2], "big")
    words[at : at + 2] = word.to_bytes(2, "big")
    after = internet_checksum(words)
    # One's complement has two zeros; RFC 1624's eqn. 3 never yields 0xFFFF... both
    # stand for the same sum, so compare modulo that.
    assert adjust16(before, old, word) % 0xFFFF == after % 0xFFFF


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF))
def test_adjust32_identity(csum, value):
    assert adjust32(csum, value, value) % 0xFFFF == csum % 0xFFFF


@given(st.one_of(st.binary(max_size=3000), st.integers(0, 40).map(lambda n: b"\xff" * n)))
def test_internet_checksum_is_dpkts(data: bytes) -> None:
    """RFC 1071's checksum of any data, odd lengths and all-ones words included, as the
    test oracle dpkt computes it (dpkt.in_cksum: word by word, end-around carry)."""
    assert internet_checksum(data) == dpkt.in_cksum(data)
