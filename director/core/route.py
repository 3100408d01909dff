"""What the director knows of the way to a real server, as the kernel's output route
(``__ip_vs_get_out_rt``) tells it: the interface, the director's own address on that
path, the path MTU, and whether the real server is the director itself.

The shell fills it in from netlink when the configuration changes and when routes or
addresses change; the core only reads it.  Addresses are of the real server's family,
packed (4 bytes for IPv4, 16 for IPv6, as __ip_vs_get_out_rt and
__ip_vs_get_out_rt_v6 return them): ``source`` is the outer source of a tunnel toward
the real server, ``Frame.nexthop`` the address whose neighbour (ARP or NDP) takes a
DR frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class Route:
    ifindex: int
    source: bytes  # the director's address toward the real server (TUN outer source)
    mtu: int
    onlink: bool = True  # no gateway between the director and the real server
    local: bool = False  # the real server is an address of the director (local node)


class Frame(NamedTuple):
    """An IP packet to hand to ``nexthop`` at layer 2 on interface ``ifindex`` (VS/DR)."""

    packet: bytearray
    nexthop: bytes
    ifindex: int
