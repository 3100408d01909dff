"""ignore_tunneled's devices (director/core/tunneled.py tunneled_devices): the tunnels
whose outer packet is of a protocol IPVS does not handle, which
net/netfilter/ipvs/ip_vs_core.c ip_vs_in_hook marks ipvs_property under the sysctl
("Protocol supported?": IPIP 4, IPv6 41 and GRE 47 have no ip_vs_proto_data; TCP, UDP,
SCTP, AH and ESP do), and the userspace decapsulator's TUN device."""

from __future__ import annotations

import pytest

from director.core.tunneled import DECAP_DEVICE, Link, tunneled_devices

# IFLA_INFO_KIND of each kernel tunnel, and whether its outer protocol is one
# ip_vs_proto_data_get knows: ipip.c (IPPROTO_IPIP), sit.c (IPPROTO_IPV6), ip_gre.c and
# ip6_gre.c (IPPROTO_GRE, erspan too), ip6_tunnel.c (IPPROTO_IPIP / IPPROTO_IPV6) are
# not; ip_vti.c / ip6_vti.c / xfrm_interface (ESP, ip_vs_proto_ah_esp.c), vxlan, geneve,
# wireguard (UDP) are.
MARKED = ["ipip", "gre", "gretap", "erspan", "sit", "ip6tnl", "ip6gre", "ip6gretap", "ip6erspan"]
HANDLED = ["vti", "vti6", "xfrm", "vxlan", "geneve", "wireguard", "veth", "dummy", "bridge", ""]


@pytest.mark.parametrize("kind", MARKED)
def test_a_tunnel_of_an_unhandled_protocol_is_ignored(kind: str) -> None:
    assert tunneled_devices([Link("t0", kind), Link("eth0")]) == {"t0"}


@pytest.mark.parametrize("kind", HANDLED)
def test_a_device_of_a_handled_protocol_is_not(kind: str) -> None:
    assert tunneled_devices([Link("x0", kind)]) == frozenset()


@pytest.mark.parametrize("encap", [1, 2])  # TUNNEL_ENCAP_FOU, TUNNEL_ENCAP_GUE
def test_a_tunnel_carried_in_udp_is_not(encap: int) -> None:
    """An ipip or gre device with a FOU/GUE encapsulation receives UDP, which IPVS
    handles: its outer packet is never marked."""
    assert tunneled_devices([Link("t0", "ipip", encap), Link("t1", "gre", encap)]) == frozenset()


def test_the_userspace_decapsulators_device() -> None:
    """dirtun0 (director.realserver.plan.TUN_DEV) writes what it decapsulated; another
    TUN device, or another kind of device of that name, carries no tunnel's packets."""
    assert tunneled_devices([Link(DECAP_DEVICE, "tun")]) == {DECAP_DEVICE}
    assert tunneled_devices([Link("tun7", "tun"), Link(DECAP_DEVICE, "dummy")]) == frozenset()
