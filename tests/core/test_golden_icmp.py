"""ICMP errors about connections, as ip_vs_in_icmp / ip_vs_out_icmp relay them.

Expected packets are built by dpkt with the fields ip_vs_nat_icmp writes: outer and
quoted addresses, the quoted port, both IP header checksums and the ICMP checksum
(dpkt computes them); the quoted transport checksum is left as it was.
"""

from __future__ import annotations

import socket

import dpkt

from director.core.engine import Director
from director.core.route import Frame, Route
from director.core.xmit import ACCEPT, DIRECT, DROP, SEND
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import ACK, CLIENT, RS2, SYN, VIP, tcp, udp

ROUTER = "203.0.113.1"


def icmp_error(
    src: str, dst: str, quoted: bytes, type_: int, code: int, mtu: int = 0, ttl: int = 50
) -> bytes:
    body = dpkt.icmp.ICMP.Unreach(mtu=mtu, data=quoted[:28])
    icmp = dpkt.icmp.ICMP(type=type_, code=code, data=body)
    return bytes(
        dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=1, ttl=ttl, data=icmp)
    )


def resum(header: bytearray) -> None:
    """Recompute an IPv4 header's checksum in place with dpkt's own routine."""
    header[10:12] = b"\x00\x00"
    header[10:12] = dpkt.in_cksum(bytes(header[:20])).to_bytes(2, "big")


def nat_director(method: str = "masq") -> Director:
    d = Director()
    d.configure(
        Config(
            services=(
                ServiceConf("tcp", VIP, 80, scheduler="rr", dests=(DestConf(RS2, 8000, method),)),
            )
        )
    )
    for svc in d.services:
        for dest in svc.dests:
            dest.route = Route(ifindex=3, source=socket.inet_aton("198.18.0.1"), mtu=1500)
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0)
    return d


def test_frag_needed_from_outside_is_rewritten_to_the_real_server():
    """ip_vs_icmp_xmit: __ip_vs_get_out_rt's decrement_ttl (the error's TTL 50 leaves
    as 49), then ip_vs_nat_icmp's rewrite of the outer destination and the quote."""
    d = nat_director()
    # The VIP's reply, as the client's router saw it: VIP:80 -> client:40000.
    reply = bytes(tcp(VIP, CLIENT, 80, 40000, ACK, b"x" * 100))
    error = icmp_error(ROUTER, VIP, reply, 3, 4, mtu=1280)
    action, data = d.hook_in(bytearray(error), 1.0)
    assert action == SEND
    quoted = bytearray(reply[:28])
    quoted[12:16] = socket.inet_aton(RS2)  # the quoted source becomes the real server
    quoted[20:22] = (8000).to_bytes(2, "big")  # and its port the real server's port
    resum(quoted)
    expected = icmp_error(ROUTER, RS2, bytes(quoted), 3, 4, mtu=1280, ttl=49)
    assert bytes(data) == expected


def test_port_unreachable_from_a_nat_real_server_comes_from_the_vip():
    d = Director()
    d.configure(
        Config(services=(ServiceConf("udp", VIP, 53, scheduler="rr",
                                     dests=(DestConf(RS2, 5353, "masq"),)),))
    )  # fmt: skip
    d.hook_in(udp(CLIENT, VIP, 5000, 53, b"q"), 0.0)
    request = bytes(udp(CLIENT, RS2, 5000, 5353, b"q"))  # what the real server got
    error = icmp_error(RS2, CLIENT, request, 3, 3)
    action, data = d.hook_out(bytearray(error), 1.0)
    assert action == ACCEPT
    quoted = bytearray(request[:28])
    quoted[16:20] = socket.inet_aton(VIP)
    quoted[22:24] = (53).to_bytes(2, "big")
    resum(quoted)
    assert bytes(data) == icmp_error(VIP, CLIENT, bytes(quoted), 3, 3)
    assert next(iter(d.services)).stats.outpkts == 1


def test_dr_icmp_error_goes_as_it_is_one_hop_older():
    """ip_vs_icmp_xmit hands a DR connection's error to ip_vs_dr_xmit, whose
    __ip_vs_get_out_rt takes a hop (decrement_ttl): TTL 50 leaves as 49, else as it is."""
    d = nat_director("droute")
    quoted = bytes(tcp(VIP, CLIENT, 80, 40000, ACK))
    error = icmp_error(ROUTER, VIP, quoted, 11, 0)
    action, frame = d.hook_in(bytearray(error), 1.0)
    assert action == DIRECT
    assert isinstance(frame, Frame)
    assert bytes(frame.packet) == icmp_error(ROUTER, VIP, quoted, 11, 0, ttl=49)


def test_icmp_for_no_connection_and_echo_pass_to_the_local_stack():
    d = nat_director()
    stranger = icmp_error(ROUTER, VIP, bytes(tcp(VIP, CLIENT, 80, 41000, ACK)), 3, 1)
    assert d.hook_in(bytearray(stranger), 1.0) == (ACCEPT, None)
    ping = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1))
    echo = dpkt.ip.IP(src=socket.inet_aton(CLIENT), dst=socket.inet_aton(VIP), p=1, data=ping)
    assert d.hook_in(bytearray(bytes(echo)), 1.0) == (ACCEPT, None)
    assert d.passes["icmp_no_conn"] == 1 and d.passes["icmp_other"] == 1


def test_truncated_icmp_error_is_dropped_by_reason():
    d = nat_director()
    error = bytearray(icmp_error(ROUTER, VIP, bytes(tcp(VIP, CLIENT, 80, 40000, ACK)), 3, 4))
    short = error[:40]
    short[2:4] = (40).to_bytes(2, "big")
    assert d.hook_in(short, 1.0) == (DROP, "icmp_truncated")


def test_zero_port_is_dropped_by_reason():
    d = nat_director()
    assert d.hook_in(tcp(CLIENT, VIP, 0, 80, SYN), 1.0) == (DROP, "zero_port")


def _df(packet: bytes) -> bytes:
    ip = dpkt.ip.IP(packet)
    ip.df = 1
    ip.sum = 0
    return bytes(ip)


def _tunnel_error(request: bytes, mtu: int, quote: int = 576) -> bytes:
    """A router past the director says ``mtu`` about the director's IPIP packet."""
    tunnelled = bytes(
        dpkt.ip.IP(src=socket.inet_aton("198.18.0.1"), dst=socket.inet_aton(RS2), p=4,
                   ttl=63, data=dpkt.ip.IP(request))
    )  # fmt: skip
    return bytes(
        dpkt.ip.IP(
            src=socket.inet_aton("198.18.0.254"), dst=socket.inet_aton("198.18.0.1"), p=1,
            data=dpkt.icmp.ICMP(type=3, code=4,
                                data=dpkt.icmp.ICMP.Unreach(mtu=mtu, data=tunnelled[:quote])),
        )
    )  # fmt: skip


def test_frag_needed_about_a_tunnelled_packet_reaches_the_client_less_20():
    """ip_vs_core.c ip_vs_in_icmp, ICMP for IPIP: a router past the director says 1300
    about the director's IPIP packet; the client (DF set: it does path MTU discovery)
    hears 1300 - 20 = 1280 from the VIP about its own request, and later packets of
    1281 bytes with DF are refused at the director."""
    d = nat_director("tunnel")
    request = _df(bytes(tcp(CLIENT, VIP, 40000, 80, ACK, b"y" * 1400)))
    tunnelled = bytes(
        dpkt.ip.IP(src=socket.inet_aton("198.18.0.1"), dst=socket.inet_aton(RS2), p=4,
                   ttl=63, data=dpkt.ip.IP(request))
    )  # fmt: skip
    error = _tunnel_error(request, 1300)
    action, data = d.hook_in(bytearray(error), 1.0)
    assert action == SEND
    answer = dpkt.ip.IP(bytes(data))
    assert (answer.src, answer.dst) == (socket.inet_aton(VIP), socket.inet_aton(CLIENT))
    assert (answer.data.type, answer.data.code, answer.data.data.mtu) == (3, 4, 1280)
    assert bytes(answer.data.data.data) == request[:28]  # its own request, quoted
    dest = next(iter(d.services)).dests[0]
    assert dest.route is not None and dest.path_mtu(dest.route) == 1300
    fits = _df(bytes(tcp(CLIENT, VIP, 40000, 80, ACK, b"z" * (1280 - 40))))
    action, data = d.hook_in(bytearray(fits), 2.0)
    assert action == SEND and len(data) == 1280 + 20  # tunnelled as it is
    big = _df(bytes(tcp(CLIENT, VIP, 40000, 80, ACK, b"z" * (1281 - 40))))
    action, data = d.hook_in(bytearray(big), 2.0)
    assert action == SEND and dpkt.ip.IP(bytes(data)).data.data.mtu == 1280
    # An error quoting too little of the tunnelled packet to find the connection passes.
    short = dpkt.ip.IP(
        src=socket.inet_aton("198.18.0.254"), dst=socket.inet_aton("198.18.0.1"), p=1,
        data=dpkt.icmp.ICMP(type=3, code=4,
                            data=dpkt.icmp.ICMP.Unreach(mtu=1300, data=tunnelled[:28])),
    )  # fmt: skip
    assert d.hook_in(bytearray(bytes(short)), 1.0) == (ACCEPT, None)


def test_a_learned_path_mtu_survives_a_route_lookup_and_expires():
    """The PMTU lives in the route's nexthop exception (net/ipv4/route.c
    __ip_rt_update_pmtu, update_or_create_fnhe), not in the cached route: a fresh
    route lookup (the shell re-annotating the server) keeps it, until mtu_expires
    (600 s) passes."""
    d = nat_director("tunnel")
    request = _df(bytes(tcp(CLIENT, VIP, 40000, 80, ACK, b"y" * 1400)))
    d.hook_in(bytearray(_tunnel_error(request, 1300)), 10.0)
    dest = next(iter(d.services)).dests[0]
    dest.route = Route(ifindex=3, source=socket.inet_aton("198.18.0.1"), mtu=1500)
    assert dest.path_mtu(dest.route) == 1300
    big = _df(bytes(tcp(CLIENT, VIP, 40000, 80, ACK, b"z" * (1281 - 40))))
    assert dpkt.ip.IP(bytes(d.hook_in(bytearray(big), 11.0)[1])).data.data.mtu == 1280
    d.expire(609.0)
    assert dest.path_mtu(dest.route) == 1300
    d.expire(610.0)
    assert dest.path_mtu(dest.route) == 1500


def test_a_tiny_or_larger_mtu_is_taken_as_the_kernel_takes_it():
    """__ip_rt_update_pmtu: a figure above the current path MTU is ignored, one below
    min_pmtu (552) is raised to 552; ip_vs_in_icmp then tells the client the resulting
    path MTU less the tunnel header (532).  A client packet without DF is not doing
    path MTU discovery: no ICMP goes back to it ("Client uses PMTUD?")."""
    d = nat_director("tunnel")
    dest = next(iter(d.services)).dests[0]
    assert dest.route is not None
    request = _df(bytes(tcp(CLIENT, VIP, 40000, 80, ACK, b"y" * 1400)))
    _, data = d.hook_in(bytearray(_tunnel_error(request, 9000)), 1.0)
    assert dest.path_mtu(dest.route) == 1500
    assert dpkt.ip.IP(bytes(data)).data.data.mtu == 1480
    _, data = d.hook_in(bytearray(_tunnel_error(request, 300)), 2.0)
    assert dest.path_mtu(dest.route) == 552
    assert dpkt.ip.IP(bytes(data)).data.data.mtu == 532
    plain = bytes(tcp(CLIENT, VIP, 40000, 80, ACK, b"y" * 1400))  # no DF
    assert d.hook_in(bytearray(_tunnel_error(plain, 552)), 3.0) == (DROP, "icmp_no_pmtud")
