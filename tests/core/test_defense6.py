"""The DoS defences with IPv6 entries: the same rules as for IPv4 (update_defense_level,
ip_vs_todrop, ip_vs_random_dropentry / todrop_entry in net/netfilter/ipvs/ip_vs_ctl.c
and ip_vs_conn.c, tcp_timeout_change's secure table in ip_vs_proto_tcp.c), none of
which looks at the address family: an IPv6 half-open entry goes as an IPv4 one does,
an IPv6 new connection is one of drop_packet's count, and secure_tcp holds an IPv6
NAT connection in SYN_RECV until its real server answers."""

from __future__ import annotations

import random

from director.core.engine import Director
from director.core.xmit import DROP, SEND
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import CLIENT, RS1, SYN, VIP, tcp
from tests.core.packets6 import RS6_1, VIP6, tcp6

PLENTY, SHORT = 100_000, 512  # pages available, against amemthresh 1024
ACK = 0x10


def director() -> Director:
    d = Director()
    d.configure(Config(services=(
        ServiceConf("tcp", VIP6, 80, scheduler="rr", dests=(DestConf(RS6_1, 80, "masq"),)),
        ServiceConf("tcp", VIP, 80, scheduler="rr", dests=(DestConf(RS1, 80, "masq"),)),
    )))  # fmt: skip
    d.defense.rng = random.Random(7)
    return d


def test_drop_entry_clears_ipv6_half_open_entries_and_keeps_a_busy_one() -> None:
    d = director()
    d.sysctls.drop_entry = 1
    for i in range(160):  # a SYN flood from IPv6 and IPv4 clients
        d.hook_in(tcp6(f"2001:db8:1::{10 + i % 80:x}", VIP6, 1024 + i, 80, SYN), 0.0)
        d.hook_in(tcp(f"203.0.113.{10 + i % 80}", VIP, 1024 + i, 80, SYN), 0.0)
    busy = "2001:db8:1::5"
    d.hook_in(tcp6(busy, VIP6, 50000, 80, SYN), 0.0)
    d.hook_in(tcp6(busy, VIP6, 50000, 80, ACK), 0.0)  # one real, established
    assert len(d.conns) == 321
    dropped = 0
    for t in range(200):
        d.hook_in(tcp6(busy, VIP6, 50000, 80, ACK, b"busy"), 1.0 + t)  # never quiet 60 s
        dropped += d.defend(SHORT, 1.0 + t)
    assert d.sysctls.drop_entry == 2
    assert dropped == 320
    (left,) = d.conns
    assert (left.cport, left.state_name, len(left.caddr)) == (50000, "ESTABLISHED", 16)


def test_drop_packet_counts_ipv6_new_connections() -> None:
    d = director()
    d.sysctls.drop_packet = 1
    d.defend(SHORT, 1.0)  # rate = 1024 // (1024 - 512) = 2
    verdicts = [
        d.hook_in(tcp6("2001:db8:1::10", VIP6, 40000 + i, 80, SYN), 1.0)[0] for i in range(4)
    ] + [d.hook_in(tcp(CLIENT, VIP, 40000 + i, 80, SYN), 1.0)[0] for i in range(2)]
    assert verdicts == [SEND, DROP, SEND, DROP, SEND, DROP]
    assert d.drops["defense_drop_packet"] == 3


def test_secure_tcp_holds_an_ipv6_nat_connection_in_syn_recv() -> None:
    d = director()
    d.sysctls.secure_tcp = 3
    d.defend(PLENTY, 0.0)
    client = "2001:db8:1::10"
    d.hook_in(tcp6(client, VIP6, 40000, 80, SYN), 0.0)
    d.hook_in(tcp6(client, VIP6, 40000, 80, ACK), 0.1)  # a spoofer's blind ACK
    (conn,) = d.conns
    assert conn.state_name == "SYN_RECV"
    d.hook_out(tcp6(RS6_1, client, 80, 40000, ACK, b"hello"), 0.2)
    assert conn.state_name == "ESTABLISHED"
