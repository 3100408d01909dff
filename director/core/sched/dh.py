"""Destination hashing scheduling, mirroring ``net/netfilter/ipvs/ip_vs_dh.c``.

The same 256-bucket table as sh, keyed by the packet's *destination* address
(``hash_32(addr, 8)``, see ``sh.sh_hashkey``), but filled without weights:
``ip_vs_dh_reassign`` gives one bucket to each real server in turn, newest first, round
and round.  The kernel reassigns on add_dest and del_dest only (weights do not shape
the table).  The server in the bucket is returned unless it is unavailable (removed),
quiesced (weight <= 0) or overloaded (IP_VS_DEST_F_OVERLOAD); then None, with no
fallback.  It suits a firewall-mark service in front of a cache cluster, where the
destinations vary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.sched import Scheduler, register
from director.core.sched.sh import TAB_SIZE, fill_buckets, sh_hashkey

if TYPE_CHECKING:
    from director.core.packet import Packet
    from director.core.service import Dest, Service


@register
class DestinationHashing(Scheduler):
    name = "dh"

    def __init__(self) -> None:
        self._buckets: list[Dest | None] = [None] * TAB_SIZE
        self._seen: list[Dest] = []

    def update(self, svc: Service) -> None:
        if svc.dests != self._seen:
            self._buckets = fill_buckets(svc.dests, weighted=False)
            self._seen = list(svc.dests)

    def schedule(self, svc: Service, pkt: Packet, now: float = 0.0) -> Dest | None:
        self.update(svc)  # a no-op unless servers changed without update()
        dest = self._buckets[sh_hashkey(pkt.daddr)]
        if dest is None or not dest.available or dest.weight <= 0 or dest.overloaded:
            return None  # "no destination available"
        return dest
