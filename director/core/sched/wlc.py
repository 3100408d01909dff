"""Weighted least-connection scheduling, mirroring ``net/netfilter/ipvs/ip_vs_wlc.c``.

The load of a real server is ``ip_vs_dest_conn_overhead / weight``, compared without
division: server d displaces the current choice c only when
``overhead(c) * weight(d) > overhead(d) * weight(c)``, strictly, so among equal loads
the first met from the head (the newest server) wins.

Two stages, as in the kernel: the first server that is neither overloaded nor
quiesced (weight 0) becomes the initial choice; if there is none the result is None.
The rest of the walk skips only overloaded servers.  A weight 0 server is still
compared there, but ``overhead(c) * 0 > overhead(d) * weight(c)`` never holds, so it
is never taken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from director.core.sched import Scheduler, register, usable
from director.core.sched.lc import conn_overhead

if TYPE_CHECKING:
    from director.core.packet import Packet
    from director.core.service import Dest, Service


def weighted_least(svc: Service, overhead: Callable[[Dest], int]) -> Dest | None:
    """The two-stage walk wlc and sed share: the smallest ``overhead / weight``."""
    dests = iter(svc.dests)
    for least in dests:
        if usable(least):
            break
    else:
        return None  # the kernel logs "no destination available"
    loh = overhead(least)
    for dest in dests:  # list_for_each_entry_continue: on from the first choice
        if dest.overloaded:
            continue
        doh = overhead(dest)
        if loh * dest.weight > doh * least.weight:
            least, loh = dest, doh
    return least


@register
class WeightedLeastConnection(Scheduler):
    name = "wlc"

    def schedule(self, svc: Service, pkt: Packet, now: float = 0.0) -> Dest | None:
        return weighted_least(svc, conn_overhead)
