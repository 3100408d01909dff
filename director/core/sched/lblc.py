"""Locality-based least-connection scheduling, mirroring ``net/netfilter/ipvs/ip_vs_lblc.c``.

For cache clusters: the scheduler remembers, per *destination* address of the
packets (a firewall-mark service typically catches many), the real server it chose,
and keeps sending that address there:

* a cached server is used while it is available (not removed), not quiesced
  (weight > 0) and not "overloaded" in lblc's own sense: ``activeconns > weight``
  while some server of the service has ``activeconns * 2 < weight``.  The kernel
  does not look at IP_VS_DEST_F_OVERLOAD (the upper threshold) here, so a cached
  server over its ``-x`` threshold is still returned, as IPVS does;
* otherwise the choice is wlc's (``__ip_vs_lblc_schedule`` is the wlc walk) and is
  cached, replacing the old entry.

A new entry is only made while the table holds no more than max_size = 1024 * 16
entries (``ip_vs_lblc_new``): past that the choice is used but not remembered, so a
flood of destination addresses cannot grow the table without bound.

Every lookup refreshes the entry's ``lastuse``.  Entries are collected by the
kernel's periodic timer, run here from ``now`` (seconds instead of jiffies): every
CHECK_EXPIRE_INTERVAL = 60 s from the first call, ``ip_vs_lblc_check_expire``
either (every 30th run, COUNT_FOR_FULL_EXPIRATION) drops every entry unused for the
``lblc_expiration`` sysctl (default 24 h), or, when the table holds more than
max_size = 1024 * 16 entries, walks the 1024 buckets (``hash_32`` of the address, 10
bits) from a rover dropping entries unused for ENTRY_TIMEOUT = 6 min until
(entries - max_size) * 4/3 of them (at most max_size / 2) are gone.  The kernel arms
the timer when the service is created; here it starts at the first ``schedule``
call, before which the table is empty anyway (only the phase of the full check
differs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

from director.core.sched import Scheduler, register
from director.core.sched.sh import fold_addr, hash_32
from director.core.sched.wlc import WeightedLeastConnection

if TYPE_CHECKING:
    from director.core.packet import Packet
    from director.core.service import Dest, Service
    from director.core.sysctl import Sysctls

CHECK_EXPIRE_INTERVAL = 60.0
ENTRY_TIMEOUT = 6 * 60.0
DEFAULT_EXPIRATION = 24 * 60 * 60.0  # sysctl lblc_expiration / lblcr_expiration
COUNT_FOR_FULL_EXPIRATION = 30
TAB_BITS = 10  # CONFIG_IP_VS_LBLC_TAB_BITS, CONFIG_IP_VS_LBLCR_TAB_BITS
TAB_SIZE = 1 << TAB_BITS
TAB_MASK = TAB_SIZE - 1
MAX_SIZE = TAB_SIZE * 16


def bucket_of(addr: bytes) -> int:
    """ip_vs_lblc_hashkey / ip_vs_lblcr_hashkey."""
    return hash_32(fold_addr(addr), TAB_BITS)


# __ip_vs_lblc_schedule and __ip_vs_lblcr_schedule are the wlc walk, to the letter.
_WLC = WeightedLeastConnection()


def least_weighted(svc: Service, pkt: Packet) -> Dest | None:
    return _WLC.schedule(svc, pkt)


def lblc_overloaded(dest: Dest, svc: Service) -> bool:
    """is_overloaded in ip_vs_lblc.c and ip_vs_lblcr.c: busier than its weight while
    some server of the service is below half of its own."""
    if dest.activeconns > dest.weight:
        return any(d.activeconns * 2 < d.weight for d in svc.dests)
    return False


class Entry:
    """What every table entry has: when it was last looked up."""

    __slots__ = ("lastuse",)

    def __init__(self, lastuse: float) -> None:
        self.lastuse = lastuse


E = TypeVar("E", bound=Entry)


class LocalityTable(Generic[E]):
    """The per-destination-address table of lblc and lblcr and its collector
    (ip_vs_lblc_check_expire, ip_vs_lblc_full_check)."""

    def __init__(self) -> None:
        self.entries: dict[bytes, E] = {}
        self.expiration = DEFAULT_EXPIRATION
        self.rover = 0
        self.counter = 1
        self.next_check: float | None = None

    def has_room(self) -> bool:
        """ip_vs_lblc_new / ip_vs_lblcr_new: no new entry once more than max_size."""
        return len(self.entries) <= MAX_SIZE

    def run_timers(self, now: float) -> None:
        """Run every periodic check due by ``now``, at the time it was due."""
        if self.next_check is None:
            self.next_check = now + CHECK_EXPIRE_INTERVAL
            return
        while self.next_check <= now:
            if not self.entries:
                # Nothing to collect: only the counter moves, round 1..30.
                runs = int((now - self.next_check) // CHECK_EXPIRE_INTERVAL) + 1
                self.counter = (self.counter - 1 + runs) % COUNT_FOR_FULL_EXPIRATION + 1
                self.next_check += runs * CHECK_EXPIRE_INTERVAL
                return
            self.check_expire(self.next_check)
            self.next_check += CHECK_EXPIRE_INTERVAL

    def check_expire(self, now: float) -> None:
        if self.counter % COUNT_FOR_FULL_EXPIRATION == 0:
            # The full check walks every bucket and leaves the rover where it was.
            for addr, entry in list(self.entries.items()):
                if now >= entry.lastuse + self.expiration:
                    del self.entries[addr]
            self.counter = 1
            return
        if len(self.entries) <= MAX_SIZE:
            self.counter += 1
            return
        goal = min((len(self.entries) - MAX_SIZE) * 4 // 3, MAX_SIZE // 2)
        buckets: dict[int, list[bytes]] = {}
        for addr, entry in self.entries.items():
            if now >= entry.lastuse + ENTRY_TIMEOUT:
                buckets.setdefault(bucket_of(addr), []).append(addr)
        j = self.rover
        for _ in range(TAB_SIZE):
            j = (j + 1) & TAB_MASK
            stale = buckets.get(j, [])
            for addr in stale:
                del self.entries[addr]
            goal -= len(stale)
            if goal <= 0:
                break
        self.rover = j


class CacheEntry(Entry):
    __slots__ = ("dest",)

    def __init__(self, dest: Dest, lastuse: float) -> None:
        super().__init__(lastuse)
        self.dest = dest


@register
class LocalityBasedLeastConnection(Scheduler):
    name = "lblc"

    def __init__(self) -> None:
        self.table: LocalityTable[CacheEntry] = LocalityTable()

    def tune(self, sysctls: Sysctls) -> None:
        self.table.expiration = float(sysctls.lblc_expiration)

    def schedule(self, svc: Service, pkt: Packet, now: float = 0.0) -> Dest | None:
        self.table.run_timers(now)
        entry = self.table.entries.get(pkt.daddr)
        if entry is not None:
            entry.lastuse = now
            dest = entry.dest
            if dest.available and dest.weight > 0 and not lblc_overloaded(dest, svc):
                return dest
        chosen = least_weighted(svc, pkt)
        if chosen is None:
            return None  # "no destination available"
        if entry is None or entry.dest is not chosen:  # ip_vs_lblc_new
            self.table.entries.pop(pkt.daddr, None)
            if self.table.has_room():
                self.table.entries[pkt.daddr] = CacheEntry(chosen, now)
        return chosen
