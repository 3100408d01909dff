"""The fused established-flow path (Director.hook_in/hook_out with ``fused``) against
the general path (``hook_in_general``/``hook_out_general``, every step of ip_vs_in and
ip_vs_out in turn): the same bytes out, the same verdicts, the same connection state,
counters and timers, packet after packet.

The general path's own fidelity is what the golden tests prove (they run with the
fused path on, so they prove it too wherever it is taken); here random sequences of
packets, good and bad, in and out, through NAT, DR, TUN, local-node and persistent
services, go through two directors, one fused and one not, and everything is compared
after every packet.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import dpkt
from hypothesis import given, settings
from hypothesis import strategies as st

from director.core.conn import Conn
from director.core.engine import Director
from director.core.packet import IPPROTO_UDP, Packet, PacketError, parse, parse_plain4
from director.core.proto_tcp import (
    CLOSE,
    ESTABLISHED,
    FIN_WAIT,
    SYN_RECV,
    TIME_WAIT,
)
from director.core.route import Route
from director.core.sync import IP_VS_STATE_MASTER, Master
from director.core.xmit import ACCEPT, DIRECT, SEND, Verdict
from director.core.xmit.nat import rewrite, rewrite_fused
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import ACK, FIN, RS1, RS2, RST, SYN, VIP, tcp, udp

VIP2 = "203.0.113.6"
RS_LAN = "198.18.0.4"
RS_REMOTE = "198.19.0.2"
RS_SELF = "198.18.0.1"
CLIENTS = ("203.0.113.10", "203.0.113.11", "198.51.100.7")
PORTS = (40000, 40001, 5353)
PSH = dpkt.tcp.TH_PUSH

# (protocol, VIP, port, scheduler, persistent, real servers as (addr, port, method))
SERVICES: tuple[tuple[str, str, int, int | None, tuple[tuple[str, int, str], ...]], ...] = (
    ("tcp", VIP, 80, None, ((RS1, 80, "masq"), (RS2, 8080, "masq"))),
    ("udp", VIP, 53, 30, ((RS1, 53, "masq"),)),
    ("udp", VIP, 54, None, ((RS2, 54, "masq"),)),
    ("tcp", VIP, 8080, None, ((RS_LAN, 8080, "droute"),)),
    ("tcp", VIP, 8443, 60, ((RS_REMOTE, 8443, "tunnel"),)),
    ("udp", VIP, 5353, None, ((RS_REMOTE, 5353, "tunnel"),)),
    ("tcp", VIP, 9000, None, ((RS_SELF, 9000, "masq"),)),
    ("tcp", VIP2, 80, None, ((RS2, 80, "masq"),)),
)
ROUTES = {
    RS1: Route(ifindex=2, source=socket.inet_aton("198.18.0.1"), mtu=1500),
    RS2: Route(ifindex=2, source=socket.inet_aton("198.18.0.1"), mtu=576),
    RS_LAN: Route(ifindex=2, source=socket.inet_aton("198.18.0.1"), mtu=600),
    RS_REMOTE: Route(ifindex=3, source=socket.inet_aton("198.19.0.1"), mtu=620, onlink=False),
    RS_SELF: Route(ifindex=1, source=socket.inet_aton(RS_SELF), mtu=65536, local=True),
}


def config(fewer: bool = False) -> Config:
    """The services; ``fewer``: each one's last real server removed, where it has two."""
    return Config(
        services=tuple(
            ServiceConf(
                proto, vip, port, scheduler="rr", persistent=persistent,
                dests=tuple(DestConf(addr, rport, method)
                            for addr, rport, method in dests[: 1 if fewer else None]),
            )
            for proto, vip, port, persistent, dests in SERVICES
        )
    )  # fmt: skip


def routes(d: Director, lost: bool = False) -> None:
    """The routes the shell would find; ``lost``: none toward the LAN's servers."""
    for svc in d.services:
        for dest in svc.dests:
            addr = socket.inet_ntoa(dest.addr)
            dest.route = None if lost and addr in (RS_LAN, RS2) else ROUTES[addr]


def build(d: Director) -> Director:
    d.configure(config())
    routes(d)
    return d


def change(d: Director, what: str, on: bool) -> None:
    """What else moves between packets: the configuration (a real server removed,
    so its connections see an unavailable one), routes, secure_tcp's state table
    (the defence switches it), a sync master (which syncs an entry on its state
    changes: ip_vs_sync_conn_needed), expire_nodest_conn."""
    if what == "config":
        d.configure(config(fewer=on))
        routes(d)
    elif what == "route":
        routes(d, lost=on)
    elif what == "secure":
        d.tcp.secure(on)
    elif what == "sync":
        d.set_sync(IP_VS_STATE_MASTER, Master(0, 1472, d.sysctls)) if on else d.set_sync(0, None)
    else:
        d.sysctls.expire_nodest_conn = int(on)


def director(fused: bool) -> Director:
    d = Director()
    d.fused = fused
    return build(d)


def state(d: Director) -> tuple[Any, ...]:
    """Everything a packet may change: each entry's fields, timer and sync record,
    every counter, what the sync master queued."""
    conns = sorted(
        (
            c.template, c.protocol, c.caddr, c.cport, c.vaddr, c.vport, c.daddr, c.dport,
            c.state, c.timeout, c.expires, c.in_pkts, c.inactive, c.nooutput, c.n_control,
            None if c.control is None else (c.control.caddr, c.control.vport), c.xmit.name,
            c.sync,
        )
        for c in d.conns.all()
    )  # fmt: skip
    m = d.sync_master
    sync = None
    if m is not None:
        sync = (m.entries, m.dropped, list(m.queue), m.buff and (m.buff.message(), m.buff.firstuse))
    dests = [
        (dest.key, dest.activeconns, dest.inactconns, dest.persistconns, dest.overloaded,
         dest.stats.counts())
        for svc in d.services
        for dest in svc.dests
    ]  # fmt: skip
    services = [svc.stats.counts() for svc in d.services]
    return (conns, dests, services, d.totals.counts(), dict(d.verdicts), dict(d.drops),
            dict(d.passes), len(d.conns), sync)  # fmt: skip


def packet(
    out: bool, service: int, client: int, port: int, dest: int, flags: int, size: int
) -> bytearray:
    proto, vip, vport, _, dests = SERVICES[service]
    caddr, cport = CLIENTS[client], PORTS[port]
    raddr, rport, _ = dests[dest % len(dests)]
    data = b"d" * size
    if proto == "udp":
        return udp(raddr, caddr, rport, cport, data) if out else udp(caddr, vip, cport, vport, data)
    if out:
        return tcp(raddr, caddr, rport, cport, flags, data)
    return tcp(caddr, vip, cport, vport, flags, data)


def variant(raw: bytearray, kind: int, at: int, value: int) -> bytearray:
    """The packet as sent (0), or spoilt so that the fused path must not take it."""
    raw = bytearray(raw)
    if kind == 1:  # DF set: the too-big answers of NAT, DR and TUN
        raw[6] |= 0x40
        struct.pack_into("!H", raw, 10, 0)
        struct.pack_into("!H", raw, 10, dpkt.in_cksum(bytes(raw[:20])))
    elif kind == 2:  # link-layer padding
        raw += b"\x00" * (at % 7 + 1)
    elif kind == 3:  # a byte changed anywhere (flags, lengths, version, checksums...)
        raw[at % len(raw)] = value
    elif kind == 4:  # cut short
        del raw[max(0, len(raw) - (at % 24 + 1)) :]
    elif kind == 5 and raw[9] == 17:  # a UDP datagram sent without a checksum
        raw[26:28] = b"\x00\x00"
    elif kind == 6:  # a fragment
        raw[6] |= 0x20
    elif kind == 7 and len(raw) >= 20:  # TTL 1 or 0: decrement_ttl's time exceeded
        raw[8] = at % 2
        struct.pack_into("!H", raw, 10, 0)
        struct.pack_into("!H", raw, 10, dpkt.in_cksum(bytes(raw[:20])))
    return raw


def same(a: Verdict, b: Verdict) -> bool:
    if a[0] != b[0] or type(a[1]) is not type(b[1]):
        return False
    return a[1] == b[1]


# Segments of every row of the state table (tcp_state_idx): the ACK row, which moves
# a connection out of SYN_RECV, FIN_WAIT, LAST_ACK..., FIN and RST (each with ACK or
# not, FIN with RST), SYN, and none (CLOSE).
FLAGS = st.sampled_from(
    (ACK, ACK | PSH, ACK, ACK, SYN, SYN | ACK, FIN | ACK, FIN | ACK, FIN | ACK | PSH, FIN, RST,
     RST | ACK, RST | FIN, 0, PSH, SYN | FIN)
)  # fmt: skip
# A flow: (service, client, client port).  Each example picks a few and its packets
# belong to them, so that connections are made, used, changed and refused in turn.
FLOW = st.tuples(
    st.integers(0, len(SERVICES) - 1),
    st.integers(0, len(CLIENTS) - 1),
    st.integers(0, len(PORTS) - 1),
)
STEP = st.tuples(
    st.sampled_from(
        ("in",) * 6 + ("out",) * 6 + ("expire", "config", "route", "secure", "sync", "nodest")
    ),
    st.integers(0, 2),
    st.integers(0, 1),
    FLAGS,
    st.sampled_from((0, 1, 100, 590, 1400)),
    st.sampled_from((0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7)),
    st.integers(0, 1500),
    st.integers(0, 255),
    st.sampled_from((0.0, 0.0, 0.5, 1.0, 7.0, 61.0, 130.0, 400.0)),
)


Step = tuple[str, int, int, int, int, int, int, int, float]


class Spy(Director):
    """A director that counts the packets its general path takes."""

    def __init__(self) -> None:
        super().__init__()
        self.general = 0

    def _in_general(
        self, buf: bytearray, now: float, mark: int, found: Any, pkt: Any = None
    ) -> Verdict:
        self.general += 1
        return super()._in_general(buf, now, mark, found, pkt)

    def _out_general(self, buf: bytearray, now: float, found: Any, skb_info: int = 0) -> Verdict:
        self.general += 1
        return super()._out_general(buf, now, found, skb_info)


def fusable(d: Director, out: bool, raw: bytearray) -> tuple[Packet, Conn] | None:
    """The packet and the known connection the fused path is to take it for, before
    the transmitter's own question, as ``d`` (the general director, before the packet)
    stands: a TCP segment of a state table row (any row but SYN's on the way in,
    is_new_conn's) or a UDP datagram; on the way out a NAT reply past the first, on the
    way in one whose real server is still there."""
    pkt = parse(bytearray(raw))
    flags = pkt.tcp_flags
    if pkt.protocol != IPPROTO_UDP and not flags & (FIN | SYN | RST | ACK):
        return None  # no row: CLOSE
    if flags & SYN and not out:
        return None  # is_new_conn
    if out:
        conn = d.conns.find_out(pkt.protocol, pkt.saddr, pkt.sport, pkt.daddr, pkt.dport)
        if conn is None or conn.nooutput or conn.xmit.name != "masq":
            return None
        return pkt, conn
    conn = d.conns.find_in(pkt.protocol, pkt.saddr, pkt.sport, pkt.daddr, pkt.dport)
    if conn is None or not conn.dest.available:
        return None
    return pkt, conn


def must_fuse(d: Director, out: bool, raw: bytearray) -> bool:
    """Whether the fused path is to take this packet (``fusable``, and its method sends
    it without a question: NAT and the local node, DR and TUN while their route is
    there).  Whether it changes the connection's state does not matter.  For an
    unspoilt packet only (no DF, no TTL of 1, no padding...)."""
    found = fusable(d, out, raw)
    if found is None:
        return False
    _, conn = found
    if out:
        return True
    if conn.xmit.name in ("droute", "tunnel"):
        return conn.dest.route is not None
    return conn.xmit.name in ("masq", "local")


def run(flows: list[tuple[int, int, int]], steps: list[Step]) -> None:
    """The same steps through a fused director and a general one, compared after each;
    an unspoilt packet the fused path is to take (``must_fuse``) must not reach the
    fused director's general path."""
    fused, general = build(Spy()), director(False)
    now = 1.0
    for kind, flow, dest, flags, size, spoil, at, value, dt in steps:
        service, client, port = flows[flow % len(flows)]
        now += dt
        if kind == "expire":
            assert fused.expire(now) == general.expire(now)
        elif kind not in ("in", "out"):
            for d in (fused, general):
                change(d, kind, bool(value & 1))
        else:
            raw = variant(packet(kind == "out", service, client, port, dest, flags, size),
                          spoil, at, value)  # fmt: skip
            a, b = bytearray(raw), bytearray(raw)
            expected = not spoil and must_fuse(general, kind == "out", raw)
            before = fused.general
            if kind == "in":
                va, vb = fused.hook_in(a, now), general.hook_in(b, now)
            else:
                va, vb = fused.hook_out(a, now), general.hook_out(b, now)
            assert same(va, vb), (va, vb)
            assert a == b  # the buffer as rewritten in place
            assert not expected or fused.general == before, "fell back to the general path"
        assert state(fused) == state(general)


@settings(max_examples=1000, deadline=None)
@given(st.lists(FLOW, min_size=1, max_size=3), st.lists(STEP, min_size=1, max_size=80))
def test_fused_and_general_paths_agree_on_everything(flows, steps):
    run(flows, steps)


def step(kind: str, flow: int = 0, flags: int = ACK, size: int = 0, spoil: int = 0,
         on: bool = False, dt: float = 0.0, dest: int = 0) -> Step:  # fmt: skip
    return (kind, flow, dest, flags, size, spoil, 0, int(on), dt)


def handshake(flow: int = 0) -> list[Step]:
    return [step("in", flow, SYN), step("in", flow), step("out", flow, SYN | ACK)]


# Each case the fused path must leave to the general one, once the flow is established:
# the packets that follow are compared as in the property test.
FALLBACKS: dict[str, tuple[list[tuple[int, int, int]], list[Step]]] = {
    "real server removed": ([(0, 0, 0), (0, 0, 1)], [
        *handshake(0), *handshake(1), step("config", on=True), step("in", 0), step("in", 1),
        step("nodest", on=True), step("in", 0, SYN), step("in", 1)]),
    "state changes": ([(0, 0, 0)], [
        *handshake(), step("in", flags=FIN | ACK), step("out", flags=FIN | ACK), step("in"),
        step("out", flags=RST), step("in", flags=0), step("in", flags=PSH)]),
    "secure_tcp tables": ([(3, 0, 0), (0, 1, 1)], [
        step("secure", on=True), *handshake(0), *handshake(1), step("in", 0), step("in", 1),
        step("out", 1), step("in", 1), step("secure"), step("in", 0), step("in", 1)]),
    "too big, no route": ([(3, 0, 0), (4, 0, 1), (7, 1, 0)], [
        *handshake(0), *handshake(1), *handshake(2),
        *(step("in", f, size=1400, spoil=spoil) for f in range(3) for spoil in (0, 1)),
        step("route", on=True), step("in", 0), step("in", 2), step("out", 2)]),
    "odd packets": ([(0, 0, 0), (1, 0, 0)], [
        *handshake(0), step("in", 1, size=3), step("out", 1),
        *(step(kind, f, spoil=spoil) for kind in ("in", "out") for f in (0, 1)
          for spoil in (2, 4, 5, 6))]),
    "first reply of a DR flow": ([(3, 0, 0)], [
        step("in", flags=SYN), step("in"), step("out", flags=ACK), step("in"), step("out")]),
    "timers": ([(0, 0, 0), (1, 1, 1)], [
        *handshake(0), step("in", 1), step("in", 0, dt=100.0), step("in", 1, dt=250.0),
        step("expire", dt=60.0), step("in", 1), step("expire", dt=301.0), step("in", 1)]),
}  # fmt: skip


def test_every_case_the_fused_path_leaves_alone_agrees():
    for name, (flows, steps) in FALLBACKS.items():
        try:
            run(flows, steps)
        except AssertionError as err:
            raise AssertionError(f"{name}: {err}") from err


def test_the_common_case_takes_the_fused_path():
    """Established TCP both ways, UDP both ways (a persistent service's reply too), DR,
    TUN and the local node: none of these packets reaches the general path, and each
    gets the verdict of its method."""
    d = build(Spy())
    c = CLIENTS[0]
    for vport in (80, 8080, 8443, 9000):
        d.hook_in(tcp(c, VIP, 40000, vport, SYN), 1.0)
        d.hook_in(tcp(c, VIP, 40000, vport, ACK), 1.0)  # SYN_RECV to ESTABLISHED
    nat = next(conn for conn in d.conns if conn.vport == 80)
    rs, rport = socket.inet_ntoa(nat.daddr), nat.dport
    d.hook_out(tcp(rs, c, rport, 40000, SYN | ACK), 1.0)
    d.hook_in(udp(c, VIP, 40000, 53, b"q"), 1.0)
    d.hook_in(udp(c, VIP, 40000, 5353, b"q"), 1.0)
    d.general = 0
    assert d.hook_in(tcp(c, VIP, 40000, 80, ACK, b"x"), 2.0)[0] == SEND
    assert d.hook_out(tcp(rs, c, rport, 40000, ACK | PSH, b"y"), 2.0)[0] == ACCEPT
    assert d.hook_in(udp(c, VIP, 40000, 53, b"q"), 2.0)[0] == SEND
    assert d.hook_out(udp(RS1, c, 53, 40000, b"a"), 2.0)[0] == ACCEPT
    assert d.hook_in(tcp(c, VIP, 40000, 8080, ACK, b"x"), 2.0)[0] == DIRECT
    assert d.hook_in(tcp(c, VIP, 40000, 8443, ACK, b"x"), 2.0)[0] == SEND
    assert d.hook_in(udp(c, VIP, 40000, 5353, b"q"), 2.0)[0] == SEND
    assert d.hook_in(tcp(c, VIP, 40000, 9000, ACK, b"x"), 2.0) == (ACCEPT, None)
    assert d.general == 0
    # A segment of no row, a SYN, an unknown flow: the general path.
    d.hook_in(tcp(c, VIP, 40000, 80, PSH), 3.0)
    d.hook_in(tcp(c, VIP, 40001, 80, SYN), 3.0)
    d.hook_out(tcp(rs, c, rport, 40009, ACK), 3.0)
    assert d.general == 3


# A short HTTP connection (ab without -k) as the client and the real server send it:
# (out, flags, bytes of payload), then the state each segment leaves the connection in,
# by tcp_states[] of net/netfilter/ipvs/ip_vs_proto_tcp.c: INPUT and OUTPUT for NAT,
# INPUT-ONLY for DR and TUN, whose replies the director never sees.
SHORT_NAT = (
    ((False, SYN, 0), SYN_RECV),  # sNO -> sSR (INPUT syn)
    ((True, SYN | ACK, 0), SYN_RECV),  # sSR -> sSR (OUTPUT syn)
    ((False, ACK, 0), ESTABLISHED),  # sSR -> sES (INPUT ack)
    ((False, ACK | PSH, 100), ESTABLISHED),
    ((True, ACK | PSH, 100), ESTABLISHED),
    ((True, FIN | ACK, 0), FIN_WAIT),  # sES -> sFW (OUTPUT fin)
    ((False, ACK, 0), FIN_WAIT),  # sFW -> sFW (INPUT ack)
    ((False, FIN | ACK, 0), TIME_WAIT),  # sFW -> sTW (INPUT fin)
    ((True, ACK, 0), TIME_WAIT),  # sTW -> sTW (OUTPUT ack)
)
SHORT_INPUT_ONLY = (
    ((False, SYN, 0), SYN_RECV),  # sNO -> sSR (INPUT-ONLY syn)
    ((False, ACK, 0), ESTABLISHED),  # sSR -> sES (INPUT-ONLY ack)
    ((False, ACK | PSH, 100), ESTABLISHED),
    ((False, ACK, 0), ESTABLISHED),
    ((False, FIN | ACK, 0), FIN_WAIT),  # sES -> sFW (INPUT-ONLY fin)
    ((False, ACK, 0), FIN_WAIT),  # sFW -> sFW (INPUT-ONLY ack)
    ((False, RST, 0), CLOSE),  # sFW -> sCL (INPUT-ONLY rst)
)
# The same NAT connection closed by the client first, then reset by the real server.
CLIENT_CLOSES = (
    ((False, SYN, 0), SYN_RECV),
    ((True, SYN | ACK, 0), SYN_RECV),
    ((False, ACK | PSH, 100), ESTABLISHED),  # sSR -> sES (INPUT ack)
    ((False, FIN | ACK, 0), 7),  # sES -> sCW (INPUT fin): CLOSE_WAIT
    ((True, FIN | ACK, 0), TIME_WAIT),  # sCW -> sTW (OUTPUT fin)
    ((True, RST, 0), TIME_WAIT),  # sTW -> sTW (OUTPUT rst)
    ((False, RST | ACK, 0), CLOSE),  # sTW -> sCL (INPUT rst)
)


def test_a_short_connection_takes_the_fused_path_but_for_its_syn():
    """Every segment after the client's SYN is fused, those that move the state too
    (SYN_RECV to ESTABLISHED, the FINs to FIN_WAIT, CLOSE_WAIT and TIME_WAIT, a RST to
    CLOSE) and the real server's SYN-ACK, through NAT both ways, DR, TUN and the local
    node, a persistent service's (8443) too, with secure_tcp's tables and without,
    with a sync master and without; each lands in the kernel's state, and the fused
    director agrees with the general one on everything after every segment (the
    real server's active and inactive counters, the template assured, what the
    sync master queued)."""
    cases = [
        (0, SHORT_NAT), (0, CLIENT_CLOSES), (7, SHORT_NAT),
        (3, SHORT_INPUT_ONLY), (4, SHORT_INPUT_ONLY), (6, SHORT_INPUT_ONLY),
    ]  # fmt: skip
    for secure in (False, True):
        for synced in (False, True):
            for service, segments in cases:
                fused, general = build(Spy()), director(False)
                for d in (fused, general):
                    change(d, "secure", secure)
                    change(d, "sync", synced)
                now = 1.0
                rs = 0  # the real server rr chose, once it did
                for (out, flags, size), expected in segments:
                    now += 0.25
                    raw = packet(out, service, 0, 0, rs, flags, size)
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
                    rs = [socket.inet_aton(a) for a, _, _ in SERVICES[service][4]].index(conn.daddr)
                    if not secure:  # secure_tcp holds a NAT connection in SYN_RECV longer
                        assert conn.state == expected, (service, flags, conn.state)
                dest = conn.dest
                assert (dest.activeconns, dest.inactconns) == (0, 1)


@settings(max_examples=500)
@given(
    st.sampled_from((6, 17)),
    st.binary(min_size=4, max_size=4),
    st.integers(1, 65535),
    st.sampled_from((0, 1, 0xFFFE, 0xFFFF)) | st.integers(0, 0xFFFF),
    st.sampled_from((0, 1, 0xFFFE, 0xFFFF)) | st.integers(0, 0xFFFF),
    st.binary(min_size=8, max_size=8),
    st.integers(1, 65535),
    st.integers(1, 65535),
    st.booleans(),
)
def test_the_fused_rewrite_is_rewrite(protocol, new_addr, new_port, ip_csum, l4_csum, addrs,
                                      sport, dport, inward):  # fmt: skip
    """Whatever the checksums held (zeros, all ones, garbage), the one-sum update
    writes the bytes the word-by-word update (RFC 1624, adjust32 then adjust16)
    writes, both ways."""
    raw = (tcp if protocol == 6 else udp)("198.51.100.1", "198.51.100.2", sport, dport, data=b"p")
    raw[12:20] = addrs
    struct.pack_into("!H", raw, 10, ip_csum)
    struct.pack_into("!H", raw, 36 if protocol == 6 else 26, l4_csum)
    a, b = bytearray(raw), bytearray(raw)
    addr_at, port_at = (16, 2) if inward else (12, 0)
    old = int.from_bytes(raw[addr_at : addr_at + 4], "big") << 16 | (sport, dport)[port_at // 2]
    rewrite(parse(a), addr_at, port_at, new_addr, new_port)
    rewrite_fused(
        b, protocol, addr_at, 20 + port_at, old, int.from_bytes(new_addr, "big") << 16 | new_port
    )
    assert a == b


@settings(max_examples=200)
@given(st.sampled_from((6, 17)), st.binary(min_size=4, max_size=4), st.integers(1, 65535),
       st.binary(max_size=40), st.booleans())  # fmt: skip
def test_the_fused_rewrite_equals_a_full_recompute(protocol, new_addr, new_port, data, inward):
    """Where the checksums were complete, the result is what dpkt computes afresh."""
    raw = (tcp if protocol == 6 else udp)("203.0.113.10", VIP, 40000, 80, data=data)
    addr_at, port_at = (16, 22) if inward else (12, 20)
    old = int.from_bytes(raw[addr_at : addr_at + 4], "big") << 16 | (40000, 80)[port_at - 20 >> 1]
    rewrite_fused(
        raw, protocol, addr_at, port_at, old, int.from_bytes(new_addr, "big") << 16 | new_port
    )
    ip = dpkt.ip.IP(bytes(raw))
    ip.sum = 0
    ip.data.sum = 0
    expected = dpkt.ip.IP(bytes(ip))  # serialising recomputes both checksums
    if protocol == 17 and expected.data.sum == 0:
        expected.data.sum = 0xFFFF
    assert bytes(raw) == bytes(expected)


PACKET_FIELDS = ("buf", "protocol", "saddr", "daddr", "sport", "dport", "l4", "length",
                 "tcp_flags", "mark", "skb_info")  # fmt: skip


@settings(max_examples=1000)
@given(
    st.sampled_from((6, 17, 1, 47)),
    st.binary(min_size=8, max_size=60),
    st.sampled_from((0, 0, 1, 0x20)),
    st.integers(0, 0xFFFFFFFF),
)
def test_parse_plain4_reads_what_parse_reads(protocol, rest, padding, mark):
    """A client's packet without an entry goes to the general path as parse_plain4
    read it from the fused path's view of the header (hook_in): for every plain IPv4
    header (20 bytes, total length the buffer's, not a fragment) and any transport
    bytes after it, the same Packet as ``parse`` (every field), or None where
    ``parse`` raises or hands the packet to the ICMP handlers."""
    body = bytes(rest) + b"\x00" * padding
    raw = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0x4000, 64,
                                protocol, 0, socket.inet_aton("203.0.113.10"),
                                socket.inet_aton(VIP)) + body)  # fmt: skip
    saddr, daddr = struct.unpack_from("!II", raw, 12)
    sport, dport = struct.unpack_from("!HH", raw, 20)
    plain = parse_plain4(bytearray(raw), protocol, saddr, daddr, sport, dport, mark)
    try:
        pkt = parse(bytearray(raw), mark)
    except PacketError:
        assert plain is None
        return
    assert plain is not None
    assert [getattr(plain, f) for f in PACKET_FIELDS] == [getattr(pkt, f) for f in PACKET_FIELDS]
