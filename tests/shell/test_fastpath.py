"""The fast path's accounting (director/shell/fastpath.py Accounting): the hooks' rule
counters (cumulative, per real server's mark and direction) become the differences
IPVS's counters add, per real server, service and in total."""

from __future__ import annotations

import socket

from director.core.engine import Director
from director.ctl.ipvsadm import load_rules
from director.shell.board import Slots
from director.shell.fastpath import Accounting, annotate
from tests.core.packets import RS1, RS2, VIP

M1, M2 = 0x4C000001, 0x4C000002


def director() -> Director:
    d = Director()
    d.configure(load_rules(f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {RS1}:80 -m\n"
                           f"-a -t {VIP}:80 -r {RS2}:80 -m\n"))  # fmt: skip
    for svc in d.services:
        for dest in svc.dests:
            dest.fast_mark = {RS1: M1, RS2: M2}[socket.inet_ntoa(dest.addr)]
    return d


def stats(d: Director) -> dict[str, tuple[int, ...]]:
    return {socket.inet_ntoa(dest.addr): dest.stats.counts()[1:]
            for svc in d.services for dest in svc.dests}  # fmt: skip


def test_the_differences_since_the_last_reading_are_added() -> None:
    d = director()
    acct = Accounting(d, read=dict)
    acct.take({M1: (10, 1000, 8, 9000), M2: (1, 60, 0, 0)})
    acct.take({M1: (15, 1500, 12, 13000), M2: (1, 60, 0, 0), 0x4C000009: (5, 5, 5, 5)})
    # ip_vs_stats order: inpkts, outpkts, inbytes, outbytes
    assert stats(d) == {RS1: (15, 12, 1500, 13000), RS2: (1, 0, 60, 0)}
    (svc,) = d.services
    assert svc.stats.counts()[1:] == d.totals.counts()[1:] == (16, 12, 1560, 13000)


def test_a_rule_made_again_starts_a_new_run() -> None:
    """Counters that went back (the rule was made again) count from zero, per
    direction; a mark that comes back after it was gone too."""
    d = director()
    acct = Accounting(d, read=dict)
    acct.take({M1: (10, 1000, 8, 9000)})
    acct.take({M1: (3, 300, 9, 9100)})  # the ORIGINAL rule made again
    assert stats(d)[RS1] == (13, 9, 1300, 9100)
    acct.take({})
    acct.take({M1: (2, 200, 1, 100)})
    assert stats(d)[RS1] == (15, 10, 1500, 9200)


def test_a_slot_given_to_another_server_does_not_carry_the_old_count() -> None:
    d = director()
    acct = Accounting(d, read=dict)
    acct.take({M1: (10, 1000, 8, 9000)})
    d.configure(load_rules(f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {RS2}:80 -m\n"))
    for svc in d.services:
        for dest in svc.dests:
            dest.fast_mark = M1  # RS2 now has RS1's old slot
    acct.take({M1: (12, 1200, 9, 9500)})
    assert stats(d) == {RS2: (12, 9, 1200, 9500)}


def test_readings_come_every_two_seconds() -> None:
    d = director()
    readings: list[float] = []

    def read() -> dict[int, tuple[int, int, int, int]]:
        readings.append(0.0)
        return {}

    acct = Accounting(d, read=read)
    for now in (0.0, 0.5, 1.9, 2.0, 3.0, 4.1):
        acct.tick(now)
    assert len(readings) == 3  # the estimator's 2 s (ip_vs_est.c)


def test_only_the_fast_services_real_servers_get_a_fast_mark() -> None:
    """Those of an IPv4 TCP or UDP service with a port, as netfilter.fast_service says:
    an IPv6 service's and a port-zero one's keep the every-packet path (a mark would
    have their opening packets dropped at LOCAL_IN, which is where they arrive)."""
    config = load_rules(
        f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {RS1}:80 -m\n"
        f"-A -t {VIP}:0 -s rr -p 60\n-a -t {VIP}:0 -r {RS2} -m\n"
        "-A -t [2001:db8:1::100]:80 -s rr\n-a -t [2001:db8:1::100]:80 -r [2001:db8:2::2]:80 -m\n"
    )
    d = Director()
    d.configure(config)
    annotate(d, Slots().assign(config), on=True)
    marks = {(svc.key[2], len(svc.key[1])): [dest.fast_mark for dest in svc.dests]
             for svc in d.services}  # fmt: skip
    assert marks[(80, 4)][0] & 0xFF000000 == 0x4C000000
    assert marks[(0, 4)] == [0] and marks[(80, 16)] == [0]
