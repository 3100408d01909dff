"""Whatever bytes arrive, the core answers with a verdict and never raises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from director.core.engine import Director
from director.core.xmit import ACCEPT, DROP, SEND
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import CLIENT, RS1, SYN, VIP, tcp, udp

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
