"""VS/NAT on the kernel fast path (``directord --fast-path kernel``).

The worker schedules a connection's first packet exactly as for VS/NAT, then hands the
kernel its choice: the packet goes on unchanged with the real server's firewall mark,
which a rule of the hooks turns into a DNAT to the real server (with port translation);
conntrack applies that translation to every later packet of the connection, both ways,
without the worker.  What IPVS's ip_vs_nat_xmit does per packet, conntrack's NAT does
here; the connection entry stays in the table for the schedulers' counts, the listings
and persistence, and follows conntrack's state (Director.ct_seen / ct_gone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.xmit import ACCEPT, KERNEL_NAT, MARK, Verdict, Xmit, register

if TYPE_CHECKING:
    from director.core.conn import Conn
    from director.core.packet import IcmpError, Packet


@register
class KernelNat(Xmit):
    name = KERNEL_NAT
    # Replies are conntrack's: none reaches the worker.  The state comes from
    # conntrack's events, not from the INPUT-ONLY table.
    nooutput = False

    def xmit_in(self, conn: Conn, pkt: Packet) -> Verdict:
        """The first packet, or one sent again before the real server answered
        (conntrack's NEW covers both): the real server's mark.  Such packets are rare,
        so the fused path leaves them to this one (``fused_in`` gives None)."""
        return (MARK, conn.dest.fast_mark)

    def icmp_in(self, conn: Conn, err: IcmpError) -> Verdict:
        """Conntrack relates ICMP errors to the connection and translates them."""
        return (ACCEPT, None)
