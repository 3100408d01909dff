"""IPVS's defences against floods (update_defense_level and ip_vs_random_dropentry in
ip_vs_ctl.c and ip_vs_conn.c), run once a second with the memory figure the shell
reads.

- drop_entry: while active, a random 1/32 of the connection table is looked at every
  second; half-open TCP entries (SYN_RECV, SYNACK) go, and so do ESTABLISHED and UDP
  entries that were quiet for 60 s after few packets (todrop_entry's 0..8 rule).
- drop_packet: while active, one new connection in ``drop_rate`` is dropped
  (ip_vs_todrop); the rate follows how short memory is (amemthresh / (amemthresh -
  available)), or is am_droprate when always on.
- secure_tcp: while active, TCP moves by the stricter state table.

Each is 0 (off), 1 (automatic: becomes 2 while memory is short), 2 (automatic, active
now) or 3 (always on), as the sysctls are.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from director.core.conn import CTPL_ASSURED
from director.core.proto_tcp import ESTABLISHED, SYN_RECV, SYNACK
from director.core.service import IPPROTO_TCP

if TYPE_CHECKING:
    from director.core.conn import Conn, ConnTable
    from director.core.proto_tcp import TcpProtocol
    from director.core.sysctl import Sysctls

TODROP_RATE = (0, 1, 2, 3, 4, 5, 6, 7, 8)  # by the entry's incoming packet count
QUIET = 60.0  # todrop_entry: younger (more recently used) entries are left alone


@dataclass
class Defense:
    drop_entry: bool = False  # ipvs->dropentry
    drop_rate: int = 0
    drop_counter: int = 0
    secure: bool = False  # old_secure_tcp >= 2
    rng: random.Random = field(default_factory=random.Random)
    _todrop_counter: list[int] = field(default_factory=lambda: [0] * len(TODROP_RATE))

    def update(self, sysctls: Sysctls, availmem: int, tcp: TcpProtocol) -> None:
        """update_defense_level: ``availmem`` in 4 KiB pages."""
        amemthresh = max(sysctls.amemthresh, 0)
        nomem = availmem < amemthresh

        sysctls.drop_entry, self.drop_entry = _mode(sysctls.drop_entry, nomem)

        mode, active = _mode(sysctls.drop_packet, nomem)
        if not active:
            self.drop_rate = 0
        elif mode == 3:
            self.drop_rate = sysctls.am_droprate
        else:
            self.drop_rate = self.drop_counter = amemthresh // max(amemthresh - availmem, 1)
        sysctls.drop_packet = mode

        sysctls.secure_tcp, secure = _mode(sysctls.secure_tcp, nomem)
        if secure != self.secure:
            self.secure = secure
            tcp.secure(secure)

    def todrop(self) -> bool:
        """ip_vs_todrop: drop this new connection?"""
        if not self.drop_rate:
            return False
        self.drop_counter -= 1
        if self.drop_counter > 0:
            return False
        self.drop_counter = self.drop_rate
        return True

    def random_dropentry(self, conns: ConnTable, now: float) -> int:
        """ip_vs_random_dropentry: look at 1/32 of the table (connections and
        templates), drop what may go.  Nothing that still controls connections goes;
        a dropped connection takes its template along only if the template controls
        nothing else and is not assured (ip_vs_conn_expire's "drop controlling
        connection"), else the template keeps its timer and goes on."""
        if not self.drop_entry or not (conns.in_tab or conns.templates):
            return 0
        candidates = [*conns.in_tab.values(), *conns.templates.values()]
        dropped = 0
        for conn in self.rng.sample(candidates, max(1, len(candidates) >> 5)):
            if conn.n_control or not conns.is_hashed(conn) or not self._may_drop(conn, now):
                continue
            control = conn.control
            conns.remove(conn)
            dropped += 1
            if control is not None and not control.n_control and _unassured(control):
                conns.remove(control)
                dropped += 1
        return dropped

    def _may_drop(self, conn: Conn, now: float) -> bool:
        if conn.template:
            # A one-packet service's template counts its packets; any other template
            # may go while no connection of it was ever established or answered.
            if conn.svc.conf.ops:
                return self._todrop_entry(conn, now)
            return _unassured(conn)
        if conn.protocol == IPPROTO_TCP:
            if conn.state in (SYN_RECV, SYNACK):
                return True
            return conn.state == ESTABLISHED and self._todrop_entry(conn, now)
        return self._todrop_entry(conn, now)

    def _todrop_entry(self, conn: Conn, now: float) -> bool:
        """todrop_entry: quiet for a minute, and few packets in, one in ``rate``."""
        if now - (conn.expires - conn.timeout) < QUIET:
            return False
        packets = conn.in_pkts
        if not 0 <= packets < len(TODROP_RATE) or not TODROP_RATE[packets]:
            return False
        self._todrop_counter[packets] -= 1
        if self._todrop_counter[packets] > 0:
            return False
        self._todrop_counter[packets] = TODROP_RATE[packets]
        return True


def _unassured(conn: Conn) -> bool:
    """A connection, or a template never assured (IP_VS_CTPL_S_ASSURED)."""
    return not (conn.template and conn.state & CTPL_ASSURED)


def _mode(sysctl: int, nomem: bool) -> tuple[int, bool]:
    """A defence's next sysctl value and whether it is active (the 0/1/2/3 switch)."""
    if sysctl == 3:
        return 3, True
    if sysctl in (1, 2):
        return (2, True) if nomem else (1, False)
    return 0, False
