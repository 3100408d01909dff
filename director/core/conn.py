"""The connection table (net/netfilter/ipvs/ip_vs_conn.c).

A connection is keyed by its client tuple.  Two dictionaries give the kernel's two
lookups: ``in_get`` by (protocol, client, VIP) for packets from clients, and
``out_get`` by (protocol, real server, client) for replies that come back through the
director (NAT).  Each connection keeps its forwarding method, bound once when it is
created (``ip_vs_bind_xmit``).

Persistence templates (IP_VS_CONN_F_TEMPLATE) live in a third dictionary keyed by
(protocol, masked client address, VIP or fwmark, virtual port or 0); a connection made
through a template is "controlled" by it, and a template is not let go while it still
controls connections: at its timeout it is put off for another period, as
ip_vs_conn_expire does with n_control.

Binding a connection to its real server also applies the thresholds, as
ip_vs_bind_dest/ip_vs_unbind_dest do: reaching the upper threshold marks the server
overloaded; it is cleared below the lower threshold, or below 3/4 of the upper one
when no lower one is set.

Expiry is a timer wheel of one-second slots.  A packet only moves ``expires`` forward;
the collector visits a connection when its slot comes due and re-files it if it was
refreshed meanwhile, so its work is the number of connections due, not the size of the
table (the kernel arms one timer per connection to the same end).  The work comes in
slices of a fixed number of entries (a budget, not a time: the core reads no clock);
what a slice leaves waits for the next, and the daemon serves packets in between, as
the kernel's timers fire spread out rather than in one long pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from director.core.service import Dest, Service
    from director.core.xmit import Xmit


class ConnProtocol(Protocol):
    """The part of ``struct ip_vs_protocol`` a connection needs."""

    name: str
    state_names: tuple[str, ...]

    def initial_state(self) -> int: ...

    def transition(self, conn: Conn, direction: int, flags: int) -> None: ...


# What one entry costs in memory, all told (the object, its keys, the dictionary slots,
# its place in the wheel): about 610 bytes measured with tracemalloc over 50,000
# entries (tests/core/test_defense.py measures it again).  The memory cap on the table
# is a number of entries derived from it.
CONN_BYTES = 640
PAGE = 4096

# Entries the collector visits per slice (``ConnTable.expire``'s budget in the daemon):
# at 1.3 to 2.1 us an entry, 1 to 2 ms, so that packets are served between slices
# however many entries are due at once.
COLLECT_SLICE = 1000

EXPIRE_LATER = 60  # seconds: ip_vs_conn_expire's "cp->timeout = 60*HZ"

# A template's states (IP_VS_CTPL_S_*): ASSURED once a connection it controls was
# established (TCP) or answered (UDP); drop_entry spares assured templates.
CTPL_ASSURED = 1
TEMPLATE_STATE_NAMES: tuple[str, ...] = ("NONE", "ASSURED")

InKey = tuple[int, bytes, int, bytes, int]  # protocol, caddr, cport, vaddr, vport
OutKey = tuple[int, bytes, int, bytes, int]  # protocol, daddr, dport, caddr, cport


class Conn:
    """One connection entry (``struct ip_vs_conn``)."""

    __slots__ = (
        "caddr",
        "control",
        "cport",
        "daddr",
        "dest",
        "dport",
        "expires",
        "in_key",
        "in_pkts",
        "inactive",
        "n_control",
        "nooutput",
        "out_key",
        "proto",
        "protocol",
        "state",
        "svc",
        "template",
        "timeout",
        "vaddr",
        "vport",
        "xmit",
    )

    def __init__(
        self,
        proto: ConnProtocol,
        protocol: int,
        caddr: bytes,
        cport: int,
        vaddr: bytes,
        vport: int,
        svc: Service,
        dest: Dest,
        xmit: Xmit,
        dport: int | None = None,
        template: bool = False,
    ) -> None:
        self.proto = proto
        self.protocol = protocol
        self.caddr = caddr
        self.cport = cport
        self.vaddr = vaddr
        self.vport = vport
        self.daddr = dest.addr
        # Port-zero (persistent all-ports) services keep the client's destination port.
        self.dport = (dest.port or vport) if dport is None else dport
        self.svc = svc
        self.dest = dest
        self.xmit = xmit
        self.state = proto.initial_state()
        self.timeout = 3  # ip_vs_conn_new's initial 3 s, replaced by the first transition
        self.expires = 0.0
        # New connections start inactive (the dest's conn_flags carry
        # IP_VS_CONN_F_INACTIVE); replies never cross the director for DR and TUN.
        self.inactive = True
        self.nooutput = xmit.nooutput
        self.template = template
        self.control: Conn | None = None  # the template this connection was made through
        self.n_control = 0  # connections a template controls
        self.in_pkts = 0  # packets from the client (todrop_entry looks at it)
        self.in_key: InKey = (protocol, caddr, cport, vaddr, vport)
        self.out_key: OutKey = (protocol, self.daddr, self.dport, caddr, cport)

    @property
    def state_name(self) -> str:
        """ip_vs_state_name: a template shows NONE or ASSURED, whatever its protocol."""
        if self.template:
            return TEMPLATE_STATE_NAMES[self.state]
        return self.proto.state_names[self.state]

    def assure_control(self) -> None:
        """ip_vs_control_assure_ct: the template this connection was made through is
        assured."""
        if self.control is not None and self.control.template:
            self.control.state |= CTPL_ASSURED


class ConnTable:
    """Connections by their in and out keys, with the expiry wheel."""

    def __init__(self) -> None:
        self.in_tab: dict[InKey, Conn] = {}
        self.out_tab: dict[OutKey, Conn] = {}
        self.templates: dict[InKey, Conn] = {}
        self._wheel: dict[int, list[Conn]] = {}
        self._clock: int | None = None  # next slot the collector looks at
        self._due: list[Conn] = []  # what is left of the slot being collected

    def __len__(self) -> int:
        return len(self.in_tab)

    def __iter__(self) -> Iterator[Conn]:
        return iter(list(self.in_tab.values()))

    def add(self, conn: Conn, control: Conn | None = None) -> None:
        """Hash a new connection (ip_vs_conn_hash), bind it to its real server
        (ip_vs_bind_dest) and, if it was made through a template, put it under that
        template's control (ip_vs_control_add)."""
        dest = conn.dest
        if conn.template:
            self.templates[conn.in_key] = conn
            dest.persistconns += 1
        else:
            self.in_tab[conn.in_key] = conn
            self.out_tab[conn.out_key] = conn
            dest.inactconns += 1
            if control is not None:
                conn.control = control
                control.n_control += 1
        if dest.u_threshold and dest.activeconns + dest.inactconns >= dest.u_threshold:
            dest.overloaded = True
        self._file(conn, int(conn.expires))

    def remove(self, conn: Conn) -> None:
        """Unhash and unbind (ip_vs_conn_expire's work), keeping the counters right."""
        dest = conn.dest
        if conn.template:
            if self.templates.get(conn.in_key) is not conn:
                return
            del self.templates[conn.in_key]
            dest.persistconns -= 1
        else:
            if self.in_tab.get(conn.in_key) is not conn:
                return
            del self.in_tab[conn.in_key]
            self.out_tab.pop(conn.out_key, None)
            if conn.inactive:
                dest.inactconns -= 1
            else:
                dest.activeconns -= 1
            if conn.control is not None:
                conn.control.n_control -= 1
                conn.control = None
        _unbind_thresholds(dest)

    def memory(self) -> int:
        """Bytes the table holds, by CONN_BYTES per entry."""
        return (len(self.in_tab) + len(self.templates)) * CONN_BYTES

    def is_hashed(self, conn: Conn) -> bool:
        table = self.templates if conn.template else self.in_tab
        return table.get(conn.in_key) is conn

    def all(self) -> list[Conn]:
        """Connections and templates, as ``ipvsadm -Lc`` lists them."""
        return [*self.in_tab.values(), *self.templates.values()]

    def expire(self, now: float, budget: int | None = None) -> list[Conn]:
        """Visit the connections due by ``now``, at most ``budget`` of them (None: all);
        remove and return those whose time has come.

        What the budget leaves waits for the next call, in the slot being worked on,
        so a caller that calls again between packets spreads any amount of due work
        (a restored table, a timeout change, a flood's entries a minute later) over
        slices of ``budget`` entries each; ``behind`` says whether work is left.
        """
        tick = int(now)
        if self._clock is None:
            # The collector's clock starts at its first call, never ahead of time:
            # an entry filed before it (a restored table, a persistence template due
            # minutes away) must not hold back entries due sooner.
            self._clock = min(tick, min(self._wheel, default=tick))
        expired: list[Conn] = []
        due = self._due
        left = -1 if budget is None else budget
        while left:
            if not due:
                if self._clock > tick:
                    break
                # The slot leaves the wheel whole; entries filed for it from now on
                # go to the next slot (``_file`` never files behind the clock).
                due = self._due = self._wheel.pop(self._clock, [])
                self._clock += 1
                continue
            conn = due.pop()
            left -= 1
            if not self.is_hashed(conn):
                continue  # already removed
            if conn.expires <= now and conn.n_control:
                # A template outlives what it controls: its timer, fired, is set
                # again, and its timeout becomes 60 s for good, so later connections
                # through it restart it for 60 s (ip_vs_conn_expire's expire_later).
                conn.timeout = EXPIRE_LATER
                conn.expires += EXPIRE_LATER
            if conn.expires > now or conn.n_control:
                self._file(conn, int(conn.expires))
            else:
                self.remove(conn)
                expired.append(conn)
        return expired

    def behind(self, now: float) -> bool:
        """Are entries due by ``now`` still to be visited (a budget cut the last call)?"""
        if self._due:
            return True
        if not self._wheel:
            return False
        return self._clock is None or self._clock <= int(now)

    def _file(self, conn: Conn, slot: int) -> None:
        if self._clock is not None and slot < self._clock:
            slot = self._clock
        bucket = self._wheel.get(slot)
        if bucket is None:
            self._wheel[slot] = [conn]
        else:
            bucket.append(conn)


def _unbind_thresholds(dest: Dest) -> None:
    """ip_vs_unbind_dest: clear the overload mark once the server has room again."""
    if not dest.overloaded:
        return
    conns = dest.activeconns + dest.inactconns
    if dest.l_threshold:
        if conns < dest.l_threshold:
            dest.overloaded = False
    elif dest.u_threshold:
        if conns * 4 < dest.u_threshold * 3:
            dest.overloaded = False
    else:
        dest.overloaded = False
