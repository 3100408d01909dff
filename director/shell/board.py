"""The counters all workers share: what makes N worker processes one director.

IPVS's workers are CPUs over one table: a real server's ``activeconns`` is one atomic
counter every CPU's scheduler reads, and its stats are per-CPU counters summed when
read (``ip_vs_stats``'s cpustats).  director's workers are processes with a table each,
so they share a board: a memory region (a memfd every worker maps) with one column per
worker, where each worker writes its own figures of every real server (active,
inactive, persistent connections, the five stats counters), every service and the
totals, and reads the others'.

``sync`` does both: for each counter it takes the worker's own part (what it holds less
what it added from the others last time), writes it to its column, and makes the
counter hold own + others.  So every core reader (lc, wlc, sed, nq, ovf and the
thresholds in the schedulers; the listings, the rates and the metrics in the daemon)
sees the whole director's figures without knowing there are workers, and the packet
path still increments plain integers.  The connection counts are synced around each
turn of a worker's loop (``CountPacer``: before it schedules, after it changed them; at
most every COUNT_SYNC), the stats on every tick and before a listing.

Slots: each service and real server has a slot number, given by the daemon
(``Slots``) from its key, the same in every worker; slot 0 holds the totals.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable
from typing import Any

from director.core.engine import Director
from director.core.service import ServiceKey
from director.core.stats import Stats
from director.model.config import Config, ConfigError

SLOTS = 1 << 16  # services and real servers one daemon can count (slot 0: totals)
FIELDS = 8  # activeconns, inactconns, persistconns, then the five Stats counters
COUNT_FIELDS = ("activeconns", "inactconns", "persistconns")
STAT_FIELDS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
CELL = 8  # bytes: a signed 64-bit integer
COUNT_SYNC = 0.002  # seconds: the connection counts are at most this late between workers
SlotKey = tuple[ServiceKey, bytes, int]  # (service, real server address, port); b"", 0: the service


class Slots:
    """Slot numbers by key, kept for the daemon's life: a real server removed and added
    again (the trash gives it back with its counters) counts in the same slot, and no
    slot changes hands while a worker may still hold figures for its old key."""

    def __init__(self) -> None:
        self.slots: dict[SlotKey, int] = {}

    def assign(self, config: Config) -> dict[SlotKey, int]:
        """The slots of ``config``'s services and real servers; ConfigError when the
        board is full (a restart starts a fresh one)."""
        from director.core.service import pack_addr, service_key

        wanted: list[SlotKey] = []
        for conf in config.services:
            svc = service_key(conf)
            wanted.append((svc, b"", 0))
            wanted += [(svc, pack_addr(d.addr), d.port) for d in conf.dests]
        new = [key for key in dict.fromkeys(wanted) if key not in self.slots]
        if len(self.slots) + len(new) >= SLOTS:
            raise ConfigError(
                f"the workers' shared counters are full ({SLOTS - 1} services and real "
                "servers since start): restart directord"
            )
        for key in new:
            self.slots[key] = len(self.slots) + 1
        return {key: self.slots[key] for key in wanted}


def create(workers: int) -> int:
    """A board's memory for ``workers`` workers: a memfd (zeroed, its pages taken only
    as slots are used), to pass to each."""
    fd = os.memfd_create("director-board", os.MFD_CLOEXEC)
    os.ftruncate(fd, workers * SLOTS * FIELDS * CELL)
    return fd


class Board:
    """One worker's view of the board: ``me`` of ``workers`` columns."""

    def __init__(self, fd: int, workers: int, me: int) -> None:
        self.workers = workers
        self.me = me
        self._map = mmap.mmap(fd, workers * SLOTS * FIELDS * CELL)
        self.cells = memoryview(self._map).cast("q")
        self._column = SLOTS * FIELDS
        # Per slot: the objects counted there (a Dest for the counts, a Stats), and what
        # this worker last added to them from the other columns.
        self._dests: list[tuple[int, Any]] = []
        self._stats: list[tuple[int, Stats]] = []
        self._seen: dict[int, list[int]] = {}
        # Per (slot, first field): the object those fields were last taken from.  A
        # service or real server removed and made afresh (ip_vs_add_service,
        # ip_vs_new_dest: zeroed counters) holds none of what was added to the old one,
        # so its part starts from its own figures; one given back by the trash is the
        # same object and keeps what it was given.  At most one object per slot is held.
        self._held: dict[tuple[int, int], object] = {}

    def bind(self, director: Director, slots: dict[SlotKey, int]) -> None:
        """Count the director's services and real servers in their slots (after each
        configuration change)."""
        dests: list[tuple[int, Any]] = []
        stats: list[tuple[int, Stats]] = [(0, director.totals)]
        for svc in director.services:
            slot = slots.get((svc.key, b"", 0))
            if slot is not None:
                stats.append((slot, svc.stats))
            for dest in svc.dests:
                slot = slots.get((svc.key, dest.addr, dest.port))
                if slot is not None:
                    dests.append((slot, dest))
                    stats.append((slot, dest.stats))
        self._dests, self._stats = dests, stats
        for slot, dest in dests:
            self._hold(slot, dest, 0, len(COUNT_FIELDS))
        for slot, counters in stats:
            self._hold(slot, counters, len(COUNT_FIELDS), FIELDS)

    def _hold(self, slot: int, obj: object, first: int, end: int) -> None:
        if self._held.get((slot, first)) is obj:
            return
        self._held[(slot, first)] = obj
        seen = self._seen.get(slot)
        if seen is not None:
            seen[first:end] = [0] * (end - first)

    def sync_counts(self) -> None:
        """Publish this worker's connection counts and take in the others'."""
        self._sync(((slot, dest) for slot, dest in self._dests), COUNT_FIELDS, 0)

    def sync_stats(self) -> None:
        """Publish this worker's stats counters and take in the others'."""
        self._sync(iter(self._stats), STAT_FIELDS, len(COUNT_FIELDS))

    def sync(self) -> None:
        self.sync_counts()
        self.sync_stats()

    def _sync(self, items: Iterable[tuple[int, Any]], names: tuple[str, ...], first: int) -> None:
        cells, column, me, workers = self.cells, self._column, self.me, self.workers
        for slot, obj in items:
            seen = self._seen.setdefault(slot, [0] * FIELDS)
            base = slot * FIELDS
            for offset, name in enumerate(names, first):
                own = getattr(obj, name) - seen[offset]
                cells[me * column + base + offset] = own
                others = 0
                for worker in range(workers):
                    if worker != me:
                        others += cells[worker * column + base + offset]
                seen[offset] = others
                setattr(obj, name, own + others)

    def own(self, slot: int, field: int) -> int:
        """This worker's own figure in a slot (as last published)."""
        return self.cells[self.me * self._column + slot * FIELDS + field]

    def close(self) -> None:
        self.cells.release()
        self._map.close()


class CountPacer:
    """When a worker syncs the connection counts: before it handles packets, if its
    view is older than COUNT_SYNC (a SYN is scheduled with the others' figures of
    now), and within COUNT_SYNC after packets changed its own (``timeout`` shortens the
    loop's wait until then)."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.last = float("-inf")
        self.dirty = False

    def before(self, now: float) -> None:
        if now - self.last >= COUNT_SYNC:
            self._sync(now)

    def after(self, now: float, changed: bool) -> None:
        """A turn of the loop ended (``changed``: it handled something)."""
        self.dirty = self.dirty or changed
        if self.dirty and now - self.last >= COUNT_SYNC:
            self._sync(now)

    def timeout(self, now: float, timeout: float) -> float:
        if not self.dirty:
            return timeout
        return min(timeout, max(0.0, self.last + COUNT_SYNC - now))

    def _sync(self, now: float) -> None:
        self.board.sync_counts()
        self.last = now
        self.dirty = False
