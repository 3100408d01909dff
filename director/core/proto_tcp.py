"""The IPVS TCP state machine (net/netfilter/ipvs/ip_vs_proto_tcp.c), as data.

A connection moves by the table for its direction: INPUT for client packets, OUTPUT
for replies seen by the director (NAT), INPUT-ONLY for connections whose replies never
cross the director (DR, TUN: IP_VS_CONN_F_NOOUTPUT).  The row is picked by the packet's
flags with RST before SYN before FIN before ACK; a packet with none of them sends the
connection to CLOSE.  Moving between an active state (tcp_state_active_table, since
Linux 4.8: SYN_SENT, SYN_RECV, SYNACK and ESTABLISHED) and any other state moves the
connection between its real server's active and inactive counters, which is what lc,
wlc, sed, nq, ovf and lblc weigh and what ``list`` shows as ActiveConn / InActConn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.packet import TH_ACK, TH_FIN, TH_RST, TH_SYN

if TYPE_CHECKING:
    from director.core.conn import Conn

# States, in the kernel's order (IP_VS_TCP_S_*).
(
    NONE,
    ESTABLISHED,
    SYN_SENT,
    SYN_RECV,
    FIN_WAIT,
    TIME_WAIT,
    CLOSE,
    CLOSE_WAIT,
    LAST_ACK,
    LISTEN,
    SYNACK,
) = range(11)

STATE_NAMES: tuple[str, ...] = (
    "NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT", "CLOSE",
    "CLOSE_WAIT", "LAST_ACK", "LISTEN", "SYNACK",
)  # fmt: skip

# tcp_state_active_table[]: the states counted in a real server's activeconns.
STATE_ACTIVE: tuple[bool, ...] = (
    False, True, True, True, False, False, False, False, False, False, True,
)  # fmt: skip

# Default timeouts in seconds (tcp_timeouts[]).
DEFAULT_TIMEOUTS: tuple[int, ...] = (2, 900, 120, 60, 120, 120, 10, 60, 30, 120, 120)

INPUT, OUTPUT, INPUT_ONLY = 0, 1, 2  # IP_VS_DIR_*

sNO, sES, sSS, sSR, sFW, sTW, sCL, sCW, sLA, sLI, sSA = range(11)

# tcp_states[]: [direction][flag row][current state] -> next state
TCP_STATES: tuple[tuple[tuple[int, ...], ...], ...] = (
    (  # INPUT
        #  sNO  sES  sSS  sSR  sFW  sTW  sCL  sCW  sLA  sLI  sSA
        (sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR),  # syn
        (sCL, sCW, sSS, sTW, sTW, sTW, sCL, sCW, sLA, sLI, sTW),  # fin
        (sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES),  # ack
        (sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sSR),  # rst
    ),
    (  # OUTPUT
        #  sNO  sES  sSS  sSR  sFW  sTW  sCL  sCW  sLA  sLI  sSA
        (sSS, sES, sSS, sSR, sSS, sSS, sSS, sSS, sSS, sLI, sSR),  # syn
        (sTW, sFW, sSS, sTW, sFW, sTW, sCL, sTW, sLA, sLI, sTW),  # fin
        (sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sLA, sES, sES),  # ack
        (sCL, sCL, sSS, sCL, sCL, sTW, sCL, sCL, sCL, sCL, sCL),  # rst
    ),
    (  # INPUT-ONLY
        #  sNO  sES  sSS  sSR  sFW  sTW  sCL  sCW  sLA  sLI  sSA
        (sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR),  # syn
        (sCL, sFW, sSS, sTW, sFW, sTW, sCL, sCW, sLA, sLI, sTW),  # fin
        (sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES),  # ack
        (sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sCL),  # rst
    ),
)  # fmt: skip

# tcp_states_dos[]: the table secure_tcp switches to.  A NAT connection becomes
# ESTABLISHED only once the real server's answer is seen (the client's ACK alone leaves
# it in SYN_RECV), and a DR/TUN connection's SYN leads to SYNACK: a flood of spoofed
# handshakes never reaches ESTABLISHED's long timeout.
TCP_STATES_DOS: tuple[tuple[tuple[int, ...], ...], ...] = (
    (  # INPUT
        #  sNO  sES  sSS  sSR  sFW  sTW  sCL  sCW  sLA  sLI  sSA
        (sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSA),  # syn
        (sCL, sCW, sSS, sTW, sTW, sTW, sCL, sCW, sLA, sLI, sSA),  # fin
        (sES, sES, sSS, sSR, sFW, sTW, sCL, sCW, sCL, sLI, sSA),  # ack
        (sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sCL),  # rst
    ),
    (  # OUTPUT
        #  sNO  sES  sSS  sSR  sFW  sTW  sCL  sCW  sLA  sLI  sSA
        (sSS, sES, sSS, sSA, sSS, sSS, sSS, sSS, sSS, sLI, sSA),  # syn
        (sTW, sFW, sSS, sTW, sFW, sTW, sCL, sTW, sLA, sLI, sTW),  # fin
        (sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sLA, sES, sES),  # ack
        (sCL, sCL, sSS, sCL, sCL, sTW, sCL, sCL, sCL, sCL, sCL),  # rst
    ),
    (  # INPUT-ONLY
        #  sNO  sES  sSS  sSR  sFW  sTW  sCL  sCW  sLA  sLI  sSA
        (sSA, sES, sES, sSR, sSA, sSA, sSA, sSA, sSA, sSA, sSA),  # syn
        (sCL, sFW, sSS, sTW, sFW, sTW, sCL, sCW, sLA, sLI, sTW),  # fin
        (sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES),  # ack
        (sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sCL),  # rst
    ),
)  # fmt: skip

_SYN, _FIN, _ACK, _RST = range(4)
ACK_ROW = _ACK  # the row of a segment with ACK and none of RST, SYN, FIN


def flag_row(flags: int) -> int:
    """tcp_state_idx(): RST, then SYN, then FIN, then ACK; -1 for none of them."""
    if flags & TH_RST:
        return _RST
    if flags & TH_SYN:
        return _SYN
    if flags & TH_FIN:
        return _FIN
    if flags & TH_ACK:
        return _ACK
    return -1


# flag_row for every value of a segment's flags byte, looked up once per packet (the
# flags come from one byte of the TCP header).
FLAG_ROWS: tuple[int, ...] = tuple(flag_row(flags) for flags in range(256))


def next_state(
    direction: int,
    flags: int,
    state: int,
    table: tuple[tuple[tuple[int, ...], ...], ...] = TCP_STATES,
) -> int:
    """set_tcp_state(): the state a packet with ``flags`` moves a connection to."""
    row = FLAG_ROWS[flags]
    if row < 0:
        return CLOSE
    return table[direction][row][state]


class TcpProtocol:
    """ip_vs_protocol_tcp: state names, the timeout table and the state transition."""

    name = "TCP"
    state_names = STATE_NAMES

    def __init__(self) -> None:
        self.timeouts: list[int] = list(DEFAULT_TIMEOUTS)
        self.table = TCP_STATES  # tcp_timeout_change: TCP_STATES_DOS under secure_tcp

    def initial_state(self) -> int:
        return NONE

    def secure(self, on: bool) -> None:
        """tcp_timeout_change: secure_tcp switches the state table."""
        self.table = TCP_STATES_DOS if on else TCP_STATES

    def set_timeouts(self, established: int, fin_wait: int) -> None:
        """ipvsadm --set: the tcp and tcpfin figures; 0 keeps a value."""
        if established:
            self.timeouts[ESTABLISHED] = established
        if fin_wait:
            self.timeouts[FIN_WAIT] = fin_wait

    def transition(self, conn: Conn, direction: int, flags: int) -> None:
        """set_tcp_state(): move ``conn`` and keep its real server's counters right."""
        if conn.nooutput:
            if direction == OUTPUT:
                conn.nooutput = False
            else:
                direction = INPUT_ONLY
        new = next_state(direction, flags, conn.state, self.table)
        if new != conn.state:
            move(conn, new)
        conn.timeout = self.timeouts[new]


def move(conn: Conn, new: int) -> None:
    """A connection enters state ``new``: between active and inactive states it moves
    between its real server's counters (set_tcp_state's ip_vs_conn_active dance), and
    reaching ESTABLISHED assures its template."""
    dest = conn.dest
    active = STATE_ACTIVE[new]
    if not conn.inactive and not active:
        dest.activeconns -= 1
        dest.inactconns += 1
        conn.inactive = True
    elif conn.inactive and active:
        dest.activeconns += 1
        dest.inactconns -= 1
        conn.inactive = False
    conn.state = new
    if new == ESTABLISHED:
        conn.assure_control()


# Conntrack's TCP states (tcp_conntrack_names, net/netfilter/nf_conntrack_proto_tcp.c)
# as the IPVS state a NAT connection is in at that point: conntrack's SYN_SENT is the
# client's SYN seen (IPVS: SYN_RECV after it), its SYN_RECV and SYN_SENT2 the handshake
# under way; the rest have the same names.
CONNTRACK_STATES: dict[str, int] = {
    "NONE": NONE,
    "SYN_SENT": SYN_RECV,
    "SYN_RECV": SYN_RECV,
    "SYN_SENT2": SYN_RECV,
    "ESTABLISHED": ESTABLISHED,
    "FIN_WAIT": FIN_WAIT,
    "CLOSE_WAIT": CLOSE_WAIT,
    "LAST_ACK": LAST_ACK,
    "TIME_WAIT": TIME_WAIT,
    "CLOSE": CLOSE,
}
