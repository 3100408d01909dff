"""Shortest expected delay scheduling, mirroring ``net/netfilter/ipvs/ip_vs_sed.c``.

The expected delay of a real server is ``(activeconns + 1) / weight``: the new job is
counted, and inactive connections are not.  Compared without division, as wlc does:
server d displaces the current choice c only when
``overhead(c) * weight(d) > overhead(d) * weight(c)``, strictly, so among equal
delays the first met from the head (the newest server) wins.

Two stages, as in the kernel: the first server that is neither overloaded
(IP_VS_DEST_F_OVERLOAD) nor quiesced (weight 0) becomes the initial choice, None if
there is none; the rest of the walk skips only overloaded servers.  A weight 0
server is still compared there, but ``overhead(c) * 0 > overhead(d) * weight(c)``
never holds (overheads are at least 1), so it is never taken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.sched import Scheduler, register
from director.core.sched.wlc import weighted_least

if TYPE_CHECKING:
    from director.core.packet import Packet
    from director.core.service import Dest, Service


def expected_delay_overhead(dest: Dest) -> int:
    """ip_vs_sed_dest_overhead / ip_vs_nq_dest_overhead: active connections plus this one."""
    return dest.activeconns + 1


@register
class ShortestExpectedDelay(Scheduler):
    name = "sed"

    def schedule(self, svc: Service, pkt: Packet, now: float = 0.0) -> Dest | None:
        return weighted_least(svc, expected_delay_overhead)
