"""Weighted round-robin scheduling, mirroring ``net/netfilter/ipvs/ip_vs_wrr.c``.

The kernel's ``struct ip_vs_wrr_mark`` holds a cursor ``cl`` (the list head or the
real server chosen last), the current weight ``cw``, the decreasing interval ``di``
(the gcd of the positive weights, 1 if there are none) and ``mw`` (the maximum weight
less ``di - 1``, so that the last pass runs with ``cw == 1``).  Each call walks on from
the cursor and takes the first server that is not overloaded and has weight >= cw;
every time the walk passes the list head, cw drops by di, and once it falls to 0 or
below it starts again at mw.  One cycle is max/di passes (cw = mw, mw - di, ..., 1),
and a server of weight w is taken in w/di of them.  None when mw == 0 (every weight
is 0) or when a sweep down to cw == 1 meets only overloaded servers.

``ip_vs_wrr_dest_changed`` (the add_dest, del_dest and upd_dest hooks) puts the cursor
back at the head, recomputes di and mw, and keeps cw where it was if it still fits:
cw resets to mw only when it is 0 or above the new mw, otherwise it is rounded down to
a multiple of di, plus 1.  So the phase of the cycle depends on the history of changes:
adding servers of weight 4, 3, 2 one by one to a new service leaves cw at 1 (set to
mw = 1 by the first add, kept by the next two), and the first picks finish that cw = 1
pass before the first full cycle begins.

``update`` gets only the service, so the scheduler compares the servers (and the
fields ``ipvsadm -e`` sets) with what it saw last and replays one ``dest_changed`` per
change in the order ``ServiceTable.apply`` makes them: removals, then additions oldest
first, then edits.  A new scheduler starts as ``ip_vs_wrr_init_svc`` on an empty
service, which is how a new service gets it.
"""

from __future__ import annotations

from math import gcd
from typing import TYPE_CHECKING

from director.core.sched import Scheduler, register

if TYPE_CHECKING:
    from director.core.packet import Packet
    from director.core.service import Dest, Service

# What the kernel hears about through add_dest/del_dest/upd_dest: the server itself and
# what ipvsadm -e edits (weight, forwarding method, thresholds).
_Seen = tuple["Dest", int, str, int, int]


def _seen(dest: Dest) -> _Seen:
    return (dest, dest.weight, dest.method, dest.u_threshold, dest.l_threshold)


def _gcd_weight(weights: list[int]) -> int:
    """ip_vs_wrr_gcd_weight: gcd of the positive weights, 1 when there are none."""
    g = 0
    for weight in weights:
        if weight > 0:
            g = gcd(weight, g)
    return g or 1


@register
class WeightedRoundRobin(Scheduler):
    name = "wrr"

    def __init__(self) -> None:
        # ip_vs_wrr_init_svc on a service without real servers.
        self._cursor: Dest | None = None  # None is the list head
        self._di = 1
        self._mw = 0
        self._cw = 0
        self._seen: list[_Seen] = []

    def update(self, svc: Service) -> None:
        now = [_seen(d) for d in svc.dests]
        if now == self._seen:
            return
        weights = {id(entry[0]): entry[1] for entry in self._seen}
        staying = {id(d) for d in svc.dests}
        for entry in self._seen:  # removals, in list order
            if id(entry[0]) not in staying:
                del weights[id(entry[0])]
                self._dest_changed(list(weights.values()))
        previous = {id(entry[0]) for entry in self._seen}
        for dest in reversed(svc.dests):  # additions, oldest first
            if id(dest) not in previous:
                weights[id(dest)] = dest.weight
                self._dest_changed(list(weights.values()))
        before = {id(entry[0]): entry for entry in self._seen}
        for entry in now:  # edits
            old = before.get(id(entry[0]))
            if old is not None and old != entry:
                weights[id(entry[0])] = entry[1]
                self._dest_changed(list(weights.values()))
        self._seen = now

    def _dest_changed(self, weights: list[int]) -> None:
        """ip_vs_wrr_dest_changed, given the weights after one change."""
        self._cursor = None
        self._di = _gcd_weight(weights)
        self._mw = max(weights, default=0) - (self._di - 1)
        if self._cw > self._mw or not self._cw:
            self._cw = self._mw
        elif self._di > 1:
            self._cw = (self._cw // self._di) * self._di + 1

    def schedule(self, svc: Service, pkt: Packet, now: float = 0.0) -> Dest | None:
        self.update(svc)  # a no-op unless servers changed without update()
        dests = svc.dests
        if self._mw == 0:
            return None  # "no destination available"
        n = len(dests)
        # Positions: -1 is the list head, 0..n-1 the servers, newest first.
        last = -1 if self._cursor is None else dests.index(self._cursor)
        stop: int | None = None
        last_pass = restarted = False
        start = last + 1
        while True:
            for i in range(start, n):
                dest = dests[i]
                if not dest.overloaded and dest.weight >= self._cw:
                    self._cursor = dest
                    return dest
                if i == stop:
                    self._cursor = dest
                    return None  # "all destinations are overloaded"
            start = 0
            self._cw -= self._skip(dests)
            if self._cw <= 0:
                self._cw = self._mw
                # A sweep down to cw == 1 has covered every server: give up.
                if last_pass or last == -1:
                    self._cursor = None
                    return None  # "all destinations are overloaded"
                restarted = True
            last_pass = self._cw <= self._di
            if last_pass and restarted and last != -1:
                # The weight >= 1 sweep so far only saw the servers after the cursor;
                # finish it with those up to the cursor.
                stop = last

    def _skip(self, dests: list[Dest]) -> int:
        """How far cw drops now: di, plus di for each following pass the kernel would
        walk in vain.

        A pass at a cw above every available weight finds nothing and, while cw stays
        above di (not yet the last pass) it changes nothing but cw.  The kernel walks
        them all (2**31 passes for weights 2147483647 and 1 with the heavy server
        overloaded); skipping them gives the same result.
        """
        top = max((d.weight for d in dests if not d.overloaded), default=0)
        floor = max(top, self._di)
        passes = -(-(self._cw - floor) // self._di) - 1  # cw - j*di > floor for j = 1..passes
        return self._di * (1 + max(passes, 0))
