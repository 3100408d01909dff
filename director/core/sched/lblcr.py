"""Locality-based least-connection with replication, mirroring
``net/netfilter/ipvs/ip_vs_lblcr.c``.

Like lblc, but each destination address maps to a *set* of real servers (newest
member first, as ``ip_vs_dest_set_insert`` adds at the head):

* the set's least loaded member is taken (``ip_vs_dest_set_min``: the wlc comparison
  over members that are available, not overloaded by IP_VS_DEST_F_OVERLOAD and, for
  the first pick, of weight > 0);
* when the set has more than one member and has not changed for ``lblcr_expiration``
  (default 24 h, strictly more), its most loaded member of positive weight
  (``ip_vs_dest_set_max``) is dropped, after the pick above, which stands even if it
  was the one dropped;
* if there is no member to take, or the one taken is overloaded in lblc's sense
  (``activeconns > weight`` while some server has ``activeconns * 2 < weight``), the
  wlc choice over the whole service is taken and added to the set;
* an address without an entry gets a new set holding the wlc choice, while the table
  holds no more than max_size entries (``ip_vs_lblcr_new``), as lblc's.

Adding or dropping a member sets the set's ``lastmod``; every lookup refreshes the
entry's ``lastuse``, on which the same periodic collector as lblc's runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.sched import Scheduler, register
from director.core.sched.lblc import Entry, LocalityTable, lblc_overloaded, least_weighted
from director.core.sched.lc import conn_overhead

if TYPE_CHECKING:
    from director.core.packet import Packet
    from director.core.service import Dest, Service
    from director.core.sysctl import Sysctls


class _DestSet(Entry):
    __slots__ = ("dests", "lastmod")

    def __init__(self, dest: Dest, now: float) -> None:
        super().__init__(now)
        self.dests = [dest]
        self.lastmod = now

    def add(self, dest: Dest, now: float) -> None:
        if not any(d is dest for d in self.dests):
            self.dests.insert(0, dest)
            self.lastmod = now

    def least(self) -> Dest | None:
        """ip_vs_dest_set_min."""
        members = iter(self.dests)
        for least in members:
            if not least.overloaded and least.weight > 0 and least.available:
                break
        else:
            return None
        loh = conn_overhead(least)
        for dest in members:
            if dest.overloaded:
                continue
            doh = conn_overhead(dest)
            if loh * dest.weight > doh * least.weight and dest.available:
                least, loh = dest, doh
        return least

    def most(self) -> Dest | None:
        """ip_vs_dest_set_max: neither overload nor availability is looked at."""
        members = iter(self.dests)
        for most in members:
            if most.weight > 0:
                break
        else:
            return None
        moh = conn_overhead(most)
        for dest in members:
            doh = conn_overhead(dest)
            if moh * dest.weight < doh * most.weight and dest.weight > 0:
                most, moh = dest, doh
        return most


@register
class LocalityBasedLeastConnectionReplication(Scheduler):
    name = "lblcr"

    def __init__(self) -> None:
        self.table: LocalityTable[_DestSet] = LocalityTable()

    def tune(self, sysctls: Sysctls) -> None:
        self.table.expiration = float(sysctls.lblcr_expiration)

    def schedule(self, svc: Service, pkt: Packet, now: float = 0.0) -> Dest | None:
        self.table.run_timers(now)
        entry = self.table.entries.get(pkt.daddr)
        if entry is None:
            chosen = least_weighted(svc, pkt)
            if chosen is not None and self.table.has_room():  # ip_vs_lblcr_new
                self.table.entries[pkt.daddr] = _DestSet(chosen, now)
            return chosen  # None: "no destination available"
        entry.lastuse = now
        dest = entry.least()
        if len(entry.dests) > 1 and now > entry.lastmod + self.table.expiration:
            most = entry.most()
            if most is not None:
                entry.dests = [d for d in entry.dests if d is not most]
                entry.lastmod = now
        if dest is not None and not lblc_overloaded(dest, svc):
            return dest
        chosen = least_weighted(svc, pkt)
        if chosen is None:
            return None  # "no destination available"
        entry.add(chosen, now)
        return chosen
