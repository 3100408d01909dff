"""The rate estimator (net/netfilter/ipvs/ip_vs_est.c) and ``ipvsadm -Z`` (ip_vs_zero_stats).

Every 2 seconds each set of counters takes one step of an exponentially weighted
moving average with weight W = 2^-2 over the last 2-second rate::

    avgrate = avgrate * (1 - W) + rate * W

in the kernel's fixed point: connections and packets per second are kept scaled by
2^10, bytes per second by 2^5.  The 2-second delta is scaled by 2^9 (2^10 / 2 s) or
2^4 (2^5 / 2 s) and the average moves a quarter of the way to it with an arithmetic
shift (``avg += (rate - avg) >> 2``; Python's ``>>`` floors negative numbers as the
kernel's signed shift does).  ``read`` rounds as ip_vs_read_estimator: ``(avg + 0x1FF)
>> 10`` and ``(avg + 0xF) >> 5``.

Pure: the time is an argument.  The packet path never sees any of this: it only
increments ``Stats``'s plain integers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from director.core.engine import Director
    from director.core.stats import Counts, Stats

INTERVAL = 2.0  # seconds between two steps (the kernel's est_timer: 2 * HZ)


class Rates(NamedTuple):
    """Decoded rates, as ``struct ip_vs_stats_user`` carries them."""

    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


@dataclass(slots=True)
class Estimator:
    """``struct ip_vs_estimator``: the last counters seen and the scaled averages."""

    last_conns: int = 0
    last_inpkts: int = 0
    last_outpkts: int = 0
    last_inbytes: int = 0
    last_outbytes: int = 0
    cps: int = 0  # scaled by 2^10
    inpps: int = 0  # scaled by 2^10
    outpps: int = 0  # scaled by 2^10
    inbps: int = 0  # scaled by 2^5
    outbps: int = 0  # scaled by 2^5

    def step(self, counts: Counts) -> None:
        """One tick of estimation_timer for one set of counters."""
        conns, inpkts, outpkts, inbytes, outbytes = counts
        self.cps += (((conns - self.last_conns) << 9) - self.cps) >> 2
        self.inpps += (((inpkts - self.last_inpkts) << 9) - self.inpps) >> 2
        self.outpps += (((outpkts - self.last_outpkts) << 9) - self.outpps) >> 2
        self.inbps += (((inbytes - self.last_inbytes) << 4) - self.inbps) >> 2
        self.outbps += (((outbytes - self.last_outbytes) << 4) - self.outbps) >> 2
        self.last_conns, self.last_inpkts, self.last_outpkts = conns, inpkts, outpkts
        self.last_inbytes, self.last_outbytes = inbytes, outbytes

    def zero(self, counts: Counts) -> None:
        """ip_vs_zero_estimator: start again from the current counters, rates 0."""
        (
            self.last_conns,
            self.last_inpkts,
            self.last_outpkts,
            self.last_inbytes,
            self.last_outbytes,
        ) = counts
        self.cps = self.inpps = self.outpps = self.inbps = self.outbps = 0

    def read(self) -> Rates:
        """ip_vs_read_estimator: the averages unscaled, rounded."""
        return Rates(
            (self.cps + 0x1FF) >> 10,
            (self.inpps + 0x1FF) >> 10,
            (self.outpps + 0x1FF) >> 10,
            (self.inbps + 0xF) >> 5,
            (self.outbps + 0xF) >> 5,
        )


class RateTimer:
    """The estimator's 2-second timer: ``due(now)`` says when a step is to be taken.

    The first call arms it.  A step that comes late (a busy loop) is one step, and the
    next one is due a full interval later, as the kernel's ``mod_timer(jiffies + 2*HZ)``.
    """

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.next_step: float | None = None

    def due(self, now: float) -> bool:
        if self.next_step is None:
            self.next_step = now + self.interval
            return False
        if now < self.next_step:
            return False
        self.next_step += self.interval
        if self.next_step <= now:
            self.next_step = now + self.interval
        return True


def all_stats(director: Director) -> Iterator[Stats]:
    """Every estimated set of counters: the totals, each service and its real servers
    (the kernel's est_list: removed real servers stop being estimated)."""
    yield director.totals
    for svc in director.services:
        yield svc.stats
        for dest in svc.dests:
            yield dest.stats


def estimate(director: Director, timer: RateTimer, now: float) -> bool:
    """Step every estimator if the timer is due; True when it did.  With the sysctl
    run_estimation off the timer goes on but no step is taken (ip_vs_estimation_kthread
    ticks only ``if (sysctl_run_estimation(ipvs) && ...)``): the rates stay as they
    were, and the first step once it is back sees everything counted since."""
    if not timer.due(now) or not director.sysctls.run_estimation:
        return False
    for stats in all_stats(director):
        stats.est.step(stats.counts())
    return True


def zero(director: Director, key: tuple[str, str, int] | None = None) -> None:
    """``ipvsadm -Z [service]``: ip_vs_zero_service on one service (its real servers
    and itself) or ip_vs_zero_all (every service and the totals)."""
    for svc in director.services:
        if key is None or svc.conf.key == key:
            for dest in svc.dests:
                dest.stats.zero()
            svc.stats.zero()
    if key is None:
        director.totals.zero()
