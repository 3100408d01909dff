"""The DoS defences against IPVS's rules (update_defense_level, ip_vs_todrop,
ip_vs_random_dropentry/todrop_entry, tcp_timeout_change) and the table's memory cap."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from director.core.conn import CONN_BYTES
from director.core.defense import _mode
from director.core.engine import Director
from director.core.service import pack_addr
from director.core.xmit import DROP, SEND
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import ACK, CLIENT, RS1, SYN, VIP, tcp, udp

PLENTY, SHORT = 100_000, 512  # pages available, against amemthresh 1024


def director() -> Director:
    d = Director()
    d.configure(Config(services=(
        ServiceConf("tcp", VIP, 80, scheduler="rr", dests=(DestConf(RS1, 80, "masq"),)),
        ServiceConf("udp", VIP, 53, scheduler="rr", dests=(DestConf(RS1, 53, "masq"),)),
    )))  # fmt: skip
    d.defense.rng = random.Random(7)
    return d


@pytest.mark.parametrize(
    ("sysctl", "nomem", "expected"),
    [(0, True, (0, False)), (1, False, (1, False)), (1, True, (2, True)),
     (2, True, (2, True)), (2, False, (1, False)), (3, False, (3, True))],
)  # fmt: skip
def test_the_zero_to_three_switch(sysctl: int, nomem: bool, expected: tuple[int, bool]) -> None:
    assert _mode(sysctl, nomem) == expected


def test_drop_packet_follows_how_short_memory_is() -> None:
    d = director()
    d.sysctls.drop_packet = 1
    d.defend(PLENTY, 0.0)
    assert (d.sysctls.drop_packet, d.defense.drop_rate) == (1, 0)
    d.defend(SHORT, 1.0)  # rate = 1024 // (1024 - 512) = 2
    assert (d.sysctls.drop_packet, d.defense.drop_rate) == (2, 2)
    verdicts = [d.hook_in(tcp(CLIENT, VIP, 40000 + i, 80, SYN), 1.0)[0] for i in range(6)]
    assert verdicts == [SEND, DROP, SEND, DROP, SEND, DROP]
    assert d.drops["defense_drop_packet"] == 3
    d.defend(PLENTY, 2.0)
    assert (d.sysctls.drop_packet, d.defense.drop_rate) == (1, 0)


def test_drop_packet_always_on_uses_am_droprate() -> None:
    d = director()
    d.sysctls.drop_packet, d.sysctls.am_droprate = 3, 4
    d.defend(PLENTY, 0.0)
    verdicts = [d.hook_in(udp(CLIENT, VIP, 5000 + i, 53), 0.0)[0] for i in range(8)]
    assert verdicts.count(DROP) == 2


def test_secure_tcp_holds_nat_connections_in_syn_recv_until_the_server_answers() -> None:
    d = director()
    d.sysctls.secure_tcp = 3
    d.defend(PLENTY, 0.0)
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0)
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK), 0.1)  # a spoofer's blind ACK
    (conn,) = list(d.conns)
    assert conn.state_name == "SYN_RECV"
    d.hook_out(tcp(RS1, CLIENT, 80, 40000, ACK, b"hello"), 0.2)
    assert conn.state_name == "ESTABLISHED"
    d.sysctls.secure_tcp = 0
    d.defend(PLENTY, 1.0)
    d.hook_in(tcp(CLIENT, VIP, 40001, 80, SYN), 1.0)
    d.hook_in(tcp(CLIENT, VIP, 40001, 80, ACK), 1.1)
    assert d.conns.in_tab[next(k for k in d.conns.in_tab if k[2] == 40001)].state_name == (
        "ESTABLISHED"
    )


def test_drop_entry_clears_half_open_entries_and_keeps_busy_ones() -> None:
    d = director()
    d.sysctls.drop_entry = 1
    for i in range(320):  # a SYN flood: half-open entries
        d.hook_in(tcp(f"203.0.113.{10 + i % 80}", VIP, 1024 + i, 80, SYN), 0.0)
    d.hook_in(tcp(CLIENT, VIP, 50000, 80, SYN), 0.0)
    d.hook_in(tcp(CLIENT, VIP, 50000, 80, ACK), 0.0)  # one real, established
    d.defend(PLENTY, 1.0)
    assert d.defense.drop_entry is False and len(d.conns) == 321
    dropped = 0
    for t in range(200):
        d.hook_in(tcp(CLIENT, VIP, 50000, 80, ACK, b"busy"), 1.0 + t)  # never quiet 60 s
        dropped += d.defend(SHORT, 1.0 + t)
    assert d.sysctls.drop_entry == 2
    assert dropped == 320 and len(d.conns) == 1


def test_drop_entry_lets_quiet_established_entries_go_one_in_n() -> None:
    d = director()
    d.sysctls.drop_entry = 3
    for i in range(64):
        d.hook_in(tcp(CLIENT, VIP, 20000 + i, 80, SYN), 0.0)
        d.hook_in(tcp(CLIENT, VIP, 20000 + i, 80, ACK), 0.0)  # 2 packets in, established
    assert d.defend(PLENTY, 30.0) == 0  # not quiet for a minute yet
    # 1/32 of 64 entries is 2 looked at; todrop_rate[2] lets every second one go.
    assert d.defend(PLENTY, 61.0) == 1
    d.defend(PLENTY, 62.0)
    assert len(d.conns) in (61, 62)
    for t in range(1000):
        d.defend(PLENTY, 63.0 + t)
    assert len(d.conns) == 0


def test_the_memory_cap_refuses_new_connections() -> None:
    d = director()
    d.conn_limit = 10
    for i in range(10):
        assert d.hook_in(udp(CLIENT, VIP, 5000 + i, 53), 0.0)[0] == SEND
    assert d.hook_in(udp(CLIENT, VIP, 6000, 53), 0.0) == (DROP, "conn_table_full")
    assert d.hook_in(udp(CLIENT, VIP, 5000, 53), 0.0)[0] == SEND  # existing ones go on


def test_conn_bytes_covers_what_an_entry_costs() -> None:
    d = director()
    packets = [tcp(f"203.0.113.{10 + i % 80}", VIP, 1024 + i, 80, SYN) for i in range(20000)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for packet in packets:
        d.hook_in(packet, 0.0)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown / len(d.conns) <= CONN_BYTES
    assert d.conns.memory() == len(d.conns) * CONN_BYTES


def test_drop_entry_spares_templates_that_still_control_or_are_assured():
    """ip_vs_conn.c ip_vs_random_dropentry and ip_vs_conn_expire: an entry with
    n_control is never dropped; a dropped connection takes its template along only
    when the template controls nothing else and is not ASSURED (ip_vs_control_assure_ct:
    one of its connections reached ESTABLISHED); an unassured template that controls
    nothing may be dropped when it is looked at."""
    d = Director()
    d.configure(Config(services=(ServiceConf("tcp", VIP, 80, scheduler="rr", persistent=600,
                                             dests=(DestConf(RS1, 80, "masq"),)),)))  # fmt: skip
    d.defense.rng = random.Random(3)
    d.sysctls.drop_entry = 3
    flood = [f"198.51.100.{i}" for i in range(1, 41)]
    for client in flood:  # two half-open connections through each client's template
        for port in (1024, 1025):
            d.hook_in(tcp(client, VIP, port, 80, SYN), 0.0)
    d.hook_in(tcp(CLIENT, VIP, 50000, 80, SYN), 0.0)
    d.hook_in(tcp(CLIENT, VIP, 50000, 80, ACK), 0.0)  # established: its template assured
    d.hook_in(tcp(CLIENT, VIP, 50001, 80, SYN), 0.0)  # and a half-open one beside it
    assured = next(t for t in d.conns.templates.values() if t.caddr == pack_addr(CLIENT))
    assert assured.state_name == "ASSURED"
    for t in range(400):
        d.hook_in(tcp(CLIENT, VIP, 50000, 80, ACK, b"busy"), 1.0 + t)  # never quiet
        d.defend(PLENTY, 1.0 + t)
        for conn in d.conns:  # nothing points at a template that is gone
            assert conn.control is None or d.conns.is_hashed(conn.control)
        for template in d.conns.templates.values():
            assert template.n_control == sum(c.control is template for c in d.conns)
    assert [c.cport for c in d.conns] == [50000]
    assert list(d.conns.templates.values()) == [assured]  # the flood's are all gone
    dest = next(iter(d.services)).dests[0]
    assert (dest.persistconns, dest.activeconns, dest.inactconns) == (1, 1, 0)
