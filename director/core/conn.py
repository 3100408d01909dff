"""The connection table (net/netfilter/ipvs/ip_vs_conn.c).

A connection is hashed by its client side (protocol, client address and port) in one
table that gives the kernel's two lookups: ``in_get`` by (protocol, client, VIP) for
packets from clients, and ``out_get`` by (protocol, real server, client) for replies
that come back through the director (NAT).  Each connection keeps its forwarding
method, bound once when it is created (``ip_vs_bind_xmit``).

Persistence templates (IP_VS_CONN_F_TEMPLATE) live in a dictionary keyed by
(protocol, masked client address, VIP or fwmark, virtual port or 0); a connection made
through a template is "controlled" by it, and a template is not let go while it still
controls connections: at its timeout it is put off for another period, as
ip_vs_conn_expire does with n_control.

Binding a connection to its real server also applies the thresholds, as
ip_vs_bind_dest/ip_vs_unbind_dest do: reaching the upper threshold marks the server
overloaded; it is cleared below the lower threshold, or below 3/4 of the upper one
when no lower one is set.

The table is a hash table of chained buckets that grows by linear hashing (see
ConnTable), and an entry is kept lean (see Conn): about 240 bytes each, all told, from
100,000 to a million entries, where two dictionaries keyed by tuples cost some 620.

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


# What one entry costs in memory, all told (the object, its key integer, its timer's
# float, its bucket and its place in the wheel): about 240 bytes measured with
# tracemalloc over 100,000 entries (tests/core/test_conn.py measures it again and holds
# it to 256; the kernel's struct ip_vs_conn is some 128).  The memory cap on the table
# is a number of entries derived from it.  A template costs more (it sits in a
# dictionary by its tuple key), but there is one per client network, not per
# connection.
CONN_BYTES = 256
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


# An IPv6 client key: a family bit above protocol (8 bits), address (128) and port (16),
# so that no IPv6 key equals an IPv4 one (protocol << 48 | address << 16 | port).
V6_KEY = 1 << 152


def client_key(protocol: int, caddr: bytes, cport: int) -> int:
    """The client side of an entry as one integer (Conn.ckey), IPv4 or IPv6 by the
    address's length."""
    if len(caddr) == 4:
        return protocol << 48 | int.from_bytes(caddr, "big") << 16 | cport
    return V6_KEY | protocol << 144 | int.from_bytes(caddr, "big") << 16 | cport


def _addr(key: int, v6: bool) -> bytes:
    if v6:
        return (key >> 16 & (1 << 128) - 1).to_bytes(16, "big")
    return (key >> 16 & 0xFFFFFFFF).to_bytes(4, "big")


class Conn:
    """One connection entry (``struct ip_vs_conn``).

    Lean, because a table may hold millions: the client side is one integer (``ckey``:
    protocol, address, port), the virtual and real server sides one each (``vkey``,
    ``dkey``: address, port), shared with the service and the real server whenever
    they are theirs; protocol, addresses and ports are read out of them.  ``next``
    links the entries of one hash bucket (the kernel's c_list), ``older`` and
    ``newer`` all entries in the order they were hashed.  An IPv6 client's key
    carries ``V6_KEY`` (``client_key``); the virtual side is of the client's family,
    the real server's of its own (a tunnel may carry one family in the other)."""

    __slots__ = (
        "ckey",
        "control",
        "dest",
        "dkey",
        "expires",
        "in_pkts",
        "inactive",
        "newer",
        "next",
        "nooutput",
        "older",
        "proto",
        "state",
        "svc",
        "sync",
        "timeout",
        "vkey",
        "xmit",
    )

    template = False  # IP_VS_CONN_F_TEMPLATE: a Template
    n_control = 0  # connections a template controls: none for a connection

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
    ) -> None:
        self.proto = proto
        self.ckey = client_key(protocol, caddr, cport)
        vkey = svc.vkey
        if vaddr != svc.key[1] or vport != vkey & 0xFFFF:
            vkey = int.from_bytes(vaddr, "big") << 16 | vport  # fwmark, port-zero
        self.vkey = vkey
        # Port-zero (persistent all-ports) services keep the client's destination port.
        dport = (dest.port or vport) if dport is None else dport
        self.dkey = dest.dkey if dport == dest.port else dest.dkey >> 16 << 16 | dport
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
        # The template it was made through, or the control connection of an
        # application helper's data connection (ip_vs_control_add).
        self.control: Controller | None = None
        self.in_pkts = 0  # packets from the client (todrop_entry looks at it)
        # The sync daemon's: IP_VS_CONN_F_SYNC, old_state, sync_endtime (director.core.sync).
        self.sync = 0
        self.next: Conn | None = None  # the next entry in its hash bucket
        # The entries hashed before and after it: the table lists them in that order.
        self.older: Conn | None = None
        self.newer: Conn | None = None

    @property
    def protocol(self) -> int:
        ckey = self.ckey
        return ckey >> 144 & 0xFF if ckey >= V6_KEY else ckey >> 48

    @property
    def caddr(self) -> bytes:
        return _addr(self.ckey, self.ckey >= V6_KEY)

    @property
    def cport(self) -> int:
        return self.ckey & 0xFFFF

    @property
    def vaddr(self) -> bytes:
        return _addr(self.vkey, self.ckey >= V6_KEY)

    @property
    def vport(self) -> int:
        return self.vkey & 0xFFFF

    @property
    def daddr(self) -> bytes:
        return self.dest.addr  # dkey's address is the real server's

    @property
    def dport(self) -> int:
        return self.dkey & 0xFFFF

    @property
    def in_key(self) -> InKey:
        return (self.protocol, self.caddr, self.cport, self.vaddr, self.vport)

    @property
    def out_key(self) -> OutKey:
        return (self.protocol, self.daddr, self.dport, self.caddr, self.cport)

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


class Controller(Conn):
    """An entry other connections may be controlled by (ip_vs_control_add): a
    template, or an application helper's control connection (director.core.app)."""

    __slots__ = ("n_control",)


class Template(Controller):
    """A persistence template (IP_VS_CONN_F_TEMPLATE): an entry without client port
    that the connections made through it are controlled by."""

    __slots__ = ()

    template = True

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
    ) -> None:
        super().__init__(proto, protocol, caddr, cport, vaddr, vport, svc, dest, xmit, dport)
        self.n_control = 0


# A bucket is picked by the low bits of the hash of the client key's bytes: Python
# hashes bytes with SipHash keyed by a secret drawn at each start (PYTHONHASHSEED,
# random unless set), which plays the part of the kernel's ip_vs_conn_rnd in jhash
# (ip_vs_conn_init): nobody outside can compute which spoofed clients share a bucket
# and flood one chain.  An int's own hash, and a tuple's of ints, are the same in
# every process, and an additive salt keeps their collisions; a multiplication by an
# odd constant, or the key itself, left most buckets empty as clients come in a row.


def _hash(ckey: int) -> int:
    return hash(ckey.to_bytes(20, "little"))


_MIN_BITS = 3


class ConnTable:
    """Connections in a hash table, templates by their keys, and the expiry wheel.

    The connections are hashed once, by their client side (protocol, client address
    and port), and found both ways from there, as ip_vs_conn_in_get and
    ip_vs_conn_out_get find them in the kernel's one ip_vs_conn_tab: a packet from a
    client by its VIP and port, a reply by its real server and port.  Each bucket is
    a chain through the entries (``Conn.next``), newest first (hlist_add_head).  The
    table grows by linear hashing: one more bucket, split from an old one, each time
    the entries outnumber the buckets, so that a lookup walks about one entry
    however large the table, and no insertion ever rehashes the whole of it.  It
    never shrinks, as the kernel's fixed-size table does not.

    ``in_tab`` and ``out_tab`` are views of the table by the (protocol, address,
    port, address, port) tuples the kernel's lookups take."""

    def __init__(self) -> None:
        self._buckets: list[Conn | None] = [None] * (1 << _MIN_BITS)
        self._low = (1 << _MIN_BITS) - 1  # the mask of the buckets not split yet
        self._split = 0  # buckets below it are split: picked by the next mask up
        self._count = 0
        self._oldest: Conn | None = None
        self._newest: Conn | None = None
        self.templates: dict[InKey, Template] = {}
        self.no_cport: set[Conn] = set()  # entries without client port yet
        self.in_tab = InView(self)
        self.out_tab = OutView(self)
        self._wheel: dict[int, list[Conn]] = {}
        self._clock: int | None = None  # next slot the collector looks at
        self._due: list[Conn] = []  # what is left of the slot being collected
        # The client key in_get last missed and its hash (_link's to take again).
        self._miss_key = -1
        self._miss_hash = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Conn]:
        return iter(self.conns())

    def conns(self) -> list[Conn]:
        """Every connection, oldest first."""
        out: list[Conn] = []
        conn = self._oldest
        while conn is not None:
            out.append(conn)
            conn = conn.newer
        return out

    def bucket(self, ckey: int) -> int:
        """The bucket of a client key."""
        h = _hash(ckey)
        i = h & self._low
        return h & (self._low << 1 | 1) if i < self._split else i

    def in_get(self, ckey: int, vkey: int) -> Conn | None:
        """ip_vs_conn_in_get: the entry of a client's packet to a virtual service.  A
        miss remembers the key's hash, which the SYN's insert (``_link``) takes again
        rather than hashing the same key twice."""
        h = hash(ckey.to_bytes(20, "little"))  # _hash and bucket, inline (every packet)
        i = h & self._low
        if i < self._split:
            i = h & (self._low << 1 | 1)
        conn = self._buckets[i]
        while conn is not None and (conn.ckey != ckey or conn.vkey != vkey):
            conn = conn.next
        if conn is None:
            self._miss_key = ckey
            self._miss_hash = h
        return conn

    def out_get(self, ckey: int, dkey: int) -> Conn | None:
        """ip_vs_conn_out_get: the entry of a real server's reply to a client."""
        h = hash(ckey.to_bytes(20, "little"))  # _hash and bucket, inline (every packet)
        i = h & self._low
        if i < self._split:
            i = h & (self._low << 1 | 1)
        conn = self._buckets[i]
        while conn is not None and (conn.ckey != ckey or conn.dkey != dkey):
            conn = conn.next
        return conn

    def find_in(
        self, protocol: int, caddr: bytes, cport: int, vaddr: bytes, vport: int
    ) -> Conn | None:
        """in_get by the fields of a packet as ``parse`` reads them."""
        ckey = client_key(protocol, caddr, cport)
        return self.in_get(ckey, int.from_bytes(vaddr, "big") << 16 | vport)

    def find_out(
        self, protocol: int, daddr: bytes, dport: int, caddr: bytes, cport: int
    ) -> Conn | None:
        """out_get by the fields of a reply as ``parse`` reads them."""
        ckey = client_key(protocol, caddr, cport)
        return self.out_get(ckey, int.from_bytes(daddr, "big") << 16 | dport)

    def add(self, conn: Conn, control: Controller | None = None, no_cport: bool = False) -> None:
        """Hash a new connection (ip_vs_conn_hash), bind it to its real server
        (ip_vs_bind_dest) and, if it was made through a template (or by a helper's
        control connection), put it under its control (ip_vs_control_add).
        ``no_cport``: an entry whose client port is not known yet
        (IP_VS_CONN_F_NO_CPORT, client port 0): ``fill_cport`` gives it one."""
        dest = conn.dest
        if isinstance(conn, Template):
            self.templates[conn.in_key] = conn
            dest.persistconns += 1
        else:
            if no_cport:
                self.no_cport.add(conn)
            self._link(conn)
            dest.inactconns += 1
            if control is not None:
                conn.control = control
                control.n_control += 1
        if dest.u_threshold and dest.activeconns + dest.inactconns >= dest.u_threshold:
            dest.overloaded = True
        self._file(conn, int(conn.expires))

    def _link(self, conn: Conn) -> None:
        """Put a connection in its bucket and at the newest end of the order."""
        buckets = self._buckets
        ckey = conn.ckey
        h = self._miss_hash if ckey == self._miss_key else _hash(ckey)
        i = h & self._low
        if i < self._split:
            i = h & (self._low << 1 | 1)
        conn.next = buckets[i]
        buckets[i] = conn
        newest = self._newest
        conn.older = newest
        if newest is None:
            self._oldest = conn
        else:
            newest.newer = conn
        self._newest = conn
        self._count += 1
        if self._count > len(buckets):
            self._grow()

    def find_no_cport(self, protocol: int, caddr: bytes, cport: int, vaddr: bytes,
                      vport: int) -> Conn | None:  # fmt: skip
        """ip_vs_conn_in_get's second look, "if (!cp && no_cport_conns)": the entry
        of a client with port 0 for this virtual port, its client port filled in
        from the packet (ip_vs_conn_fill_cport, which ip_vs_nat_xmit calls)."""
        if not self.no_cport:
            return None
        conn = self.find_in(protocol, caddr, 0, vaddr, vport)
        if conn is None or conn not in self.no_cport:
            return None
        self.fill_cport(conn, cport)
        return conn

    def fill_cport(self, conn: Conn, cport: int) -> None:
        """ip_vs_conn_fill_cport: unhash, set the client port, hash again."""
        self.no_cport.discard(conn)
        self._unhash(conn)
        conn.ckey = conn.ckey >> 16 << 16 | cport
        self._link(conn)

    def _grow(self) -> None:
        """Linear hashing's split: the next bucket not yet split shares its entries,
        in their order, with one new bucket at the end, by one more bit of the hash."""
        buckets = self._buckets
        old = self._split
        high = self._low << 1 | 1
        new = len(buckets)
        buckets.append(None)
        conn = buckets[old]
        keep: Conn | None = None
        move: Conn | None = None
        buckets[old] = None
        while conn is not None:
            following = conn.next
            conn.next = None
            if _hash(conn.ckey) & high == old:
                if keep is None:
                    buckets[old] = conn
                else:
                    keep.next = conn
                keep = conn
            else:
                if move is None:
                    buckets[new] = conn
                else:
                    move.next = conn
                move = conn
            conn = following
        self._split += 1
        if self._split > self._low:
            self._low = high
            self._split = 0

    def _unhash(self, conn: Conn) -> bool:
        """Take a connection out of its bucket; False if it was not there."""
        buckets = self._buckets
        i = self.bucket(conn.ckey)
        prev = None
        cur = buckets[i]
        while cur is not None and cur is not conn:
            prev, cur = cur, cur.next
        if cur is None:
            return False
        if prev is None:
            buckets[i] = conn.next
        else:
            prev.next = conn.next
        older, newer = conn.older, conn.newer
        if older is None:
            self._oldest = newer
        else:
            older.newer = newer
        if newer is None:
            self._newest = older
        else:
            newer.older = older
        conn.next = conn.older = conn.newer = None
        self._count -= 1
        return True

    def remove(self, conn: Conn) -> None:
        """Unhash and unbind (ip_vs_conn_expire's work), keeping the counters right."""
        dest = conn.dest
        if conn.template:
            key = conn.in_key
            if self.templates.get(key) is not conn:
                return
            del self.templates[key]
            dest.persistconns -= 1
        else:
            if not self._unhash(conn):
                return
            if self.no_cport:
                self.no_cport.discard(conn)
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
        return (self._count + len(self.templates)) * CONN_BYTES

    def is_hashed(self, conn: Conn) -> bool:
        if conn.template:
            return self.templates.get(conn.in_key) is conn
        cur = self._buckets[self.bucket(conn.ckey)]
        while cur is not None and cur is not conn:
            cur = cur.next
        return cur is not None

    def all(self) -> list[Conn]:
        """Connections and templates, as ``ipvsadm -Lc`` lists them."""
        return [*self.conns(), *self.templates.values()]

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


class InView:
    """The connections by in key, (protocol, caddr, cport, vaddr, vport), read-only."""

    def __init__(self, table: ConnTable) -> None:
        self._table = table

    def get(self, key: InKey) -> Conn | None:
        return self._table.find_in(*key)

    def __getitem__(self, key: InKey) -> Conn:
        conn = self.get(key)
        if conn is None:
            raise KeyError(key)
        return conn

    def __contains__(self, key: InKey) -> bool:
        return self.get(key) is not None

    def __iter__(self) -> Iterator[InKey]:
        return iter([conn.in_key for conn in self._table.conns()])

    def __len__(self) -> int:
        return len(self._table)

    def values(self) -> list[Conn]:
        return self._table.conns()


class OutView(InView):
    """The connections by out key, (protocol, daddr, dport, caddr, cport)."""

    def get(self, key: OutKey) -> Conn | None:
        return self._table.find_out(*key)

    def __iter__(self) -> Iterator[OutKey]:
        return iter([conn.out_key for conn in self._table.conns()])
