"""Which network devices deliver the packets the sysctl ``ignore_tunneled`` leaves alone.

The kernel (net/netfilter/ipvs/ip_vs_core.c, ip_vs_in_hook) gives a packet of a
protocol IPVS does not handle (IPIP 4, IPv6 41, GRE 47...: neither TCP, UDP, SCTP, AH,
ESP nor an ICMP error) ``skb->ipvs_property = 1`` when ignore_tunneled is set; the mark
survives the decapsulation of a tunnel in the same namespace (skb_scrub_packet resets
it only across namespaces), so the inner packet is accepted untouched at the top of
ip_vs_in_hook and of ip_vs_out_hook: a director that is also a real server of another
director does not schedule again what that one tunnelled to it.

director's hooks see no skb mark of the outer packet, but the inner one comes in from
the device that decapsulated it: the kernel's tunnel devices whose outer protocol is
one IPVS does not handle (``TUNNEL_KINDS``; one with a FOU or GUE encapsulation is
carried in UDP, which IPVS handles, so its packets are not marked), and the userspace
decapsulator's TUN device (``DECAP_DEVICE``, director.realserver.decap).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# rtnl_link_ops kinds of the tunnels whose outer packet is IPIP, IPv6 (41) or GRE:
# ipip.c, ip_gre.c (gre, gretap, erspan), sit.c, ip6_tunnel.c, ip6_gre.c.  Not vti /
# vti6 / xfrm (ESP, which IPVS handles), nor vxlan, geneve, fou or wireguard (UDP).
TUNNEL_KINDS = frozenset(
    {"ipip", "gre", "gretap", "erspan", "sit", "ip6tnl", "ip6gre", "ip6gretap", "ip6erspan"}
)
# The TUN device `dirctl realserver up --method tun` makes for the userspace
# decapsulator (director.realserver.plan.TUN_DEV): what it writes is decapsulated.
DECAP_DEVICE = "dirtun0"
ENCAP_NONE = 0  # TUNNEL_ENCAP_NONE (uapi/linux/if_tunnel.h); FOU 1, GUE 2 are UDP


@dataclass(frozen=True, slots=True)
class Link:
    """What netlink says of one device: its name, IFLA_INFO_KIND ("" for none) and
    the IFLA_IPTUN_ENCAP_TYPE / IFLA_GRE_ENCAP_TYPE of a tunnel (0: none)."""

    name: str
    kind: str = ""
    encap: int = ENCAP_NONE


def tunneled_devices(links: Iterable[Link]) -> frozenset[str]:
    """The devices whose received packets were decapsulated from an outer packet the
    kernel would have marked ipvs_property: they go to no queue under ignore_tunneled."""
    return frozenset(
        link.name
        for link in links
        if (link.kind in TUNNEL_KINDS and link.encap == ENCAP_NONE)
        or (link.name == DECAP_DEVICE and link.kind == "tun")
    )
