"""Round-robin scheduling, mirroring ``net/netfilter/ipvs/ip_vs_rr.c``.

The kernel keeps one cursor (``svc->sched_data``) into the circular list
``svc->destinations``: either the list head or the real server chosen last.  Each
call walks on from the cursor, wrapping past the head once, and takes the first real
server that is neither overloaded (IP_VS_DEST_F_OVERLOAD) nor quiesced (weight 0); the
server under the cursor is tried last.  The cursor survives additions (new servers go
in at the head, so they get their turn when the walk next wraps) and
``ip_vs_rr_del_dest`` moves it back to the removed server's predecessor, so the walk
goes on with the server that followed the removed one.

``update`` gets no list of changes, only the service, so the scheduler keeps the list
it saw last and works out which servers left.  ``ServiceTable.apply`` removes before it
adds; when several servers leave at once the cursor lands on the nearest earlier
server that stays (or the head), as successive ``del_dest`` calls would leave it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.sched import Scheduler, register

if TYPE_CHECKING:
    from director.core.packet import Packet
    from director.core.service import Dest, Service


@register
class RoundRobin(Scheduler):
    name = "rr"

    def __init__(self) -> None:
        # ip_vs_rr_init_svc: the cursor starts at the list head (None).
        self._cursor: Dest | None = None
        self._seen: list[Dest] = []

    def update(self, svc: Service) -> None:
        if svc.dests != self._seen:
            self._follow(svc.dests)

    def schedule(self, svc: Service, pkt: Packet, now: float = 0.0) -> Dest | None:
        dests = svc.dests
        if dests != self._seen:  # changed without update(): catch up the same way
            self._follow(dests)
        n = len(dests)
        start = 0 if self._cursor is None else dests.index(self._cursor) + 1
        for i in range(start, start + n):
            dest = dests[i % n]
            if not dest.overloaded and dest.weight > 0:
                self._cursor = dest
                return dest
        return None  # the kernel logs "no destination available"

    def _follow(self, dests: list[Dest]) -> None:
        """Move the cursor off servers that left, as ``ip_vs_rr_del_dest`` does."""
        cursor = self._cursor
        if cursor is not None and not any(d is cursor for d in dests):
            staying = {id(d) for d in dests}
            at = next(i for i, d in enumerate(self._seen) if d is cursor)
            self._cursor = next((d for d in reversed(self._seen[:at]) if id(d) in staying), None)
        self._seen = list(dests)
