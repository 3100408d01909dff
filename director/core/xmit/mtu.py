"""The path-MTU check every transmitter makes before sending (ensure_mtu_is_adequate).

A packet with DF set that does not fit the way to its real server is answered with
ICMP fragmentation needed carrying the MTU that fits; the client's stack lowers its
path MTU and sends again (RFC 1191).  Without DF the packet goes on and is fragmented
on output, as the kernel's ip_fragment would (the shells use director.core.fragment).
A GSO super-packet is never refused: the kernel cuts it into segments that fit
(ensure_mtu_is_adequate skips skb_is_gso).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.icmp import frag_needed
from director.core.packet import SKB_GSO, Packet
from director.core.route import Route
from director.core.xmit import DROP, SEND, Verdict

if TYPE_CHECKING:
    from director.core.conn import Conn

_IP_DF = 0x40  # in the first byte of the fragment field
IP_DF = _IP_DF


def too_big(pkt: Packet, mtu: int) -> Verdict | None:
    """The ICMP answer if ``pkt`` needs more than ``mtu`` bytes and may not be fragmented."""
    if pkt.length > mtu and pkt.buf[6] & _IP_DF and not pkt.skb_info & SKB_GSO:
        return (SEND, frag_needed(pkt.buf, mtu))
    return None


def out_route(conn: Conn, pkt: Packet, overhead: int = 0) -> Route | Verdict:
    """The prologue of the DR and TUN transmitters (__ip_vs_get_out_rt): the route
    toward the real server, or the verdict when there is none (dropped as
    ``no_route``) or the packet plus ``overhead`` bytes of encapsulation does not fit
    its path MTU (ensure_mtu_is_adequate)."""
    route = conn.dest.route
    if route is None:
        return (DROP, "no_route")
    return too_big(pkt, conn.dest.path_mtu(route) - overhead) or route
