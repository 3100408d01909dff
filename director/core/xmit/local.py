"""Local node (ip_vs_null_xmit): the real server is the director itself.

The packet is accepted unchanged and the director's own stack delivers it to whatever
listens on the VIP's port; replies leave as local traffic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.xmit import ACCEPT, Verdict, Xmit, register

if TYPE_CHECKING:
    from director.core.conn import Conn
    from director.core.packet import Packet


@register
class LocalNode(Xmit):
    name = "local"
    families = frozenset((4, 6))

    def xmit_in(self, conn: Conn, pkt: Packet) -> Verdict:
        return (ACCEPT, None)

    def fused_in(self, conn: Conn, buf: bytearray, length: int) -> Verdict | None:
        return (ACCEPT, None)

    def fused_in6(self, conn: Conn, buf: bytearray, length: int) -> Verdict | None:
        return (ACCEPT, None)
