"""The DR frame of an IPv6 packet: EtherType ETH_P_IPV6 (0x86DD, linux/if_ether.h), as
ip_vs_dr_xmit_v6's packet gets from dev_hard_header with skb->protocol; the packet
itself unchanged."""

from __future__ import annotations

import dpkt

from director.core.xmit.dr import ethernet_frame


def test_an_ipv6_dr_frame_is_ethertype_ipv6() -> None:
    udp = dpkt.udp.UDP(sport=40000, dport=53, data=b"q")
    udp.ulen = len(udp)
    ip6 = dpkt.ip6.IP6(
        src=bytes.fromhex("20010db8000100000000000000000010"),
        dst=bytes.fromhex("20010db8000100000000000000000100"),
        nxt=17, hlim=64, data=udp, plen=len(udp),
    )  # fmt: skip
    packet = bytes(ip6)
    rs_mac, own_mac = bytes.fromhex("02aabbccdd02"), bytes.fromhex("02aabbccdd01")
    frame = ethernet_frame(rs_mac, own_mac, packet)
    eth = dpkt.ethernet.Ethernet(frame)
    assert (eth.dst, eth.src, eth.type) == (rs_mac, own_mac, dpkt.ethernet.ETH_TYPE_IP6)
    assert frame[12:14] == b"\x86\xdd" and frame[14:] == packet
