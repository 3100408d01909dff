"""Never-queue scheduling, mirroring ``net/netfilter/ipvs/ip_vs_nq.c``.

One walk from the head (newest first) over the servers that are neither overloaded
(IP_VS_DEST_F_OVERLOAD) nor quiesced (weight 0).  The first idle one (no active
connections) is taken at once; otherwise the result is sed's choice, the smallest
``(activeconns + 1) / weight``, where only a strictly smaller expected delay
displaces the current choice, so among equals the first met wins.  The kernel does
both in one loop; the first idle server, else sed's walk, is the same choice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.sched import Scheduler, register, usable
from director.core.sched.sed import expected_delay_overhead
from director.core.sched.wlc import weighted_least

if TYPE_CHECKING:
    from director.core.packet import Packet
    from director.core.service import Dest, Service


@register
class NeverQueue(Scheduler):
    name = "nq"

    def schedule(self, svc: Service, pkt: Packet, now: float = 0.0) -> Dest | None:
        for dest in svc.dests:
            if dest.activeconns == 0 and usable(dest):
                return dest  # an idle server: no job waits behind it
        return weighted_least(svc, expected_delay_overhead)
