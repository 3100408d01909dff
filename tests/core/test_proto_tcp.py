"""The IPVS TCP state machine: table lookups, counters and timeouts."""

from __future__ import annotations

import dpkt
import pytest

from director.core import proto_tcp as t
from director.core.engine import Director
from director.core.packet import TH_ACK, TH_FIN, TH_RST, TH_SYN
from director.model.config import Config, DestConf, ServiceConf, Timeouts
from tests.core.packets import ACK, CLIENT, FIN, RS1, RS2, SYN, VIP, tcp


@pytest.mark.parametrize(
    ("direction", "flags", "state", "expected"),
    [
        # A few cells read off tcp_states[] in ip_vs_proto_tcp.c.
        (t.INPUT, TH_SYN, t.NONE, t.SYN_RECV),
        (t.INPUT, TH_ACK, t.SYN_RECV, t.ESTABLISHED),
        (t.INPUT, TH_ACK, t.NONE, t.ESTABLISHED),
        (t.INPUT, TH_FIN | TH_ACK, t.ESTABLISHED, t.CLOSE_WAIT),
        (t.INPUT_ONLY, TH_FIN | TH_ACK, t.ESTABLISHED, t.FIN_WAIT),
        (t.OUTPUT, TH_FIN | TH_ACK, t.ESTABLISHED, t.FIN_WAIT),
        (t.OUTPUT, TH_FIN | TH_ACK, t.CLOSE_WAIT, t.TIME_WAIT),
        (t.OUTPUT, TH_SYN | TH_ACK, t.SYN_RECV, t.SYN_RECV),
        (t.INPUT, TH_RST | TH_ACK, t.ESTABLISHED, t.CLOSE),
        (t.OUTPUT, TH_RST, t.SYN_SENT, t.SYN_SENT),
        (t.INPUT, TH_SYN | TH_FIN, t.ESTABLISHED, t.ESTABLISHED),  # SYN row wins over FIN
        (t.INPUT, 0, t.ESTABLISHED, t.CLOSE),  # no flag at all
    ],
)
def test_next_state(direction, flags, state, expected):
    assert t.next_state(direction, flags, state) == expected


def test_table_shape_and_defaults():
    for direction in t.TCP_STATES:
        assert len(direction) == 4
        assert all(len(row) == len(t.STATE_NAMES) for row in direction)
    assert t.DEFAULT_TIMEOUTS[t.ESTABLISHED] == 900
    assert t.DEFAULT_TIMEOUTS[t.FIN_WAIT] == 120
    assert t.DEFAULT_TIMEOUTS[t.SYN_RECV] == 60
    assert t.DEFAULT_TIMEOUTS[t.TIME_WAIT] == 120
    assert t.DEFAULT_TIMEOUTS[t.CLOSE] == 10


def nat_director(timeouts: Timeouts | None = None) -> Director:
    d = Director()
    d.configure(
        Config(
            services=(
                ServiceConf("tcp", VIP, 80, scheduler="rr", dests=(DestConf(RS1, 80, "masq"),)),
            ),
            timeouts=timeouts or Timeouts(),
        )
    )
    return d


def test_a_whole_nat_connection_moves_the_counters():
    d = nat_director()
    dest = next(iter(d.services)).dests[0]
    steps = [
        ("in", SYN, "SYN_RECV", 1, 0, 60),  # SYN_RECV is active (tcp_state_active_table)
        ("out", SYN | ACK, "SYN_RECV", 1, 0, 60),
        ("in", ACK, "ESTABLISHED", 1, 0, 900),
        ("in", FIN | ACK, "CLOSE_WAIT", 0, 1, 60),
        ("out", FIN | ACK, "TIME_WAIT", 0, 1, 120),
        ("in", ACK, "TIME_WAIT", 0, 1, 120),
    ]
    for now, (way, flags, state, active, inactive, timeout) in enumerate(steps):
        if way == "in":
            d.hook_in(tcp(CLIENT, VIP, 40000, 80, flags), float(now))
        else:
            d.hook_out(tcp(RS1, CLIENT, 80, 40000, flags), float(now))
        (conn,) = list(d.conns)
        assert (conn.state_name, dest.activeconns, dest.inactconns) == (state, active, inactive)
        assert conn.expires == now + timeout


def test_set_timeout_changes_established_and_fin_wait_only():
    d = nat_director(Timeouts(tcp=30, tcpfin=7, udp=9))
    assert d.tcp.timeouts[t.ESTABLISHED] == 30
    assert d.tcp.timeouts[t.FIN_WAIT] == 7
    assert d.tcp.timeouts[t.TIME_WAIT] == 120
    assert d.udp.timeouts[0] == 9


def test_expiry_unbinds_and_empties_the_table():
    d = nat_director()
    dest = next(iter(d.services)).dests[0]
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0)  # SYN_RECV: 60 s
    assert d.expire(59.0) == 0
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK), 59.0)  # ESTABLISHED: 900 s from 59
    assert d.expire(200.0) == 0
    assert d.expire(959.5) == 1
    assert len(d.conns) == 0
    assert (dest.activeconns, dest.inactconns) == (0, 0)


# tcp_states[] and tcp_states_dos[] as net/netfilter/ipvs/ip_vs_proto_tcp.c writes them
# (current tree), rows syn, fin, ack, rst for INPUT, OUTPUT and INPUT-ONLY.
KERNEL_TCP_STATES = """
sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR
sCL, sCW, sSS, sTW, sTW, sTW, sCL, sCW, sLA, sLI, sTW
sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES
sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sSR
sSS, sES, sSS, sSR, sSS, sSS, sSS, sSS, sSS, sLI, sSR
sTW, sFW, sSS, sTW, sFW, sTW, sCL, sTW, sLA, sLI, sTW
sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sLA, sES, sES
sCL, sCL, sSS, sCL, sCL, sTW, sCL, sCL, sCL, sCL, sCL
sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR
sCL, sFW, sSS, sTW, sFW, sTW, sCL, sCW, sLA, sLI, sTW
sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES
sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sCL
"""
KERNEL_TCP_STATES_DOS = """
sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSA
sCL, sCW, sSS, sTW, sTW, sTW, sCL, sCW, sLA, sLI, sSA
sES, sES, sSS, sSR, sFW, sTW, sCL, sCW, sCL, sLI, sSA
sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sCL
sSS, sES, sSS, sSA, sSS, sSS, sSS, sSS, sSS, sLI, sSA
sTW, sFW, sSS, sTW, sFW, sTW, sCL, sTW, sLA, sLI, sTW
sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sLA, sES, sES
sCL, sCL, sSS, sCL, sCL, sTW, sCL, sCL, sCL, sCL, sCL
sSA, sES, sES, sSR, sSA, sSA, sSA, sSA, sSA, sSA, sSA
sCL, sFW, sSS, sTW, sFW, sTW, sCL, sCW, sLA, sLI, sTW
sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES
sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sCL
"""
_ABBREV = ("sNO", "sES", "sSS", "sSR", "sFW", "sTW", "sCL", "sCW", "sLA", "sLI", "sSA")


def _kernel_table(text: str) -> tuple[tuple[tuple[int, ...], ...], ...]:
    rows = [tuple(_ABBREV.index(c.strip()) for c in line.split(",")) for line in
            text.strip().splitlines()]  # fmt: skip
    return tuple(tuple(rows[i : i + 4]) for i in (0, 4, 8))


def test_state_tables_are_the_kernels():
    """Every cell of tcp_states[] and tcp_states_dos[] (ip_vs_proto_tcp.c): the ACK row
    for NONE is sES in all four input tables of current trees."""
    assert _kernel_table(KERNEL_TCP_STATES) == t.TCP_STATES
    assert _kernel_table(KERNEL_TCP_STATES_DOS) == t.TCP_STATES_DOS


def test_active_states_are_the_kernels():
    """tcp_state_active_table (ip_vs_proto_tcp.c, since 4.8): SYN_SENT, SYN_RECV, SYNACK
    and ESTABLISHED are active, every other state is not."""
    active = {t.STATE_NAMES[s] for s in range(len(t.STATE_NAMES)) if t.STATE_ACTIVE[s]}
    assert active == {"SYN_SENT", "SYN_RECV", "SYNACK", "ESTABLISHED"}


def test_half_open_connections_count_as_active():
    """set_tcp_state: a SYN moves the new (inactive) entry to SYN_RECV, an active state,
    so a SYN flood shows as ActiveConn and weighs on lc/wlc; a DR entry under
    secure_tcp goes NONE -> SYNACK, active too."""
    d = nat_director()
    dest = next(iter(d.services)).dests[0]
    for port in range(40000, 40010):
        d.hook_in(tcp(CLIENT, VIP, port, 80, SYN), 0.0)
    assert (dest.activeconns, dest.inactconns) == (10, 0)
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, dpkt.tcp.TH_RST), 1.0)  # SYN_RECV + RST: SYN_RECV
    d.hook_in(tcp(CLIENT, VIP, 40001, 80, FIN | ACK), 1.0)  # SYN_RECV + FIN: TIME_WAIT
    assert (dest.activeconns, dest.inactconns) == (9, 1)


def test_a_sloppy_ack_opens_an_established_connection():
    """With sloppy_tcp an ACK may open a connection (tcp_conn_schedule); its entry starts
    in NONE and the INPUT table's ACK row takes NONE to sES (current trees), not sCL."""
    d = nat_director()
    d.sysctls.sloppy_tcp = True
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK, b"mid-stream"), 0.0)
    (conn,) = list(d.conns)
    assert (conn.state_name, conn.dest.activeconns, conn.timeout) == ("ESTABLISHED", 1, 900)


def test_lc_and_the_listing_see_half_open_connections():
    """ip_vs_lc.c ip_vs_dest_conn_overhead is activeconns * 256 + inactconns: with
    SYN_RECV active (tcp_state_active_table), ten half-open connections on RS1 weigh
    2560 against one established on RS2 (256), so lc sends the next client to RS2 (it
    went to RS1 while half-open entries counted 1 each); ``list -n`` shows them under
    ActiveConn."""
    from director.ctl.listing import format_list
    from director.ctl.report import snapshot

    d = Director()
    d.configure(Config(services=(ServiceConf("tcp", VIP, 80, scheduler="lc", dests=(
        DestConf(RS1, 80, "masq"), DestConf(RS2, 80, "masq"))),)))  # fmt: skip
    rs1, rs2 = sorted(next(iter(d.services)).dests, key=lambda x: x.addr)
    rs2.weight = 0  # quiesced while the flood comes in: every SYN goes to RS1
    for port in range(40000, 40010):
        d.hook_in(tcp(CLIENT, VIP, port, 80, SYN), 0.0)
    rs2.weight = 1
    d.hook_in(tcp(CLIENT, VIP, 39999, 80, SYN), 0.0)
    d.hook_in(tcp(CLIENT, VIP, 39999, 80, ACK), 0.0)
    assert (rs1.activeconns, rs1.inactconns, rs2.activeconns) == (10, 0, 1)
    d.hook_in(tcp(CLIENT, VIP, 41000, 80, SYN), 0.0)
    assert next(c for c in d.conns if c.cport == 41000).dest is rs2
    rows = format_list(snapshot(d, (900, 120, 300), 0.0, conns=False)).splitlines()
    row = next(r for r in rows if RS1 in r)
    assert row.split()[-2:] == ["10", "0"]
