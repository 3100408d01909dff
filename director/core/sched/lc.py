"""Least-connection scheduling, mirroring ``net/netfilter/ipvs/ip_vs_lc.c``.

Walks the real servers from the head (newest first), skipping overloaded
(IP_VS_DEST_F_OVERLOAD) and quiesced (weight 0) ones, and takes the one with the
smallest ``ip_vs_dest_conn_overhead``: (activeconns << 8) + inactconns.  Only a
strictly smaller overhead displaces the current choice, so among equals the first met
(the newest server) wins.  Weights other than 0 play no part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.sched import Scheduler, register, usable

if TYPE_CHECKING:
    from director.core.packet import Packet
    from director.core.service import Dest, Service


def conn_overhead(dest: Dest) -> int:
    """ip_vs_dest_conn_overhead (include/net/ip_vs.h): an active connection is taken to
    cost 256 times an inactive one."""
    return (dest.activeconns << 8) + dest.inactconns


@register
class LeastConnection(Scheduler):
    name = "lc"

    def schedule(self, svc: Service, pkt: Packet, now: float = 0.0) -> Dest | None:
        # min() keeps the first of equals: only a strictly smaller overhead displaces.
        # None: the kernel logs "no destination available".
        return min(filter(usable, svc.dests), key=conn_overhead, default=None)
