"""Weighted failover scheduling, mirroring ``net/netfilter/ipvs/ip_vs_fo.c``.

Every new connection goes to the server with the highest weight that is not
overloaded (IP_VS_DEST_F_OVERLOAD).  The walk starts from weight 0 and only a
strictly higher weight displaces the current choice, so quiesced (weight 0) servers
are never taken and among equal weights the first met from the head (the newest
server) wins.  Connection counts play no part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.sched import Scheduler, register

if TYPE_CHECKING:
    from director.core.packet import Packet
    from director.core.service import Dest, Service


@register
class WeightedFailover(Scheduler):
    name = "fo"

    def schedule(self, svc: Service, pkt: Packet, now: float = 0.0) -> Dest | None:
        chosen: Dest | None = None
        highest = 0
        for dest in svc.dests:
            if not dest.overloaded and dest.weight > highest:
                chosen, highest = dest, dest.weight
        return chosen  # None: the kernel logs "no destination available"
