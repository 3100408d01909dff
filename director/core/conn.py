"""The connection table (net/netfilter/ipvs/ip_vs_conn.c).

A connection is keyed by its client tuple.  Two dictionaries give the kernel's two
lookups: ``in_get`` by (protocol, client, VIP) for packets from clients, and
``out_get`` by (protocol, real server, client) for replies that come back through the
director (NAT).  Each connection keeps its forwarding method, bound once when it is
created (``ip_vs_bind_xmit``).

Expiry is a timer wheel of one-second slots.  A packet only moves ``expires`` forward;
the collector visits a connection when its slot comes due and re-files it if it was
refreshed meanwhile, so the cost of one tick is the number of connections due then,
not the size of the table (the kernel arms one timer per connection to the same end).
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


InKey = tuple[int, bytes, int, bytes, int]  # protocol, caddr, cport, vaddr, vport
OutKey = tuple[int, bytes, int, bytes, int]  # protocol, daddr, dport, caddr, cport


class Conn:
    """One connection entry (``struct ip_vs_conn``)."""

    __slots__ = (
        "caddr",
        "cport",
        "daddr",
        "dest",
        "dport",
        "expires",
        "in_key",
        "inactive",
        "nooutput",
        "out_key",
        "proto",
        "protocol",
        "state",
        "svc",
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
    ) -> None:
        self.proto = proto
        self.protocol = protocol
        self.caddr = caddr
        self.cport = cport
        self.vaddr = vaddr
        self.vport = vport
        self.daddr = dest.addr
        # Port-zero (persistent all-ports) services keep the client's destination port.
        self.dport = dest.port or vport
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
        self.in_key: InKey = (protocol, caddr, cport, vaddr, vport)
        self.out_key: OutKey = (protocol, self.daddr, self.dport, caddr, cport)

    @property
    def state_name(self) -> str:
        return self.proto.state_names[self.state]


class ConnTable:
    """Connections by their in and out keys, with the expiry wheel."""

    def __init__(self) -> None:
        self.in_tab: dict[InKey, Conn] = {}
        self.out_tab: dict[OutKey, Conn] = {}
        self._wheel: dict[int, list[Conn]] = {}
        self._clock: int | None = None  # next slot the collector looks at

    def __len__(self) -> int:
        return len(self.in_tab)

    def __iter__(self) -> Iterator[Conn]:
        return iter(list(self.in_tab.values()))

    def add(self, conn: Conn) -> None:
        """Hash a new connection (ip_vs_conn_hash) and bind it to its real server."""
        self.in_tab[conn.in_key] = conn
        self.out_tab[conn.out_key] = conn
        conn.dest.inactconns += 1
        self._file(conn, int(conn.expires))

    def remove(self, conn: Conn) -> None:
        """Unhash and unbind (ip_vs_conn_expire's work), keeping the counters right."""
        if self.in_tab.pop(conn.in_key, None) is None:
            return
        self.out_tab.pop(conn.out_key, None)
        if conn.inactive:
            conn.dest.inactconns -= 1
        else:
            conn.dest.activeconns -= 1

    def expire(self, now: float) -> list[Conn]:
        """Remove and return the connections whose time has come."""
        tick = int(now)
        if self._clock is None:
            return []
        expired: list[Conn] = []
        while self._clock <= tick:
            for conn in self._wheel.pop(self._clock, ()):
                if conn.in_key not in self.in_tab or self.in_tab[conn.in_key] is not conn:
                    continue  # already removed
                if conn.expires > now:
                    self._file(conn, max(int(conn.expires), tick + 1))
                else:
                    self.remove(conn)
                    expired.append(conn)
            self._clock += 1
        return expired

    def flush(self) -> None:
        """Drop every connection (used when the configuration is cleared)."""
        for conn in list(self.in_tab.values()):
            self.remove(conn)
        self._wheel.clear()

    def _file(self, conn: Conn, slot: int) -> None:
        if self._clock is None:
            self._clock = slot
        elif slot < self._clock:
            slot = self._clock
        bucket = self._wheel.get(slot)
        if bucket is None:
            self._wheel[slot] = [conn]
        else:
            bucket.append(conn)
