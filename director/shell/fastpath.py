"""The kernel fast path's shell (``directord --fast-path kernel``): conntrack carries
the NAT connections, the worker keeps IPVS's books on them.

- ``annotate``: every NAT real server of a TCP or UDP service gets its firewall mark
  (FAST_TAG | its board slot), which the core answers a new flow with
  (director.core.xmit.kernel) and the hooks' DNAT rule matches.
- ``Follower``: conntrack's events and, every ``RESYNC`` seconds (or after events were
  lost), a dump of the connections with director's mark, applied to the worker's table:
  states (so lc, wlc, sed, nq, ovf and the thresholds weigh live connections), ends,
  time left, and conntrack's packet and byte counters (nf_conntrack_acct) into the
  stats, the estimator and the metrics.  A connection that is not this worker's (its
  client is another shard's) is not in its table and is passed over.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Protocol

from director.core.conn import Conn
from director.core.engine import Director
from director.core.service import IPPROTO_TCP, IPPROTO_UDP
from director.shell.board import SlotKey
from director.shell.netfilter import FAST_BITS, FAST_MASK, FAST_TAG, fast_mark

log = logging.getLogger(__name__)

RESYNC = 2.0  # seconds between two dumps: the estimator's interval (ip_vs_est.c: 2 s)
# A dump walks every fast-path connection: with many, they come less often, so that
# dumping takes at most 1/DUMP_SHARE of the worker's time.
DUMP_SHARE = 20
FAST_PROTOCOLS = (IPPROTO_TCP, IPPROTO_UDP)
# The TCP states whose events change IPVS's books: a connection becomes active in
# ESTABLISHED and inactive when it leaves it, for FIN_WAIT on a FIN or CLOSE on a reset
# (tcp_conntracks[], nf_conntrack_proto_tcp.c).  The kernel drops the other updates
# (SYN_RECV, CLOSE_WAIT, LAST_ACK, TIME_WAIT: four of a short connection's six) before
# they reach the worker; the dumps bring the entries' later states and times.
BOOKED_STATES = ("ESTABLISHED", "FIN_WAIT", "CLOSE")
Tuple4 = tuple[bytes, int, bytes, int]  # source address, port, destination address, port


def annotate(director: Director, slots: Mapping[SlotKey, int], on: bool) -> None:
    """Give each NAT real server of a TCP or UDP service its fast mark (0 when off)."""
    for svc in director.services:
        fast = on and svc.key[0] in FAST_PROTOCOLS
        for dest in svc.dests:
            slot = slots.get((svc.key, dest.addr, dest.port)) if fast else None
            dest.fast_mark = fast_mark(slot) if slot is not None and dest.method == "masq" else 0


def marks(director: Director) -> set[int]:
    """The fast marks of the real servers in service now."""
    return {d.fast_mark for svc in director.services for d in svc.dests if d.fast_mark}


class Entry(Protocol):
    """What the follower reads of a conntrack entry or event (director.shell.conntrack)."""

    @property
    def kind(self) -> str: ...
    @property
    def protocol(self) -> int: ...
    @property
    def orig(self) -> Tuple4: ...
    @property
    def state(self) -> str | None: ...
    @property
    def timeout(self) -> int | None: ...
    @property
    def counters(self) -> tuple[int, int, int, int]: ...


class Source(Protocol):
    """Where the follower reads conntrack: its events, and dumps of director's entries."""

    @property
    def lost(self) -> bool: ...
    def fileno(self) -> int: ...
    def read(self) -> list[Entry]: ...
    def dump(self) -> list[Entry]: ...
    def forgive(self) -> None: ...
    def close(self) -> None: ...
    def forget(self, mark: int) -> None: ...


class Conntrack:
    """The follower's ``Source`` over ctnetlink (director.shell.conntrack): events and
    dumps of the entries with director's connmark."""

    def __init__(self) -> None:
        from director.shell.conntrack import (
            NFNLGRP_CONNTRACK_DESTROY,
            NFNLGRP_CONNTRACK_UPDATE,
            CtEvents,
            CtTable,
        )

        # Not NEW: the worker made the entry itself.  Each update is a state change.
        groups = sum(1 << (g - 1) for g in (NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY))
        self.events = CtEvents(FAST_TAG, FAST_MASK, groups=groups, tcp_states=BOOKED_STATES)
        self.table = CtTable()

    @property
    def lost(self) -> bool:
        return bool(self.events.lost)

    def forgive(self) -> None:
        self.events.lost = False

    def fileno(self) -> int:
        return self.events.fileno()

    def read(self) -> list[Entry]:
        return list(self.events.read())

    def dump(self) -> list[Entry]:
        return list(self.table.dump(FAST_TAG, FAST_MASK))

    def forget(self, mark: int) -> None:
        """Remove conntrack's connections to the real server of ``mark``."""
        self.table.delete_marked(mark, FAST_BITS)

    def close(self) -> None:
        self.events.close()
        self.table.close()


def follow(director: Director) -> Follower:
    """A follower of ctnetlink for ``director``, with conntrack's accounting on in this
    network namespace (nf_conntrack_acct: the fast path's packet and byte counts)."""
    from director.shell.conntrack import enable_accounting

    enable_accounting()
    return Follower(director, Conntrack())


class Follower:
    """One worker's view of conntrack's fast-path connections."""

    def __init__(self, director: Director, source: Source) -> None:
        self.director = director
        self.source = source
        # Per connection (protocol, original tuple): the counters last added to the stats.
        self._counted: dict[tuple[int, Tuple4], tuple[int, int, int, int]] = {}
        self.counts: Counter[str] = Counter()  # events and dumps applied, for the logs
        self._next_dump = 0.0

    def fileno(self) -> int:
        return self.source.fileno()

    def close(self) -> None:
        self.source.close()

    def forget(self, gone: Iterable[int]) -> None:
        """Real servers left the service (deleted, or taken out by a health check):
        conntrack stops carrying their connections, whose packets then meet the
        director's own verdict on a real server that is gone (dropped, as IPVS drops
        them, or rescheduled by expire_nodest_conn)."""
        for mark in gone:
            self.source.forget(mark)

    def on_readable(self) -> None:
        self.apply(self.source.read(), time.monotonic())
        if self.source.lost:
            self.source.forgive()
            self._next_dump = 0.0  # resync now

    def tick(self, now: float) -> None:
        if now >= self._next_dump:
            started = time.monotonic()
            self.resync(now)
            took = time.monotonic() - started
            self._next_dump = now + max(RESYNC, took * DUMP_SHARE)

    def resync(self, now: float) -> None:
        """Refresh every fast-path entry from a dump: time left, state, counters."""
        entries = self.source.dump()
        self.apply(entries, now)
        alive = {(e.protocol, e.orig) for e in entries}
        for key in [k for k in self._counted if k not in alive]:
            del self._counted[key]  # its end was missed: the entry times out here

    def apply(self, entries: Iterable[Entry], now: float) -> None:
        director = self.director
        for entry in entries:
            protocol, (caddr, cport, vaddr, vport) = entry.protocol, entry.orig
            key = (protocol, entry.orig)
            conn = director.conns.find_in(protocol, caddr, cport, vaddr, vport)
            if conn is None:
                continue  # another worker's, or not scheduled by director
            self._account(key, conn, entry.counters)
            if entry.kind == "destroy":
                director.ct_gone(protocol, caddr, cport, vaddr, vport)
                self._counted.pop(key, None)
            else:
                ttl = entry.timeout if entry.timeout is not None else conn.timeout
                director.ct_seen(protocol, caddr, cport, vaddr, vport, entry.state, ttl, now)
            self.counts[entry.kind] += 1

    def _account(self, key: tuple[int, Tuple4], conn: Conn,
                 counters: tuple[int, int, int, int]) -> None:  # fmt: skip
        """What conntrack counted since the last time, into the stats (conntrack
        counts every packet of the connection, the worker none of them)."""
        if not any(counters):
            return  # accounting off, or nothing yet
        last = self._counted.get(key, (0, 0, 0, 0))
        self._counted[key] = counters
        inpkts, inbytes, outpkts, outbytes = (
            max(new - old, 0) for new, old in zip(counters, last, strict=True)
        )
        if inpkts or outpkts:
            self.director.ct_account(conn, inpkts, inbytes, outpkts, outbytes)


__all__ = ["FAST_MASK", "FAST_TAG", "Follower", "annotate"]
