"""The IPVS TCP state machine: table lookups, counters and timeouts."""

from __future__ import annotations

import pytest

from director.core import proto_tcp as t
from director.core.engine import Director
from director.core.packet import TH_ACK, TH_FIN, TH_RST, TH_SYN
from director.model.config import Config, DestConf, ServiceConf, Timeouts
from tests.core.packets import ACK, CLIENT, FIN, RS1, SYN, VIP, tcp


@pytest.mark.parametrize(
    ("direction", "flags", "state", "expected"),
    [
        # A few cells read off tcp_states[] in ip_vs_proto_tcp.c.
        (t.INPUT, TH_SYN, t.NONE, t.SYN_RECV),
        (t.INPUT, TH_ACK, t.SYN_RECV, t.ESTABLISHED),
        (t.INPUT, TH_ACK, t.NONE, t.CLOSE),
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
        ("in", SYN, "SYN_RECV", 0, 1, 60),
        ("out", SYN | ACK, "SYN_RECV", 0, 1, 60),
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
