"""VS/TUN, IP-in-IP tunnelling (ip_vs_tunnel_xmit, RFC 2003).

The client's packet is carried unchanged inside a new IPv4 header to the real server,
which may sit behind routers; it decapsulates the packet, owns the VIP and replies to
the client directly.  The outer header takes its source from the route toward the real
server, its TOS (DSCP and ECN) and TTL from the inner header, and DF from the inner
header (the kernel's default, sysctl pmtu_disc=1).  A packet with DF that does not fit
the path MTU less the 20-byte tunnel header gets ICMP fragmentation needed with that
figure; a packet that would grow past 65535 bytes is refused.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from director.core.checksum import internet_checksum
from director.core.route import Route
from director.core.xmit import DROP, SEND, Verdict, Xmit, register
from director.core.xmit.mtu import IP_DF, out_route

if TYPE_CHECKING:
    from director.core.conn import Conn
    from director.core.packet import Packet

IPPROTO_IPIP = 4
TUNNEL_HLEN = 20
MAX_IP_LEN = 65535
_OUTER = struct.Struct("!BBHHHBBH4s4s")
_IP_DF = 0x4000


def encapsulate(inner: bytearray, source: bytes, destination: bytes) -> bytearray:
    """The IPIP packet carrying ``inner`` from ``source`` to ``destination``.

    The identification is left 0: the kernel picks one when the raw socket sends it
    (IP_HDRINCL fills a zero id), as ip_select_ident does for the kernel's tunnel.
    """
    tos = inner[1]
    ttl = inner[8]
    df = (inner[6] << 8 | inner[7]) & _IP_DF
    length = TUNNEL_HLEN + len(inner)
    header = bytearray(
        _OUTER.pack(0x45, tos, length, 0, df, ttl, IPPROTO_IPIP, 0, source, destination)
    )
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return header + inner


@register
class Tunnel(Xmit):
    name = "tunnel"

    def xmit_in(self, conn: Conn, pkt: Packet) -> Verdict:
        route = out_route(conn, pkt, TUNNEL_HLEN)
        if not isinstance(route, Route):
            return route
        if pkt.length + TUNNEL_HLEN > MAX_IP_LEN:  # no DF, and no room left for the header
            return (DROP, "too_big_to_encapsulate")
        return (SEND, encapsulate(pkt.buf, route.source, conn.daddr))

    def fused_in(self, conn: Conn, buf: bytearray, length: int) -> Verdict | None:
        dest = conn.dest
        route = dest.route
        if (
            route is None
            or (length > dest.path_mtu(route) - TUNNEL_HLEN and buf[6] & IP_DF)
            or length + TUNNEL_HLEN > MAX_IP_LEN
        ):
            return None
        return (SEND, encapsulate(buf, route.source, dest.addr))  # conn.daddr

    def unreachable(self, route: Route | None) -> str | None:
        """Without a route there is no outer source address and no way out."""
        return "no route" if route is None else None
