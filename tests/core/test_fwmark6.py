"""Firewall-mark services of each family (ipvsadm -f MARK and -f MARK -6): a packet
finds the one of its own family only, as ip_vs_svc_fwm_find (net/netfilter/ipvs/
ip_vs_ctl.c) compares ``svc->af == af`` before the mark."""

from __future__ import annotations

from director.core.engine import Director
from director.core.xmit import SEND
from director.ctl.ipvsadm import load_rules
from tests.core.packets import CLIENT, SYN, VIP, tcp
from tests.core.packets6 import CLIENT6, VIP6, a6, tcp6

BOTH = (
    "-A -f 7 -s rr\n-a -f 7 -r 198.18.0.2:0 -m\n"
    "-A -f 7 -6 -s rr\n-a -f 7 -6 -r [2001:db8:2::2]:0 -m\n"
)


def test_each_family_finds_its_own_firewall_mark_service() -> None:
    d = Director()
    d.configure(load_rules(BOTH))
    action, packet = d.hook_in(tcp6(CLIENT6, VIP6, 40000, 80, SYN), 0.0, mark=7)
    assert action == SEND and isinstance(packet, bytearray)
    assert bytes(packet[24:40]) == a6("2001:db8:2::2")
    action, packet = d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0, mark=7)
    assert action == SEND and isinstance(packet, bytearray)
    assert bytes(packet[16:20]) == bytes([198, 18, 0, 2])


def test_an_ipv6_packet_does_not_take_an_ipv4_firewall_mark_service() -> None:
    """Before, the marks were one table: an IPv6 packet marked 7 went to the IPv4
    service's real server (198.18.0.2 written into an IPv6 header)."""
    d = Director()
    d.configure(load_rules("-A -f 7 -s rr\n-a -f 7 -r 198.18.0.2:0 -m\n"))
    assert d.services.lookup(6, a6(VIP6), 80, 7) is None
    assert d.hook_in(tcp6(CLIENT6, VIP6, 40000, 80, SYN), 0.0, mark=7)[0] != SEND
    assert len(d.conns) == 0
