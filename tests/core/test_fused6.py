"""The fused established-flow path for IPv6 (Director.hook_in/hook_out with ``fused``:
``_in_fused6`` / ``_out_fused6``) against the general path, as tests/core/test_fused.py
proves it for IPv4: random sequences of IPv6 packets, good and bad, in and out,
through NAT (persistent or not) and local-node services, through two directors, one
fused and one not, compared after every packet: the same bytes, verdicts, connection
state, counters and timers.  What the fused path must leave to the general one is
among them: extension headers, a hop limit of 1, a packet too big for the way, a UDP
datagram without checksum, a partial checksum, padding, a byte changed, a packet cut
short."""

from __future__ import annotations

import dpkt
from hypothesis import given, settings
from hypothesis import strategies as st

from director.core.engine import Director
from director.core.packet import SKB_CSUMNOTREADY, SKB_GSO, parse
from director.core.route import Route
from director.core.xmit.nat import IP6_DADDR, IP6_SADDR, rewrite6, rewrite_fused6
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import ACK, FIN, RST, SYN
from tests.core.packets6 import CLIENT6, HOP, RS6_1, RS6_2, VIP6, a6, options, tcp6, udp6
from tests.core.test_fused import (
    CLIENT_CLOSES,
    SHORT_INPUT_ONLY,
    SHORT_NAT,
    Spy,
    change,
    fusable,
    same,
    state,
)
from tests.core.test_golden6 import seed6

PSH = dpkt.tcp.TH_PUSH
RS6_SELF = "2001:db8:2::1"
CLIENTS6 = (CLIENT6, "2001:db8:3::b")
PORTS = (40000, 5353)

SERVICES6: tuple[tuple[str, int, int | None, tuple[tuple[str, int, str], ...]], ...] = (
    ("tcp", 80, None, ((RS6_1, 80, "masq"), (RS6_2, 8080, "masq"))),
    ("udp", 53, 30, ((RS6_1, 53, "masq"),)),
    ("tcp", 81, None, ((RS6_SELF, 81, "masq"),)),
)
ROUTES6 = {
    RS6_1: Route(ifindex=2, source=a6(RS6_SELF), mtu=1500),
    RS6_2: Route(ifindex=2, source=a6(RS6_SELF), mtu=1280),
    RS6_SELF: Route(ifindex=1, source=a6(RS6_SELF), mtu=65536, local=True),
}


def director(fused: bool, fewer: bool = False) -> Director:
    d = Spy() if fused else Director()
    d.fused = fused
    configure(d, fewer)
    return d


def configure(d: Director, fewer: bool) -> None:
    d.configure(
        Config(
            services=tuple(
                ServiceConf(proto, VIP6, port, scheduler="rr", persistent=persistent,
                            dests=tuple(DestConf(*d) for d in dests[: 1 if fewer else None]))
                for proto, port, persistent, dests in SERVICES6
            )
        )
    )  # fmt: skip
    for svc in d.services:
        for dest in svc.dests:
            dest.route = ROUTES6[next(a for a in ROUTES6 if a6(a) == dest.addr)]


def packet(out: bool, service: int, client: int, port: int, dest: int, flags: int, size: int,
           spoil: int) -> bytearray:  # fmt: skip
    proto, vport, _, dests = SERVICES6[service]
    caddr, cport = CLIENTS6[client], PORTS[port]
    raddr, rport, _ = dests[dest % len(dests)]
    data = b"d" * size
    ext = (options(HOP),) if spoil == 1 else ()
    hlim = 1 if spoil == 2 else 61
    src, dst, sport, dport = (raddr, caddr, rport, cport) if out else (caddr, VIP6, cport, vport)
    if proto == "udp":
        return udp6(src, dst, sport, dport, data, ext=ext, hlim=hlim, csum=spoil != 3)
    return tcp6(src, dst, sport, dport, flags, data, ext=ext, hlim=hlim)


def variant(raw: bytearray, spoil: int, at: int, value: int) -> bytearray:
    raw = bytearray(raw)
    if spoil == 4:  # link-layer padding
        raw += b"\x00" * (at % 7 + 1)
    elif spoil == 5:  # a byte changed anywhere
        raw[at % len(raw)] = value
    elif spoil == 6:  # cut short
        del raw[max(0, len(raw) - (at % 24 + 1)) :]
    return raw


FLAGS = st.sampled_from(
    (ACK, ACK | PSH, ACK, ACK, SYN, SYN | ACK, FIN | ACK, FIN | ACK | PSH, FIN, RST, RST | ACK,
     0, PSH)
)  # fmt: skip


def must_fuse(d: Director, out: bool, raw: bytearray) -> bool:
    """test_fused.must_fuse for an unspoilt IPv6 packet (no extension header, a hop
    limit above 1, a UDP checksum): of a known connection, any row of the state
    table but a client's SYN's; NAT's on the way in when it fits its path (no DF in
    IPv6: a packet too big is always answered), the local node's."""
    found = fusable(d, out, raw)
    if found is None:
        return False
    pkt, conn = found
    if out:
        return True
    route = conn.dest.route
    if conn.xmit.name == "masq":
        return route is None or pkt.length <= conn.dest.path_mtu(route)
    return conn.xmit.name == "local"


FLOW = st.tuples(
    st.integers(0, len(SERVICES6) - 1),
    st.integers(0, len(CLIENTS6) - 1),
    st.integers(0, len(PORTS) - 1),
)
STEP = st.tuples(
    st.sampled_from(("in",) * 6 + ("out",) * 6 + ("partial", "expire", "config")),
    st.integers(0, 2),
    st.integers(0, 1),
    FLAGS,
    st.sampled_from((0, 1, 100, 1300, 1400)),
    st.sampled_from((0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6)),
    st.integers(0, 1500),
    st.integers(0, 255),
    st.sampled_from((0.0, 0.0, 0.5, 7.0, 61.0, 400.0)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(FLOW, min_size=1, max_size=3), st.lists(STEP, min_size=1, max_size=60))
def test_fused_and_general_paths_agree_on_everything_for_ipv6(flows, steps):
    fused, general = director(True), director(False)
    now = 1.0
    for kind, flow, dest, flags, size, spoil, at, value, dt in steps:
        service, client, port = flows[flow % len(flows)]
        now += dt
        if kind == "expire":
            assert fused.expire(now) == general.expire(now)
        elif kind == "config":
            for d in (fused, general):
                configure(d, bool(value & 1))
        else:
            raw = variant(
                packet(kind != "in", service, client, port, dest, flags, size, spoil), spoil, at,
                value,
            )  # fmt: skip
            a, b = bytearray(raw), bytearray(raw)
            expected = not spoil and must_fuse(general, kind != "in", raw)
            before = fused.general
            if kind == "in":
                va, vb = fused.hook_in(a, now), general.hook_in(b, now)
            else:
                info = SKB_CSUMNOTREADY | (SKB_GSO if value & 2 else 0) if kind == "partial" else 0
                va, vb = fused.hook_out(a, now, info), general.hook_out(b, now, info)
            assert same(va, vb), (va, vb)
            assert a == b
            assert not expected or fused.general == before, "fell back to the general path"
        assert state(fused) == state(general)


def test_an_established_ipv6_flow_takes_the_fused_path():
    """Not only agreement: the fused path is taken (no general-path parse) for an
    established flow's segments both ways."""
    d = director(True)
    d.hook_in(tcp6(CLIENT6, VIP6, 40000, 80, SYN), 1.0)
    d.hook_out(tcp6(RS6_2, CLIENT6, 8080, 40000, SYN | ACK), 1.0)
    d.hook_in(tcp6(CLIENT6, VIP6, 40000, 80, ACK), 1.0)
    calls: list[str] = []
    general_in, general_out = d._in_general, d._out_general
    d._in_general = lambda *args: calls.append("in") or general_in(*args)  # type: ignore[method-assign]
    d._out_general = lambda *args: calls.append("out") or general_out(*args)  # type: ignore[method-assign]
    _, data = d.hook_in(tcp6(CLIENT6, VIP6, 40000, 80, ACK | PSH, b"x"), 2.0)
    assert bytes(data) == bytes(tcp6(CLIENT6, RS6_2, 40000, 8080, ACK | PSH, b"x", hlim=60))
    _, data = d.hook_out(tcp6(RS6_2, CLIENT6, 8080, 40000, ACK, b"y"), 2.0)
    assert bytes(data) == bytes(tcp6(VIP6, CLIENT6, 80, 40000, ACK, b"y"))
    # A reply with a partial checksum (not GSO) leaves with its whole checksum.
    reply = tcp6(RS6_2, CLIENT6, 8080, 40000, ACK, b"z")
    reply[56:58] = seed6(a6(RS6_2), a6(CLIENT6), 6, len(reply) - 40).to_bytes(2, "big")
    _, data = d.hook_out(reply, 2.0, SKB_CSUMNOTREADY)
    assert bytes(data) == bytes(tcp6(VIP6, CLIENT6, 80, 40000, ACK, b"z"))
    assert calls == []


def test_a_short_ipv6_connection_takes_the_fused_path_but_for_its_syn():
    """test_fused's short connections in IPv6: through NAT (closed by the real server
    first, or by the client and then reset) and the local node, every segment after
    the client's SYN is fused, those that change the state too, with secure_tcp's
    tables and without, with a sync master and without, and each lands in the state
    of tcp_states[] (net/netfilter/ipvs/ip_vs_proto_tcp.c), the fused director
    agreeing with the general one on everything after every segment."""
    for secure in (False, True):
        for synced in (False, True):
            for service, segments in ((0, SHORT_NAT), (0, CLIENT_CLOSES), (2, SHORT_INPUT_ONLY)):
                fused, general = director(True), director(False)
                assert isinstance(fused, Spy)
                for d in (fused, general):
                    change(d, "secure", secure)
                    change(d, "sync", synced)
                now = 1.0
                rs = 0  # the real server rr chose, once it did
                for (out, flags, size), expected in segments:
                    now += 0.25
                    raw = packet(out, service, 0, 0, rs, flags, size, 0)
                    a, b = bytearray(raw), bytearray(raw)
                    before = fused.general
                    if out:
                        va, vb = fused.hook_out(a, now), general.hook_out(b, now)
                    else:
                        va, vb = fused.hook_in(a, now), general.hook_in(b, now)
                    assert same(va, vb) and a == b
                    assert state(fused) == state(general)
                    assert fused.general == before + (flags == SYN), (service, flags)
                    (conn,) = fused.conns
                    rs = [a6(addr) for addr, _, _ in SERVICES6[service][3]].index(conn.daddr)
                    if not secure:  # secure_tcp holds a NAT connection in SYN_RECV longer
                        assert conn.state == expected, (service, flags, conn.state)
                assert (conn.dest.activeconns, conn.dest.inactconns) == (0, 1)


@settings(max_examples=500)
@given(
    st.sampled_from((6, 17)),
    st.binary(min_size=16, max_size=16),
    st.integers(1, 65535),
    st.sampled_from((1, 0xFFFE, 0xFFFF)) | st.integers(1, 0xFFFF),
    st.binary(min_size=32, max_size=32),
    st.integers(1, 65535),
    st.integers(1, 65535),
    st.booleans(),
)
def test_the_fused_rewrite6_is_rewrite6(protocol, new_addr, new_port, l4_csum, addrs, sport,
                                        dport, inward):  # fmt: skip
    """Whatever the transport checksum held (all ones, garbage; a UDP datagram without
    one is not the fused path's), the one-sum IPv6 update writes the bytes the
    word-by-word update (RFC 1624, adjust128 then adjust16) writes, both ways: the
    general path uses either."""
    raw = (tcp6 if protocol == 6 else udp6)(CLIENT6, VIP6, sport, dport, data=b"p")
    raw[8:40] = addrs
    csum_at = 56 if protocol == 6 else 46
    raw[csum_at : csum_at + 2] = l4_csum.to_bytes(2, "big")
    a, b = bytearray(raw), bytearray(raw)
    addr_at, port_at = (IP6_DADDR, 2) if inward else (IP6_SADDR, 0)
    old = int.from_bytes(raw[addr_at : addr_at + 16], "big") << 16 | (sport, dport)[port_at // 2]
    rewrite6(parse(a), addr_at, port_at, new_addr, new_port)
    rewrite_fused6(b, protocol, addr_at, 40 + port_at, old,
                   int.from_bytes(new_addr, "big") << 16 | new_port)  # fmt: skip
    assert a == b
