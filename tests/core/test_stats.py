"""Counters and ``zero`` with IPVS's semantics (ip_vs_zero_stats / ip_vs_copy_stats)."""

from __future__ import annotations

from director.core.engine import Director
from director.core.estimator import Rates, RateTimer, estimate, zero
from director.core.stats import Stats
from director.ctl.ipvsadm import load_rules
from director.ctl.report import snapshot


def test_zero_keeps_the_raw_counters_and_shows_them_relative() -> None:
    stats = Stats(conns=5, inpkts=50, outpkts=40, inbytes=5000, outbytes=40000)
    stats.est.step(stats.counts())
    assert stats.rates() != Rates()
    stats.zero()
    assert stats.shown() == (0, 0, 0, 0, 0)
    assert stats.counts() == (5, 50, 40, 5000, 40000)  # Prometheus still sees these
    assert stats.rates() == Rates()
    stats.conns += 1
    stats.inpkts += 3
    stats.inbytes += 180
    assert stats.shown() == (1, 3, 0, 180, 0)
    stats.est.step(stats.counts())
    # Only what came after the zero counts: 1 conn in 2 s -> (512 >> 2 = 128 + 511) >> 10 = 0,
    # 180 bytes -> (180 << 4 = 2880) >> 2 = 720; (720 + 15) >> 5 = 22.
    assert stats.rates() == Rates(0, 0, 0, 22, 0)


RULES = """\
-A -t 203.0.113.5:80 -s rr
-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m
-A -t 203.0.113.5:21 -s rr
-a -t 203.0.113.5:21 -r 198.18.0.3:21 -m
"""


def _director() -> Director:
    director = Director()
    director.configure(load_rules(RULES))
    for stats in (director.totals, *(s.stats for s in director.services)):
        stats.conns, stats.inpkts = 10, 100
    for svc in director.services:
        for dest in svc.dests:
            dest.stats.conns, dest.stats.inpkts = 10, 100
    return director


def test_zero_one_service_zeroes_it_and_its_servers_not_the_others_nor_totals() -> None:
    director = _director()
    zero(director, ("tcp", "203.0.113.5", 80))
    snap = snapshot(director, (900, 120, 300), 0.0, conns=False)
    by_port = {s["port"]: s for s in snap["services"]}
    assert by_port[80]["stats"]["conns"] == 0
    assert by_port[80]["dests"][0]["stats"]["inpkts"] == 0
    assert by_port[21]["stats"]["conns"] == 10
    assert by_port[21]["dests"][0]["stats"]["inpkts"] == 100
    assert snap["totals"]["conns"] == 10


def test_zero_all_includes_the_totals_and_resets_rates() -> None:
    director = _director()
    timer = RateTimer()
    estimate(director, timer, 0.0)  # arms the timer
    assert estimate(director, timer, 2.0)  # 10 conns in 2 s: cps reads 1 ((1280+511)>>10)
    snap = snapshot(director, (900, 120, 300), 2.0, conns=False)
    assert snap["totals"]["cps"] == 1
    assert snap["services"][0]["stats"]["cps"] == 1
    zero(director)
    snap = snapshot(director, (900, 120, 300), 2.0, conns=False)
    assert snap["totals"] == {
        "conns": 0,
        "inpkts": 0,
        "outpkts": 0,
        "inbytes": 0,
        "outbytes": 0,
        "cps": 0,
        "inpps": 0,
        "outpps": 0,
        "inbps": 0,
        "outbps": 0,
    }
    assert all(s["stats"]["conns"] == 0 and s["stats"]["cps"] == 0 for s in snap["services"])
    # The next step measures from the zero point: nothing new, rates stay 0.
    assert estimate(director, timer, 4.0)
    assert snapshot(director, (900, 120, 300), 4.0, conns=False)["totals"]["cps"] == 0
