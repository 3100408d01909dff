"""Whatever bytes arrive, the core answers with a verdict and never raises."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from director.core.engine import Director
from director.core.packet import PacketError, parse, parse_icmp_error
from director.core.xmit import ACCEPT, DROP, SEND
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import CLIENT, RS1, SYN, VIP, tcp, udp
from tests.core.packets6 import (
    CLIENT6,
    DEST,
    HOP,
    ROUTER6,
    RS6_1,
    VIP6,
    auth,
    fragment,
    icmp6,
    options,
    routing,
    tcp6,
    udp6,
)

CONFIG = Config(
    services=(
        ServiceConf("tcp", VIP, 80, scheduler="wlc", dests=(DestConf(RS1, 80, "masq"),)),
        ServiceConf("udp", VIP, 53, scheduler="rr", dests=(DestConf(RS1, 53, "masq"),)),
    )
)
DIRECTOR = Director()
DIRECTOR.configure(CONFIG)


def _mutated(base: bytearray, flips: list[tuple[int, int]], cut: int) -> bytearray:
    raw = bytearray(base)
    for at, value in flips:
        raw[at % len(raw)] = value
    return raw[: max(0, len(raw) - cut)]


@settings(max_examples=400)
@given(st.binary(max_size=120))
def test_random_bytes_never_raise(raw):
    for hook in (DIRECTOR.hook_in, DIRECTOR.hook_out):
        action, _ = hook(bytearray(raw), 5.0)
        assert action in (ACCEPT, SEND, DROP)


@settings(max_examples=400)
@given(
    st.sampled_from(
        [tcp(CLIENT, VIP, 40000, 80, SYN, b"x" * 20), udp(CLIENT, VIP, 5000, 53, b"q")]
    ),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    st.integers(0, 30),
)
def test_mutated_packets_never_raise(base, flips, cut):
    raw = _mutated(base, flips, cut)
    action, data = DIRECTOR.hook_in(raw, 5.0)
    assert action in (ACCEPT, SEND, DROP)
    if action == DROP:
        assert isinstance(data, str) and DIRECTOR.drops[data] > 0


# IPv6: the same, through the extension header walk and the ICMPv6 error path.
CONFIG6 = Config(
    services=(
        ServiceConf("tcp", VIP6, 80, scheduler="rr", dests=(DestConf(RS6_1, 80, "masq"),)),
        ServiceConf("udp", VIP6, 53, scheduler="rr", dests=(DestConf(RS6_1, 53, "masq"),)),
    )
)
DIRECTOR6 = Director()
DIRECTOR6.configure(CONFIG6)
EXT6 = (options(HOP), routing(), fragment(), options(DEST, 16), auth())
REQUEST6 = tcp6(CLIENT6, VIP6, 40000, 80, SYN, b"x" * 20, ext=EXT6)
DIRECTOR6.hook_in(bytearray(REQUEST6), 1.0)
BASES6 = [
    REQUEST6,
    udp6(CLIENT6, VIP6, 5000, 53, b"q", ext=EXT6[:2]),
    icmp6(ROUTER6, VIP6, 2, 0, bytes(tcp6(VIP6, CLIENT6, 80, 40000, ext=EXT6)), 1280),
    icmp6(RS6_1, CLIENT6, 1, 4, bytes(tcp6(CLIENT6, RS6_1, 40000, 80, ext=EXT6[3:]))),
]


@settings(max_examples=600)
@given(
    st.sampled_from(BASES6),
    st.lists(st.tuples(st.integers(0, 240), st.integers(0, 255)), max_size=6),
    st.integers(0, 120),
)
def test_mutated_ipv6_packets_never_raise(base, flips, cut):
    for hook in (DIRECTOR6.hook_in, DIRECTOR6.hook_out):
        raw = _mutated(base, flips, cut)
        if raw:
            raw[0] = 0x60 | raw[0] & 0x0F  # keep it IPv6
        with contextlib.suppress(PacketError):  # the only exception the view raises
            parse(bytearray(raw))
        with contextlib.suppress(PacketError):
            parse_icmp_error(bytearray(raw))
        action, data = hook(raw, 5.0)
        assert action in (ACCEPT, SEND, DROP)
        if action == DROP:
            assert isinstance(data, str) and DIRECTOR6.drops[data] > 0
