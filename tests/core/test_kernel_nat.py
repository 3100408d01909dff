"""VS/NAT on the kernel fast path, in the core: the first packet is scheduled as for
VS/NAT and answered with the real server's mark; the entry then follows conntrack.

What IPVS fixes and these tests hold the core to: a real server's ActiveConn counts the
connections in SYN_SENT, SYN_RECV, SYNACK and ESTABLISHED (tcp_state_active_table,
net/netfilter/ipvs/ip_vs_proto_tcp.c), InActConn the rest; a persistence template
sends a client back to its real server (ip_vs_sched_persist).  Conntrack's TCP state
names are tcp_conntrack_names (net/netfilter/nf_conntrack_proto_tcp.c)."""

from __future__ import annotations

import socket

import dpkt

from director.core.engine import Director
from director.core.xmit import DIRECT, MARK
from director.ctl.ipvsadm import load_rules
from tests.core.packets import CLIENT, RS1, RS2, VIP, tcp

TCP = dpkt.ip.IP_PROTO_TCP
C, V = socket.inet_aton(CLIENT), socket.inet_aton(VIP)
TWO = {RS1: 0x4C000001, RS2: 0x4C000002}


def director(rules: str, marks: dict[str, int]) -> Director:
    d = Director()
    d.configure(load_rules(rules))
    for svc in d.services:
        for dest in svc.dests:
            dest.fast_mark = marks.get(socket.inet_ntoa(dest.addr), 0)
    return d


def counts(d: Director) -> dict[str, tuple[int, int]]:
    return {socket.inet_ntoa(dest.addr): (dest.activeconns, dest.inactconns)
            for svc in d.services for dest in svc.dests}  # fmt: skip


def test_the_first_packet_gets_the_servers_mark_and_is_left_as_it_is() -> None:
    d = director(f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {RS1}:8080 -m\n",
                 {RS1: 0x4C000007})  # fmt: skip
    syn = tcp(CLIENT, VIP, 40000, 80, dpkt.tcp.TH_SYN)
    before = bytes(syn)
    assert d.hook_in(syn, 1.0) == (MARK, 0x4C000007)
    assert bytes(syn) == before  # conntrack's DNAT rewrites it, not the worker
    assert counts(d) == {RS1: (1, 0)}  # SYN_RECV: active
    # The SYN sent again before the real server answered is still NEW to conntrack.
    assert d.hook_in(tcp(CLIENT, VIP, 40000, 80, dpkt.tcp.TH_SYN), 2.0) == (MARK, 0x4C000007)
    assert len(d.conns) == 1
    assert d.verdicts["mark"] == 2


def test_the_entry_follows_conntracks_states_and_goes_with_it() -> None:
    d = director(f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {RS1}:80 -m\n", {RS1: 0x4C000001})
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, dpkt.tcp.TH_SYN), 1.0)
    assert d.ct_seen(TCP, C, 40000, V, 80, "ESTABLISHED", 432000, 2.0)
    conn = d.conns.find_in(TCP, C, 40000, V, 80)
    assert conn is not None and conn.state_name == "ESTABLISHED"
    assert conn.expires == 2.0 + 432000  # as long as conntrack keeps it
    assert counts(d) == {RS1: (1, 0)}
    assert d.ct_seen(TCP, C, 40000, V, 80, "TIME_WAIT", 120, 3.0)
    assert counts(d) == {RS1: (0, 1)}
    assert d.ct_gone(TCP, C, 40000, V, 80)
    assert counts(d) == {RS1: (0, 0)} and len(d.conns) == 0
    assert not d.ct_gone(TCP, C, 40000, V, 80)  # an entry it never had: nothing
    assert not d.ct_seen(TCP, C, 40001, V, 80, "ESTABLISHED", 10, 3.0)


def test_lc_weighs_the_fast_connections() -> None:
    d = director(f"-A -t {VIP}:80 -s lc\n-a -t {VIP}:80 -r {RS1}:80 -m\n"
                 f"-a -t {VIP}:80 -r {RS2}:80 -m\n", TWO)  # fmt: skip
    marks = [d.hook_in(tcp(CLIENT, VIP, port, 80, dpkt.tcp.TH_SYN), 1.0)[1]
             for port in range(40000, 40004)]  # fmt: skip
    assert sorted(marks) == [0x4C000001, 0x4C000001, 0x4C000002, 0x4C000002]
    for port in (40000, 40001, 40002):
        d.ct_gone(TCP, C, port, V, 80)
    # The one left holds a server: the next goes to the other one.
    left = d.conns.find_in(TCP, C, 40003, V, 80)
    assert left is not None
    nxt = d.hook_in(tcp(CLIENT, VIP, 40010, 80, dpkt.tcp.TH_SYN), 2.0)[1]
    assert nxt != left.dest.fast_mark


def test_persistence_sends_a_client_back_to_its_servers_mark() -> None:
    d = director(f"-A -t {VIP}:80 -s rr -p 300\n-a -t {VIP}:80 -r {RS1}:80 -m\n"
                 f"-a -t {VIP}:80 -r {RS2}:80 -m\n", TWO)  # fmt: skip
    first = d.hook_in(tcp(CLIENT, VIP, 40000, 80, dpkt.tcp.TH_SYN), 1.0)
    again = [d.hook_in(tcp(CLIENT, VIP, p, 80, dpkt.tcp.TH_SYN), 1.0) for p in range(40001, 40005)]
    assert all(v == first for v in again)


def test_a_dr_server_of_the_same_service_keeps_the_every_packet_path() -> None:
    d = director(f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {RS1}:80 -m\n"
                 f"-a -t {VIP}:80 -r {RS2}:80 -g\n", {RS1: 0x4C000001})  # fmt: skip
    from director.core.route import Route

    for svc in d.services:
        for dest in svc.dests:
            dest.route = Route(ifindex=2, source=socket.inet_aton("198.18.0.1"), mtu=1500)
    actions = {d.hook_in(tcp(CLIENT, VIP, p, 80, dpkt.tcp.TH_SYN), 1.0)[0]
               for p in range(40000, 40004)}  # fmt: skip
    assert actions == {MARK, DIRECT}


def test_the_kernels_counts_and_the_workers_feed_the_same_stats() -> None:
    """The packets that reach the worker (a flow's first, and its SYN sent again before
    the real server answered: conntrack's NEW) it counts as every method does; the
    hooks' rules count the rest, and ct_account adds their figures."""
    d = director(f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {RS1}:80 -m\n", {RS1: 0x4C000001})
    syn = tcp(CLIENT, VIP, 40000, 80, dpkt.tcp.TH_SYN)
    d.hook_in(syn, 1.0)
    svc = next(iter(d.services))
    (dest,) = svc.dests
    assert svc.stats.counts() == (1, 1, 0, len(syn), 0)
    d.ct_account(svc, dest, 10, 1000, 20, 30000)
    assert svc.stats.counts() == dest.stats.counts() == (1, 11, 20, 1000 + len(syn), 30000)
    assert d.totals.counts()[1:] == (11, 20, 1000 + len(syn), 30000)
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, dpkt.tcp.TH_SYN), 2.0)  # sent again
    assert svc.stats.counts() == (1, 12, 20, 1000 + 2 * len(syn), 30000)


def test_a_new_syn_on_a_tuple_conntrack_saw_established_is_a_new_connection() -> None:
    """On the fast path only conntrack's NEW packets reach the worker: a SYN on the
    tuple of a connection conntrack saw established is a new connection (conntrack
    reopened the tuple from TIME_WAIT: tcp_packet's "Reopened connection" case,
    nf_conntrack_proto_tcp.c), scheduled afresh as IPVS schedules a SYN that finds a
    TIME_WAIT entry (is_new_conn_expected, conn_reuse_mode 1), even when the last
    state the entry heard of is FIN_WAIT (the kernel passes no later event on).  A SYN
    sent again before the answer (SYN_RECV) stays the same connection."""
    d = director(f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {RS1}:80 -m\n"
                 f"-a -t {VIP}:80 -r {RS2}:80 -m\n", TWO)  # fmt: skip
    first = d.hook_in(tcp(CLIENT, VIP, 40000, 80, dpkt.tcp.TH_SYN), 1.0)
    assert d.hook_in(tcp(CLIENT, VIP, 40000, 80, dpkt.tcp.TH_SYN), 1.5) == first  # again
    assert d.ct_seen(TCP, C, 40000, V, 80, "ESTABLISHED", 432000, 2.0)
    assert d.ct_seen(TCP, C, 40000, V, 80, "FIN_WAIT", 120, 3.0)
    second = d.hook_in(tcp(CLIENT, VIP, 40000, 80, dpkt.tcp.TH_SYN), 4.0)
    assert {first, second} == {(MARK, 0x4C000001), (MARK, 0x4C000002)}  # rr: the other one
    (svc,) = d.services
    assert svc.stats.conns == 2 and len(d.conns) == 1
    assert counts(d) == {RS1: (0, 0), RS2: (1, 0)} or counts(d) == {RS1: (1, 0), RS2: (0, 0)}
    d.sysctls.conn_reuse_mode = 0  # the old connection is reused: no new one
    assert d.ct_seen(TCP, C, 40000, V, 80, "ESTABLISHED", 432000, 5.0)
    assert d.hook_in(tcp(CLIENT, VIP, 40000, 80, dpkt.tcp.TH_SYN), 6.0) == second
    assert svc.stats.conns == 2
