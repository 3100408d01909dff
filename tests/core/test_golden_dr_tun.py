"""Golden cases for VS/DR, VS/TUN and the path-MTU answer.

DR: the frame carries the packet one hop older (its TTL less one, as
__ip_vs_get_out_rt's decrement_ttl in net/netfilter/ipvs/ip_vs_xmit.c has it); only
the Ethernet header is new.  TUN: the inner packet is one hop older too, and the
outer header is written out field by field from RFC 2003 and the kernel's
ip_vs_tunnel_xmit (TOS and TTL from the inner header, DF copied, protocol 4, the
route's source address), with dpkt computing its checksum independently.
"""

from __future__ import annotations

import socket

import dpkt

from director.core.engine import Director
from director.core.route import Frame, Route
from director.core.xmit import DIRECT, DROP, SEND
from director.core.xmit.dr import ethernet_frame
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import ACK, CLIENT, SYN, VIP, tcp

RS_LAN = "198.18.0.2"
RS_REMOTE = "198.19.0.2"
DIRECTOR_LAN = socket.inet_aton("198.18.0.1")
MTU = 1500


def director(method: str, rs: str, mtu: int = MTU) -> Director:
    d = Director()
    d.configure(
        Config(
            services=(
                ServiceConf("tcp", VIP, 8080, scheduler="rr", dests=(DestConf(rs, 8080, method),)),
            )
        )
    )
    for svc in d.services:
        for dest in svc.dests:
            dest.route = Route(ifindex=3, source=DIRECTOR_LAN, mtu=mtu)
    return d


def with_df(raw: bytearray) -> bytearray:
    ip = dpkt.ip.IP(bytes(raw))
    ip.df = 1
    ip.sum = 0
    return bytearray(bytes(ip))


def test_dr_hands_the_packet_on_one_hop_older_and_names_the_next_hop():
    """ip_vs_dr_xmit: __ip_vs_get_out_rt's decrement_ttl (ip_decrease_ttl), then the
    packet as it is: TTL 61 leaves as 60, its header checksum following."""
    request = tcp(CLIENT, VIP, 40000, 8080, SYN, b"hello")
    action, frame = director("droute", RS_LAN).hook_in(bytearray(request), 1.0)
    assert action == DIRECT
    expected = tcp(CLIENT, VIP, 40000, 8080, SYN, b"hello", ttl=60)
    assert frame == Frame(expected, socket.inet_aton(RS_LAN), 3)


def test_dr_frame_changes_only_the_ethernet_header():
    request = bytes(tcp(CLIENT, VIP, 40000, 8080, SYN))
    rs_mac, own_mac = bytes.fromhex("02aabbccdd02"), bytes.fromhex("02aabbccdd01")
    frame = ethernet_frame(rs_mac, own_mac, request)
    eth = dpkt.ethernet.Ethernet(frame)
    assert (eth.dst, eth.src, eth.type) == (rs_mac, own_mac, dpkt.ethernet.ETH_TYPE_IP)
    assert frame[14:] == request


def test_tun_outer_header_is_exact():
    """The inner TTL 61 is 60 inside and out: decrement_ttl (__ip_vs_get_out_rt) runs
    before ip_vs_prepare_tunneled_skb copies it to the outer header."""

    def inner(ttl: int) -> bytearray:
        raw = with_df(tcp(CLIENT, VIP, 40000, 8080, SYN, b"x" * 10, ttl=ttl))
        raw[1] = 0xB8  # DSCP EF: must be copied to the outer header
        raw[10:12] = b"\x00\x00"
        return bytearray(bytes(dpkt.ip.IP(bytes(raw))))  # dpkt redoes the checksum

    action, packet = director("tunnel", RS_REMOTE).hook_in(inner(61), 1.0)
    assert action == SEND
    inner_df = inner(60)
    assert inner_df[8] == 60
    expected = dpkt.ip.IP(
        v=4,
        hl=5,
        tos=0xB8,
        id=0,
        ttl=inner_df[8],
        p=4,
        src=DIRECTOR_LAN,
        dst=socket.inet_aton(RS_REMOTE),
        data=bytes(inner_df),
    )
    expected.df = 1
    assert bytes(packet) == bytes(expected)
    assert bytes(packet[20:]) == bytes(inner_df)


def test_tun_without_df_stays_without():
    inner = tcp(CLIENT, VIP, 40000, 8080, SYN)
    _, packet = director("tunnel", RS_REMOTE).hook_in(bytearray(inner), 1.0)
    assert dpkt.ip.IP(bytes(packet)).df == 0


def test_tun_too_big_with_df_gets_frag_needed_with_mtu_less_tunnel():
    big = with_df(tcp(CLIENT, VIP, 40000, 8080, ACK, b"y" * 1480))  # 1520 bytes
    d = director("tunnel", RS_REMOTE, mtu=1500)
    d.hook_in(bytearray(with_df(tcp(CLIENT, VIP, 40000, 8080, SYN))), 0.5)
    action, packet = d.hook_in(bytearray(big), 1.0)
    assert action == SEND
    icmp = dpkt.ip.IP(bytes(packet))
    assert (socket.inet_ntoa(icmp.src), socket.inet_ntoa(icmp.dst)) == (VIP, CLIENT)
    assert (icmp.data.type, icmp.data.code) == (3, 4)
    assert icmp.data.data.mtu == 1480
    # ensure_mtu_is_adequate's icmp_send quotes the packet decrement_ttl has already
    # made one hop older (TTL 60, its checksum following)
    assert bytes(icmp.data.data.data) == bytes(with_df(tcp(CLIENT, VIP, 40000, 8080, ACK,
                                                           b"y" * 1480, ttl=60))[:28])  # fmt: skip


def test_dr_too_big_with_df_gets_frag_needed_with_the_mtu():
    big = with_df(tcp(CLIENT, VIP, 40000, 8080, SYN, b"y" * 1000))
    action, packet = director("droute", RS_LAN, mtu=1000).hook_in(bytearray(big), 1.0)
    assert action == SEND
    assert dpkt.ip.IP(bytes(packet)).data.data.mtu == 1000


def test_encapsulation_past_65535_is_refused():
    d = director("tunnel", RS_REMOTE, mtu=70000)
    huge = tcp(CLIENT, VIP, 40000, 8080, SYN, b"z" * (65535 - 40))
    assert d.hook_in(bytearray(huge), 1.0) == (DROP, "too_big_to_encapsulate")
    assert d.drops["too_big_to_encapsulate"] == 1
    assert len(d.conns) == 0  # nothing left pointing at a server it cannot reach


def test_no_route_yet_drops_and_forgets_the_connection():
    d = director("droute", RS_LAN)
    for svc in d.services:
        for dest in svc.dests:
            dest.route = None
    assert d.hook_in(tcp(CLIENT, VIP, 40000, 8080, SYN), 1.0) == (DROP, "no_route")
    assert len(d.conns) == 0


def test_local_node_is_accepted_unchanged():
    d = director("masq", "203.0.113.1")
    for svc in d.services:
        for dest in svc.dests:
            dest.route = Route(ifindex=1, source=DIRECTOR_LAN, mtu=65536, local=True)
    assert d.hook_in(tcp(CLIENT, VIP, 40000, 8080, SYN), 1.0) == (0, None)


def test_dr_connection_uses_the_input_only_table():
    d = director("droute", RS_LAN)
    d.hook_in(tcp(CLIENT, VIP, 40000, 8080, SYN), 1.0)
    d.hook_in(tcp(CLIENT, VIP, 40000, 8080, ACK), 1.1)
    d.hook_in(tcp(CLIENT, VIP, 40000, 8080, dpkt.tcp.TH_FIN | ACK), 1.2)
    (conn,) = list(d.conns)
    # INPUT-ONLY: ESTABLISHED + FIN -> FIN_WAIT (the INPUT table would say CLOSE_WAIT)
    assert conn.state_name == "FIN_WAIT"
    svc = next(iter(d.services))
    assert svc.stats.outpkts == 0 and svc.stats.inpkts == 3


def test_a_failed_send_keeps_an_established_connection():
    """ip_vs_xmit.c ip_vs_dr_xmit / ip_vs_tunnel_xmit: when __ip_vs_get_out_rt finds no
    route the packet is dropped (tx_error) and ip_vs_in_hook puts the connection back
    with ip_vs_conn_put, never deletes it: during a link flap the connection waits for
    the route and goes on where it was, on the same real server."""
    for method, rs in (("droute", RS_LAN), ("tunnel", RS_REMOTE)):
        d = director(method, rs)
        d.hook_in(tcp(CLIENT, VIP, 40000, 8080, SYN), 1.0)
        d.hook_in(tcp(CLIENT, VIP, 40000, 8080, ACK), 1.1)
        (conn,) = list(d.conns)
        dest, route = conn.dest, conn.dest.route
        dest.route = None  # the link went down: no route to the real server
        assert d.hook_in(tcp(CLIENT, VIP, 40000, 8080, ACK, b"data"), 2.0) == (DROP, "no_route")
        assert list(d.conns) == [conn] and conn.state_name == "ESTABLISHED"
        assert (dest.activeconns, dest.inactconns) == (1, 0)
        dest.route = route  # back
        assert d.hook_in(tcp(CLIENT, VIP, 40000, 8080, ACK, b"data"), 3.0)[0] in (DIRECT, SEND)
        assert list(d.conns) == [conn] and conn.in_pkts == 4


def test_a_packet_too_big_to_tunnel_keeps_its_connection():
    d = director("tunnel", RS_REMOTE, mtu=70000)
    d.hook_in(tcp(CLIENT, VIP, 40000, 8080, SYN), 1.0)
    huge = tcp(CLIENT, VIP, 40000, 8080, ACK, b"z" * (65535 - 40))
    assert d.hook_in(bytearray(huge), 1.0) == (DROP, "too_big_to_encapsulate")
    assert len(d.conns) == 1


def test_an_unresolved_neighbour_forgets_only_entries_it_made():
    """The neighbour of a DR server did not resolve: the frames waiting for it are lost.
    Entries that carried more than the lost first packet stay, as IPVS keeps them; an
    entry whose only packet was lost goes, so the client's retry is scheduled afresh."""
    d = director("droute", RS_LAN)
    d.hook_in(tcp(CLIENT, VIP, 40000, 8080, SYN), 1.0)
    d.hook_in(tcp(CLIENT, VIP, 40000, 8080, ACK), 1.1)
    d.hook_in(tcp(CLIENT, VIP, 40001, 8080, SYN), 1.2)
    assert d.forget(socket.inet_aton(RS_LAN)) == 1
    assert [c.cport for c in d.conns] == [40000]
