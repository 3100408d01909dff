"""IPVS UDP "state" handling (net/netfilter/ipvs/ip_vs_proto_udp.c).

UDP has one state, NORMAL, and one timeout (300 s by default, ipvsadm --set's third
figure).  A UDP connection never becomes active: it stays in its real server's
inactive counter for its whole life, which is what ipvsadm shows as InActConn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.proto_tcp import OUTPUT

if TYPE_CHECKING:
    from director.core.conn import Conn

NORMAL = 0
STATE_NAMES: tuple[str, ...] = ("UDP",)
DEFAULT_TIMEOUT = 300


class UdpProtocol:
    name = "UDP"
    state_names = STATE_NAMES

    def __init__(self) -> None:
        self.timeouts: list[int] = [DEFAULT_TIMEOUT]

    def initial_state(self) -> int:
        return NORMAL

    def set_timeout(self, seconds: int) -> None:
        if seconds:
            self.timeouts[NORMAL] = seconds

    def transition(self, conn: Conn, direction: int, flags: int) -> None:
        """udp_state_transition: an answer assures the connection's template."""
        conn.timeout = self.timeouts[NORMAL]
        if direction == OUTPUT:
            conn.assure_control()
