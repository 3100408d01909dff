"""What the director knows of the way to a real server, as the kernel's output route
(``__ip_vs_get_out_rt``) tells it: the interface, the director's own address on that
path, the path MTU, and whether the real server is the director itself.

The shell fills it in from netlink when the configuration changes and when routes or
addresses change; the core only reads it.
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
