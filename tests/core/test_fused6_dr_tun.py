"""The fused path for IPv6 through VS/DR and VS/TUN (``DirectRoute.fused_in6``,
``Tunnel.fused_in6``) against the general path, as tests/core/test_fused6.py proves it
for NAT: random sequences of IPv6 packets, good and bad, through a DR service, a TUN
service to IPv6 real servers and a TUN service to an IPv4 one (IPv6 inside IPv4),
two directors, one fused and one not, compared after every packet: the same bytes,
verdicts, connection state, counters and timers.  What the fused path must leave to
the general one is among them: extension headers, a hop limit of 1, a packet too big
for the way or its tunnel, a tunnel route narrower than IPV6_MIN_MTU plus its header,
a byte changed, a packet cut short."""

from __future__ import annotations

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from director.core.engine import Director
from director.core.route import Route
from director.core.xmit import DIRECT, SEND
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import ACK, FIN, RST, SYN
from tests.core.packets6 import CLIENT6, HOP, VIP6, a6, options, tcp6, udp6
from tests.core.test_fused import SHORT_INPUT_ONLY, same, state

PSH = dpkt.tcp.TH_PUSH
CLIENTS6 = (CLIENT6, "2001:db8:3::b")
PORTS = (40000, 5353)
SERVICES6: tuple[tuple[str, int, tuple[tuple[str, int, str], ...]], ...] = (
    ("tcp", 80, (("2001:db8:2::2", 80, "droute"), ("2001:db8:2::3", 80, "droute"))),
    ("udp", 53, (("2001:db8:3::2", 53, "tunnel"), ("2001:db8:3::3", 53, "tunnel"))),
    ("tcp", 443, (("198.19.0.2", 443, "tunnel"),)),
)
ROUTES = {  # 1500, the IPv6 minimum plus 40 (a tunnel's floor), and below it
    "2001:db8:2::2": 1500, "2001:db8:2::3": 1280, "2001:db8:3::2": 1500,
    "2001:db8:3::3": 1319, "198.19.0.2": 1400,
}  # fmt: skip


def director(fused: bool) -> Director:
    d = Director()
    d.fused = fused
    d.configure(Config(services=tuple(
        ServiceConf(proto, VIP6, port, scheduler="rr", dests=tuple(DestConf(*x) for x in dests))
        for proto, port, dests in SERVICES6
    )))  # fmt: skip
    for svc in d.services:
        for dest in svc.dests:
            text = next(a for a in ROUTES if (a6(a) if ":" in a else bytes(map(int, a.split("."))))
                        == dest.addr)  # fmt: skip
            source = bytes(16) if ":" in text else bytes(4)
            dest.route = Route(ifindex=2, source=source, mtu=ROUTES[text])
    return d


def packet(service: int, client: int, port: int, flags: int, size: int, spoil: int) -> bytearray:
    proto, vport, _ = SERVICES6[service]
    caddr, cport = CLIENTS6[client], PORTS[port]
    data = b"d" * size
    ext = (options(HOP),) if spoil == 1 else ()
    hlim = 1 if spoil == 2 else 61
    if proto == "udp":
        return udp6(caddr, VIP6, cport, vport, data, ext=ext, hlim=hlim)
    return tcp6(caddr, VIP6, cport, vport, flags, data, ext=ext, hlim=hlim)


def variant(raw: bytearray, spoil: int, at: int, value: int) -> bytearray:
    raw = bytearray(raw)
    if spoil == 3:  # a byte changed anywhere
        raw[at % len(raw)] = value
    elif spoil == 4:  # cut short
        del raw[max(0, len(raw) - (at % 24 + 1)) :]
    return raw


FLAGS = st.sampled_from((ACK, ACK | PSH, ACK, ACK, SYN, FIN | ACK, FIN, RST, RST | ACK, 0))
FLOW = st.tuples(
    st.integers(0, len(SERVICES6) - 1),
    st.integers(0, len(CLIENTS6) - 1),
    st.integers(0, len(PORTS) - 1),
)
STEP = st.tuples(
    st.sampled_from(("in",) * 8 + ("expire",)),
    st.integers(0, 2),
    FLAGS,
    st.sampled_from((0, 1, 100, 1200, 1250, 1300, 1400, 1460)),
    st.sampled_from((0, 0, 0, 0, 0, 0, 1, 2, 3, 4)),
    st.integers(0, 1500),
    st.integers(0, 255),
    st.sampled_from((0.0, 0.0, 0.5, 7.0, 61.0, 400.0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(FLOW, min_size=1, max_size=3), st.lists(STEP, min_size=1, max_size=50))
def test_fused_and_general_paths_agree_for_ipv6_dr_and_tun(flows, steps):
    fused, general = director(True), director(False)
    now = 1.0
    for kind, flow, flags, size, spoil, at, value, dt in steps:
        service, client, port = flows[flow % len(flows)]
        now += dt
        if kind == "expire":
            assert fused.expire(now) == general.expire(now)
        else:
            raw = variant(packet(service, client, port, flags, size, spoil), spoil, at, value)
            a, b = bytearray(raw), bytearray(raw)
            va, vb = fused.hook_in(a, now), general.hook_in(b, now)
            assert same(va, vb), (va, vb)
            assert a == b
        assert state(fused) == state(general)


@pytest.mark.parametrize("service", range(len(SERVICES6)))
def test_an_established_ipv6_dr_or_tun_flow_takes_the_fused_path(service: int) -> None:
    """Every packet of a flow after its SYN is fused, those that change the state
    (SYN_RECV to ESTABLISHED, FIN to FIN_WAIT, RST to CLOSE by tcp_states[]'s INPUT-ONLY
    table) too: the general path is not called; a UDP flow's every datagram once it
    has an entry."""
    d = director(True)
    calls: list[str] = []
    general_in = d._in_general
    d._in_general = lambda *args: calls.append("in") or general_in(*args)  # type: ignore[method-assign]
    now = 1.0
    while not d.conns:  # the first datagram rr tunnels too narrowly goes, and its entry
        d.hook_in(packet(service, 0, 0, SYN, 10, 0), now)
    before = len(calls)
    for (_, flags, _), expected in SHORT_INPUT_ONLY[1:]:
        now += 0.5
        action, _ = d.hook_in(packet(service, 0, 0, flags, 10, 0), now)
        assert len(calls) == before
        assert action in (DIRECT, SEND)
        (conn,) = d.conns
        if SERVICES6[service][0] == "tcp":
            assert conn.state == expected
