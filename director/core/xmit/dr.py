"""VS/DR, direct routing (ip_vs_dr_xmit and ip_vs_dr_xmit_v6).

The IP packet is not changed at all: it is handed to the real server at layer 2, so
only the Ethernet destination becomes the real server's MAC (found by ARP for IPv4,
by neighbour discovery for IPv6: the shell's; the frame's EtherType is the packet's
family, 0x0800 or 0x86DD).  A DR real server is of the service's family: the kernel
forwards only tunnels across families (ip_vs_genl_set_cmd).  The real server owns
the VIP on a device that does not answer ARP and replies to the client directly, so
replies never come back through the director (the connection is IP_VS_CONN_F_NOOUTPUT
and moves by the INPUT-ONLY state table).  The one change to the packet is the hop
it loses: TTL or hop limit less one (__ip_vs_get_out_rt's decrement_ttl).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.route import Frame, Route
from director.core.xmit import DIRECT, Verdict, Xmit, register
from director.core.xmit.mtu import IP_DF, ip_decrease_ttl, out_route

_IP6_HLIM = 7

if TYPE_CHECKING:
    from director.core.conn import Conn
    from director.core.packet import Packet


@register
class DirectRoute(Xmit):
    name = "droute"
    families = frozenset((4, 6))

    def xmit_in(self, conn: Conn, pkt: Packet) -> Verdict:
        route = out_route(conn, pkt)
        if not isinstance(route, Route):
            return route
        return (DIRECT, Frame(pkt.buf, conn.daddr, route.ifindex))

    def fused_in(self, conn: Conn, buf: bytearray, length: int) -> Verdict | None:
        dest = conn.dest
        route = dest.route
        if buf[8] <= 1 or route is None or (length > dest.path_mtu(route) and buf[6] & IP_DF):
            return None
        ip_decrease_ttl(buf)
        return (DIRECT, Frame(buf, dest.addr, route.ifindex))  # conn.daddr

    def fused_in6(self, conn: Conn, buf: bytearray, length: int) -> Verdict | None:
        """``xmit_in`` for the fused path: the hop limit less one and the frame; what
        needs an answer (a hop limit of 1, a packet too big) takes the general path."""
        hlim = buf[_IP6_HLIM]
        dest = conn.dest
        route = dest.route
        if hlim <= 1 or route is None or length > dest.path_mtu(route):
            return None
        buf[_IP6_HLIM] = hlim - 1
        return (DIRECT, Frame(buf, dest.addr, route.ifindex))  # conn.daddr

    def unreachable(self, route: Route | None) -> str | None:
        """No route at all, or one through a gateway: DR hands the frame to the real
        server's own MAC (IP_VS_RT_MODE_KNOWN_NH), which only answers ARP on a
        directly connected network, so the packets go nowhere."""
        if route is None:
            return "no route"
        if not route.onlink:
            return "not on a directly connected network"
        return None


# The EtherType of an IP packet by its version (linux/if_ether.h ETH_P_IP, ETH_P_IPV6).
ETHERTYPES = {4: 0x0800, 6: 0x86DD}


def ethernet_frame(dst_mac: bytes, src_mac: bytes, packet: bytes | bytearray) -> bytes:
    """The Ethernet II frame that carries ``packet`` (EtherType IPv4 or IPv6, by the
    packet's version, as dev_hard_header is given skb->protocol)."""
    kind = ETHERTYPES.get(packet[0] >> 4, 0x0800)
    return dst_mac + src_mac + kind.to_bytes(2, "big") + bytes(packet)
