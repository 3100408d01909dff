"""A real server the director has no usable route to is taken, shown, and counted.

IPVS accepts a real server whatever the routes say (net/netfilter/ipvs/ip_vs_ctl.c,
ip_vs_new_dest: only inet_addr_type(addr) must be RTN_UNICAST or RTN_LOCAL); its
packets fail later, in __ip_vs_get_out_rt (ip_vs_xmit.c).  Direct routing asks for the
real server itself as next hop (IP_VS_RT_MODE_KNOWN_NH), so a route through a gateway
leads nowhere either.
"""

from __future__ import annotations

import socket

import pytest

from director.core.engine import Director
from director.core.route import Route
from director.core.service import Dest
from director.core.xmit import DROP, unreachable
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import CLIENT, SYN, VIP, tcp

LAN = Route(ifindex=3, source=socket.inet_aton("198.18.0.1"), mtu=1500)
VIA_GATEWAY = Route(ifindex=3, source=socket.inet_aton("198.18.0.1"), mtu=1500, onlink=False)
LOCAL = Route(ifindex=1, source=socket.inet_aton("198.18.0.1"), mtu=65536, local=True)


def _dest(method: str, route: Route | None) -> Dest:
    return Dest(addr=socket.inet_aton("198.18.0.3"), port=80, method=method, route=route)


@pytest.mark.parametrize(
    ("method", "route", "reason"),
    [
        ("droute", None, "no route"),
        ("droute", VIA_GATEWAY, "not on a directly connected network"),
        ("droute", LAN, None),
        ("droute", LOCAL, None),  # the local node: the director's own stack serves it
        ("tunnel", None, "no route"),
        ("tunnel", VIA_GATEWAY, None),  # IPIP crosses routers
        ("masq", None, None),  # NAT sends by the kernel's routing, nothing to annotate
    ],
)
def test_why_a_real_server_cannot_be_reached(
    method: str, route: Route | None, reason: str | None
) -> None:
    assert unreachable(_dest(method, route)) == reason


def director_one_unreachable() -> Director:
    """One DR service: 198.18.0.2 on the LAN, 198.18.0.3 with no route found."""
    d = Director()
    d.configure(
        Config(
            services=(
                ServiceConf(
                    "tcp",
                    VIP,
                    80,
                    scheduler="rr",
                    dests=(
                        DestConf("198.18.0.2", 80, "droute"),
                        DestConf("198.18.0.3", 80, "droute"),
                    ),
                ),
            )
        )
    )
    (svc,) = d.services
    for dest in svc.dests:
        dest.route = LAN if dest.addr == socket.inet_aton("198.18.0.2") else None
    return d


def test_the_unreachable_server_is_still_scheduled_and_its_packets_dropped() -> None:
    """As in IPVS: the server keeps its place in the scheduler; what is sent to it is
    dropped at transmit time (counted as no_route), the other server still serves."""
    d = director_one_unreachable()
    verdicts = [d.hook_in(tcp(CLIENT, VIP, 40000 + i, 80, SYN), 1.0)[0] for i in range(4)]
    assert verdicts.count(DROP) == 2
    assert d.drops["no_route"] == 2
