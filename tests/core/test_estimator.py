"""The rate estimator against values worked out by hand from ip_vs_est.c's formulas.

Per step (every 2 s), for connections and packets (kept scaled by 2^10):
    rate = delta << 9            (delta per 2 s, * 2^10 / 2)
    avg += (rate - avg) >> 2     (W = 1/4, arithmetic shift: floors negatives)
    read = (avg + 0x1FF) >> 10   (ip_vs_read_estimator: round half up)
and for bytes (kept scaled by 2^5):
    rate = delta << 4;  avg += (rate - avg) >> 2;  read = (avg + 0xF) >> 5
"""

from __future__ import annotations

from director.core.estimator import Estimator, Rates, RateTimer


def test_connections_per_second_climb_towards_the_true_rate() -> None:
    est = Estimator()
    reads = []
    conns = 0
    for _ in range(4):
        conns += 10  # 10 connections per 2 s: 5 per second
        est.step((conns, 0, 0, 0, 0))
        reads.append((est.cps, est.read().cps))
    assert reads == [
        (1280, 1),  # 0 + (5120 - 0) >> 2 = 1280;     (1280 + 511) >> 10 = 1791 >> 10 = 1
        (2240, 2),  # 1280 + (3840 >> 2) = 2240;      2751 >> 10 = 2
        (2960, 3),  # 2240 + (2880 >> 2) = 2960;      3471 >> 10 = 3
        (3500, 3),  # 2960 + (2160 >> 2) = 3500;      4011 >> 10 = 3
    ]
    for _ in range(40):
        conns += 10
        est.step((conns, 0, 0, 0, 0))
    # Fixed point: the average stops 3 short of 5120, as the kernel's does, once
    # (5120 - avg) >> 2 is 0, i.e. at 5117; read (5117 + 511) >> 10 = 5628 >> 10 = 5.
    assert (est.cps, est.read().cps) == (5117, 5)


def test_rates_fall_after_the_load_stops_down_to_zero() -> None:
    est = Estimator(last_conns=100, cps=5120)
    est.step((100, 0, 0, 0, 0))  # no new connection: rate 0
    # 5120 + (0 - 5120) >> 2 = 5120 - 1280 = 3840; (3840 + 511) >> 10 = 4
    assert (est.cps, est.read().cps) == (3840, 4)
    est.step((100, 0, 0, 0, 0))  # 3840 - 960 = 2880; 3391 >> 10 = 3
    assert (est.cps, est.read().cps) == (2880, 3)
    small = Estimator(cps=3)
    small.step((0, 0, 0, 0, 0))  # (0 - 3) >> 2 = -1 (floor, as the kernel's shift): 2
    assert small.cps == 2
    for _ in range(3):
        small.step((0, 0, 0, 0, 0))  # 2 -> 1 -> 0 -> 0: decays to exactly zero
    assert small.cps == 0


def test_packets_round_half_up() -> None:
    est = Estimator()
    est.step((0, 7, 3, 0, 0))
    # in:  7 << 9 = 3584, >> 2 = 896; (896 + 511) >> 10 = 1407 >> 10 = 1   (0.875 -> 1)
    # out: 3 << 9 = 1536, >> 2 = 384; (384 + 511) >> 10 =  895 >> 10 = 0   (0.375 -> 0)
    assert (est.inpps, est.outpps) == (896, 384)
    assert est.read() == Rates(0, 1, 0, 0, 0)


def test_bytes_per_second_are_scaled_by_2_to_the_5() -> None:
    est = Estimator()
    est.step((0, 0, 0, 3000, 1000))
    # in:  3000 << 4 = 48000, >> 2 = 12000; (12000 + 15) >> 5 = 12015 >> 5 = 375
    # out: 1000 << 4 = 16000, >> 2 =  4000; ( 4000 + 15) >> 5 =  4015 >> 5 = 125
    assert (est.inbps, est.outbps) == (12000, 4000)
    assert est.read() == Rates(0, 0, 0, 375, 125)
    est.step((0, 0, 0, 6000, 2000))
    # in: 12000 + (48000 - 12000) >> 2 = 21000; 21015 >> 5 = 656
    # out: 4000 + (16000 - 4000) >> 2 = 7000;   7015 >> 5 = 219
    assert est.read() == Rates(0, 0, 0, 656, 219)


def test_zero_restarts_from_the_current_counters() -> None:
    est = Estimator()
    est.step((10, 20, 30, 4000, 5000))
    est.zero((10, 20, 30, 4000, 5000))
    assert est.read() == Rates()
    est.step((10, 20, 30, 4000, 5000))  # nothing new since the zero
    assert est.read() == Rates()


def test_timer_steps_every_two_seconds_and_once_when_late() -> None:
    timer = RateTimer()
    assert [timer.due(t) for t in (0.0, 1.0, 1.9, 2.0, 3.0, 4.0)] == [
        False,  # arms: first step at 2.0
        False,
        False,
        True,
        False,
        True,  # next at 6.0
    ]
    assert timer.due(9.5)  # late by 3.5 s: one step, the next a full interval later
    assert not timer.due(11.4)
    assert timer.due(11.5)
