"""Cache bypass (ip_vs_bypass_xmit): the packet goes on, unchanged, to the address the
client sent it to.

A firewall-mark service with the sysctl cache_bypass set and no real server left
(ip_vs_leave) makes a connection entry of this method for a packet whose destination
is not the director's own (a transparent cache cluster: the caches are down, the
clients reach the origin servers directly).  Its real server is none (the entry shows
0.0.0.0:0, as the kernel's ``daddr`` of zero), and its packets count in no statistics
(ip_vs_in_stats counts only an entry with a real server).  The shell sends the packet
by its destination, as __ip_vs_get_out_rt routes it (IP_VS_RT_MODE_NON_LOCAL): its
TTL or hop limit is decremented first (decrement_ttl), and one that runs out is
answered with time exceeded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.xmit import SEND, Verdict, Xmit, register
from director.core.xmit.mtu import decrement_ttl

if TYPE_CHECKING:
    from director.core.conn import Conn
    from director.core.packet import Packet

BYPASS = "bypass"  # not a method one configures: cache_bypass's entries


@register
class Bypass(Xmit):
    name = BYPASS
    families = frozenset((4, 6))

    def xmit_in(self, conn: Conn, pkt: Packet) -> Verdict:
        refused = decrement_ttl(pkt)
        if refused is not None:
            return refused
        return (SEND, pkt.buf)
