"""Overflow-connection scheduling, mirroring ``net/netfilter/ipvs/ip_vs_ovf.c``.

New connections go to the server with the highest weight, and overflow to the next
highest once its active connections exceed its weight.  The kernel skips a server
that is overloaded (IP_VS_DEST_F_OVERLOAD), quiesced (weight 0) or has
``activeconns > weight``, so a server still takes connections while
``activeconns == weight``: a server of weight w holds w + 1 active connections
before the next one gets any.  Only a strictly higher weight displaces the current
choice, so among equals the first met from the head (the newest server) wins.
Inactive connections are not counted, which is why the kernel warns that ovf may not
suit UDP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.sched import Scheduler, register

if TYPE_CHECKING:
    from director.core.packet import Packet
    from director.core.service import Dest, Service


@register
class Overflow(Scheduler):
    name = "ovf"

    def schedule(self, svc: Service, pkt: Packet, now: float = 0.0) -> Dest | None:
        chosen: Dest | None = None
        highest = 0
        for dest in svc.dests:
            weight = dest.weight
            if dest.overloaded or dest.activeconns > weight or weight == 0:
                continue
            if chosen is None or weight > highest:
                chosen, highest = dest, weight
        return chosen  # None: the kernel logs "no destination available"
