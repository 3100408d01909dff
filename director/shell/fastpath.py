"""The kernel fast path's shell (``directord --fast-path kernel``): conntrack carries
the NAT connections, the worker keeps IPVS's books on them.

- ``annotate``: every NAT real server of a TCP or UDP service gets its firewall mark
  (FAST_TAG | its board slot), which the core answers a new flow with
  (director.core.xmit.kernel) and the hooks' DNAT rule matches.
- ``Follower``: conntrack's events and, every ``DUMP_EVERY`` seconds (or after events
  were lost), a dump of the connections with director's mark, applied to the worker's
  table: states (so lc, wlc, sed, nq, ovf and the thresholds weigh live connections),
  ends and time left.  A connection that is not this worker's (its client is another shard's)
  is not in its table and is passed over.
- ``Accounting``: the packets and bytes of the fast flows, which the hooks count per
  real server and direction (the nftables table director_acct), into the stats, the
  estimator and the metrics every ``ACCOUNT_EVERY`` seconds: reading them costs the
  same whatever the number of connections.  The packets that reach the worker (a
  flow's first) it counts itself.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from director.core.engine import Director
from director.core.service import IPPROTO_TCP, IPPROTO_UDP, Dest
from director.core.shard import Shards
from director.shell.board import SlotKey
from director.shell.netfilter import FAST_BITS, FAST_MASK, FAST_TAG, fast_counters, fast_mark

log = logging.getLogger(__name__)

ACCOUNT_EVERY = 2.0  # seconds between two readings of the counters: the estimator's (ip_vs_est.c)
# Seconds between two dumps, which bring what the events leave out: the later states
# and conntrack's time left (an entry it keeps alive stays here at least until the next
# dump, whatever time it had left at the last one).
DUMP_EVERY = 10.0
# A dump walks every fast-path connection: with many, they come less often, so that
# dumping takes at most 1/DUMP_SHARE of the worker's time.
DUMP_SHARE = 20
FAST_PROTOCOLS = (IPPROTO_TCP, IPPROTO_UDP)
# The TCP states whose events change IPVS's books: ESTABLISHED (the entry takes its
# state and its long timeout; it was active already from SYN_RECV, as in IPVS's
# tcp_state_active_table) and leaving it, for FIN_WAIT on a FIN or CLOSE on a reset
# (tcp_conntracks[], nf_conntrack_proto_tcp.c), which makes it inactive.  The kernel
# drops the other updates (SYN_RECV, CLOSE_WAIT, LAST_ACK, TIME_WAIT: four of a short
# connection's six) before they reach the worker; the dumps bring the later states.
BOOKED_STATES = ("ESTABLISHED", "FIN_WAIT", "CLOSE")
Tuple4 = tuple[bytes, int, bytes, int]  # source address, port, destination address, port


def annotate(director: Director, slots: Mapping[SlotKey, int], on: bool) -> None:
    """Give each NAT real server of a fast service its fast mark (0 when off): a TCP
    or UDP service of an IPv4 VIP with a port, as netfilter.fast_service (the others'
    opening packets reach the worker at LOCAL_IN, where a mark would drop them)."""
    for svc in director.services:
        proto, addr, port = svc.key
        fast = on and proto in FAST_PROTOCOLS and len(addr) == 4 and bool(port)
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


class Source(Protocol):
    """Where the follower reads conntrack: its events, and dumps of director's entries."""

    @property
    def lost(self) -> bool: ...
    @property
    def overruns(self) -> int: ...
    @property
    def malformed(self) -> int: ...
    def fileno(self) -> int: ...
    def read(self) -> list[Entry]: ...
    def dump(self) -> list[Entry]: ...
    def forgive(self) -> None: ...
    def close(self) -> None: ...
    def forget(self, mark: int) -> None: ...
    def select(self, shards: Shards | None, index: int) -> None: ...


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

    @property
    def overruns(self) -> int:
        """Times the kernel could not deliver events (ENOBUFS)."""
        return self.events.enobufs

    @property
    def malformed(self) -> int:
        return self.events.malformed + self.table.malformed

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

    def select(self, shards: Shards | None, index: int) -> None:
        """Only the events of worker ``index``'s clients under ``shards`` from now on
        (None, or a single worker: every client's).  Its IPv4 clients are those whose
        shard bits have one of its values; the IPv6 ones are worker 0's."""
        from director.shell.conntrack import Clients

        if shards is None or shards.workers == 1:
            self.events.select(None)
            return
        values = tuple(addr for addr, _, owner in shards.patterns() if owner == index)
        self.events.select(Clients(shards.mask, values, ipv6=index == 0))

    def close(self) -> None:
        self.events.close()
        self.table.close()


def follow(director: Director, shards: Shards | None = None, index: int = 0) -> Follower:
    """A follower of ctnetlink for ``director``, worker ``index`` of ``shards``."""
    follower = Follower(director, Conntrack())
    follower.follow(shards, index)
    return follower


class Follower:
    """One worker's view of conntrack's fast-path connections."""

    def __init__(self, director: Director, source: Source) -> None:
        self.director = director
        self.source = source
        self.counts: Counter[str] = Counter()  # events and dumps applied, for the logs
        self._next_dump = 0.0
        self._interval = DUMP_EVERY  # seconds to the next dump, as the last one set it

    def fileno(self) -> int:
        return self.source.fileno()

    def close(self) -> None:
        self.source.close()

    def follow(self, shards: Shards | None, index: int) -> None:
        """Conntrack's events for this worker's clients only (``index`` under
        ``shards``), or for every client (None: while the shards are being cut anew,
        when the worker holds entries of both its old and its new clients)."""
        self.source.select(shards, index)

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
            self.counts["dumps"] += 1
            self._interval = max(DUMP_EVERY, took * DUMP_SHARE)
            self._next_dump = now + self._interval

    def report(self) -> dict[str, int]:
        """What the metrics show of it: events and dump entries applied, dumps made,
        overruns (events lost, made up for by a dump) and unreadable messages."""
        counts = {key: self.counts[key] for key in ("update", "destroy", "dump", "dumps")}
        return {**counts, "overruns": self.source.overruns, "malformed": self.source.malformed}

    def resync(self, now: float) -> None:
        """Refresh every fast-path entry from a dump: time left and state (an entry
        whose end was missed is not in it, and times out here)."""
        self.apply(self.source.dump(), now)

    def apply(self, entries: Iterable[Entry], now: float) -> None:
        """Each entry to the table: another worker's, or one director did not
        schedule, is not in it and passed over."""
        director = self.director
        for entry in entries:
            protocol, (caddr, cport, vaddr, vport) = entry.protocol, entry.orig
            if entry.kind == "destroy":
                found = director.ct_gone(protocol, caddr, cport, vaddr, vport)
            else:
                ttl = None if entry.timeout is None else max(entry.timeout, self._interval)
                found = director.ct_seen(protocol, caddr, cport, vaddr, vport, entry.state, ttl,
                                         now)  # fmt: skip
            if found:
                self.counts[entry.kind] += 1


Counters = tuple[int, int, int, int]  # packets and bytes from the clients, then to them


class Accounting:
    """The fast flows' packets and bytes into IPVS's counters: what the hooks' rules
    counted since the last reading (``read``: netfilter.fast_counters, by fast mark),
    added to the real server's, its service's and the totals' stats, as the
    every-packet path adds each packet.  One process reads them for the namespace."""

    def __init__(self, director: Director,
                 read: Callable[[], Mapping[int, Counters]] = fast_counters) -> None:  # fmt: skip
        self.director = director
        self.read = read
        # Per mark: the real server it counted for and the counters last read.
        self._last: dict[int, tuple[Dest, Counters]] = {}
        self._next = 0.0

    def tick(self, now: float) -> None:
        if now >= self._next:
            self._next = now + ACCOUNT_EVERY
            self.take(self.read())

    def take(self, counters: Mapping[int, Counters]) -> None:
        """Add what each rule counted since the last reading.  A rule counts from zero
        when it is made again (the hooks lost track of their chain, or the slot went to
        another real server): its counters then start a new run."""
        servers = {d.fast_mark: (svc, d) for svc in self.director.services for d in svc.dests
                   if d.fast_mark}  # fmt: skip
        last, self._last = self._last, {}
        for mark, now in counters.items():
            if mark not in servers:
                continue
            svc, dest = servers[mark]
            before = last.get(mark)
            old = before[1] if before is not None and before[0] is dest else (0, 0, 0, 0)
            inpkts, inbytes = _since(now[0], now[1], old[0], old[1])
            outpkts, outbytes = _since(now[2], now[3], old[2], old[3])
            if inpkts or outpkts:
                self.director.ct_account(svc, dest, inpkts, inbytes, outpkts, outbytes)
            self._last[mark] = (dest, now)


def _since(packets: int, octets: int, old_packets: int, old_octets: int) -> tuple[int, int]:
    """One rule's counts since the last reading (all of them when it counted less: made
    again since)."""
    if packets < old_packets or octets < old_octets:
        return packets, octets
    return packets - old_packets, octets - old_octets


__all__ = ["FAST_MASK", "FAST_TAG", "Accounting", "Follower", "annotate"]
