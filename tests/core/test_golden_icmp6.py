"""ICMPv6 errors about connections, as ip_vs_in_icmp_v6 / ip_vs_out_icmp_v6 relay them
(net/netfilter/ipvs/ip_vs_core.c), and errors about the director's own tunnelled
packets looked through to the client's request.

Expected packets are built by dpkt (tests/core/packets6.py) with the fields
ip_vs_nat_icmp_v6 writes: the outer destination (in) or source (out), the quoted
source (in) or destination (out) and the quoted port, and the ICMPv6 checksum over
the pseudo-header (dpkt computes it); the quoted transport checksum is left as it was.
Every error type below 128 is relayed (ICMPV6_INFOMSG_MASK); an error behind a
fragment header is dropped; an error with a wrong checksum about a NAT connection is
dropped (ip_vs_checksum_common_check).  Inward, the error's hop limit is one less
(ip_vs_icmp_xmit_v6's __ip_vs_get_out_rt_v6, decrement_ttl); outward it is let go on
to the forwarding path as it is.
"""

from __future__ import annotations

import socket
import struct

import dpkt
import pytest

from director.core.conn import Conn
from director.core.engine import Director
from director.core.route import Route
from director.core.xmit import ACCEPT, DROP, SEND, bind_xmit
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import ACK, CLIENT, SYN, VIP, tcp
from tests.core.packets6 import (
    CLIENT6,
    DEST,
    RS6_2,
    VIP6,
    a6,
    fragment,
    icmp6,
    ip6,
    options,
    tcp6,
    udp6,
)

ROUTER6 = "2001:db8:3::1"
SOURCE6 = "2001:db8:2::1"  # the director's address toward the real servers
PATH_ROUTER6 = "2001:db8:2::fe"


def nat_director() -> Director:
    d = Director()
    tcp_svc = ServiceConf("tcp", VIP6, 80, dests=(DestConf(RS6_2, 8000, "masq"),))
    udp_svc = ServiceConf("udp", VIP6, 53, dests=(DestConf(RS6_2, 5353, "masq"),))
    d.configure(Config(services=(tcp_svc, udp_svc)))
    for svc in d.services:
        for dest in svc.dests:
            dest.route = Route(ifindex=3, source=a6(SOURCE6), mtu=1500)
    assert d.hook_in(tcp6(CLIENT6, VIP6, 40000, 80, SYN), 0.0)[0] == SEND
    assert d.hook_in(udp6(CLIENT6, VIP6, 5000, 53, b"q"), 0.0)[0] == SEND
    return d


def _in_quote(reply: bytes) -> bytes:
    """The VIP's reply as ip_vs_nat_icmp_v6 leaves its quote inward: the real server's
    address as the source, its port as the source port, nothing else changed."""
    quoted = bytearray(reply)
    quoted[8:24] = a6(RS6_2)
    quoted[40:42] = (8000).to_bytes(2, "big")
    return bytes(quoted)


# (type, code, the 32-bit field): packet too big, destination unreachable, time
# exceeded, parameter problem (its pointer kept).
ERRORS = [(2, 0, 1280), (1, 3, 0), (3, 0, 0), (4, 0, 42)]


@pytest.mark.parametrize(
    ("type_", "code", "info"), ERRORS, ids=["toobig", "unreach", "time", "param"]
)
def test_error_from_outside_is_rewritten_to_the_real_server(type_, code, info):
    d = nat_director()
    reply = bytes(tcp6(VIP6, CLIENT6, 80, 40000, ACK, b"x" * 100))
    error = icmp6(ROUTER6, VIP6, type_, code, reply, info)
    action, data = d.hook_in(bytearray(error), 1.0)
    assert action == SEND
    assert bytes(data) == bytes(icmp6(ROUTER6, RS6_2, type_, code, _in_quote(reply), info, 49))
    assert d.totals.inpkts == 3


def test_a_quote_with_extension_headers_has_its_port_found_behind_them():
    d = nat_director()
    ext = (options(DEST, 24), fragment())  # an atomic fragment: a whole packet
    reply = bytes(tcp6(VIP6, CLIENT6, 80, 40000, ACK, b"x" * 20, ext=ext))
    action, data = d.hook_in(bytearray(icmp6(ROUTER6, VIP6, 2, 0, reply, 1400)), 1.0)
    assert action == SEND
    quoted = bytearray(reply)
    quoted[8:24] = a6(RS6_2)
    quoted[40 + 32 : 40 + 34] = (8000).to_bytes(2, "big")
    assert bytes(data) == bytes(icmp6(ROUTER6, RS6_2, 2, 0, bytes(quoted), 1400, 49))


def test_error_from_a_nat_real_server_comes_from_the_vip():
    d = nat_director()
    request = bytes(udp6(CLIENT6, RS6_2, 5000, 5353, b"q"))
    error = icmp6(RS6_2, CLIENT6, 1, 4, request)
    action, data = d.hook_out(bytearray(error), 1.0)
    assert action == ACCEPT
    quoted = bytearray(request)
    quoted[24:40] = a6(VIP6)
    quoted[42:44] = (53).to_bytes(2, "big")
    assert bytes(data) == bytes(icmp6(VIP6, CLIENT6, 1, 4, bytes(quoted)))
    assert d.totals.outpkts == 1


def test_what_is_no_error_of_a_connection_passes_and_what_is_bad_is_dropped():
    d = nat_director()
    reply = bytes(tcp6(VIP6, CLIENT6, 80, 40000, ACK))
    echo = ip6(ROUTER6, VIP6, dpkt.icmp6.ICMP6(type=128, data=b"\x00\x01\x00\x01ping"), 58)
    assert d.hook_in(echo, 1.0) == (ACCEPT, None)
    assert d.passes["icmp_other"] == 1
    other = bytes(tcp6(VIP6, CLIENT6, 80, 40001, ACK))  # no such connection
    assert d.hook_in(icmp6(ROUTER6, VIP6, 1, 0, other), 1.0) == (ACCEPT, None)
    assert d.passes["icmp_no_conn"] == 1
    fragmented = icmp6(ROUTER6, VIP6, 1, 0, reply)
    fragmented = fragmented[:6] + b"\x2c" + fragmented[7:40] + b"\x3a" + bytes(7) + fragmented[40:]
    fragmented[4:6] = (len(fragmented) - 40).to_bytes(2, "big")
    assert d.hook_in(fragmented, 1.0) == (DROP, "fragment")
    assert d.hook_in(icmp6(ROUTER6, VIP6, 1, 0, reply[:39]), 1.0) == (DROP, "icmp_truncated")
    assert d.hook_in(icmp6(ROUTER6, VIP6, 1, 0, reply[:41]), 1.0) == (DROP, "icmp_truncated")
    bad = icmp6(ROUTER6, VIP6, 1, 0, reply)
    bad[42] ^= 0xFF  # the ICMPv6 checksum
    assert d.hook_in(bad, 1.0) == (DROP, "icmp_checksum")
    out_bad = icmp6(RS6_2, CLIENT6, 1, 4, bytes(tcp6(CLIENT6, RS6_2, 40000, 8000)))
    out_bad[42] ^= 0xFF
    assert d.hook_out(out_bad, 1.0) == (DROP, "icmp_checksum")
    assert d.hook_in(icmp6(ROUTER6, VIP6, 1, 0, reply, hlim=1), 1.0) == (DROP, "hop_limit")
    assert d.totals.inpkts == 3  # the last one only: errors dropped before are not counted


# -- errors about the director's own tunnelled packets (VS/TUN), looked through


def tun_director(rs: str, vip: str, service_v6: bool) -> tuple[Director, Conn]:
    """A tunnel service and one connection of its, made by hand: the IPv6 tunnel
    transmitter is not the point here, the error about what it sent is."""
    d = Director()
    service = ServiceConf("tcp", vip, 80, dests=(DestConf(rs, 80, "tunnel"),))
    d.configure(Config(services=(service,)))
    (svc,) = list(d.services)
    (dest,) = svc.dests
    source = a6(SOURCE6) if ":" in rs else socket.inet_aton("198.18.0.1")
    dest.route = Route(ifindex=3, source=source, mtu=1500, onlink=False)
    client = a6(CLIENT6) if service_v6 else socket.inet_aton(CLIENT)
    conn = Conn(d.tcp, 6, client, 40000, svc.key[1], 80, svc, dest, bind_xmit(dest))
    d.conns.add(conn)
    return d, conn


def _tunnelled6(request: bytes, rs: str, nxt: int) -> bytes:
    """The director's IPv6 tunnel packet of ``request`` (next header 41 or 4)."""
    head = struct.pack("!IHBB16s16s", 6 << 28, len(request), nxt, 63, a6(SOURCE6), a6(rs))
    return head + request


def _df(raw: bytes) -> bytes:
    ip = dpkt.ip.IP(raw)
    ip.df = 1
    ip.sum = 0
    return bytes(ip)


def test_packet_too_big_about_an_ipv6_tunnel_reaches_the_client_less_40():
    """A router past the director says 1400 about the director's IPv6-in-IPv6 packet:
    the real server's path MTU is 1400, and the client hears 1400 - 40 = 1360 from
    the VIP about its own request (the kernel's ip_vs_in_icmp does so for IPIP)."""
    d, conn = tun_director("2001:db8:4::2", VIP6, True)
    request = bytes(tcp6(CLIENT6, VIP6, 40000, 80, ACK, b"y" * 1400))
    error = icmp6(
        PATH_ROUTER6, SOURCE6, 2, 0, _tunnelled6(request, "2001:db8:4::2", 41)[:1232], 1400
    )
    action, data = d.hook_in(error, 1.0)
    assert action == SEND
    assert bytes(data) == bytes(icmp6(VIP6, CLIENT6, 2, 0, request[:1192], 1360, 64, flow=0))
    route = conn.dest.route
    assert route is not None and conn.dest.path_mtu(route) == 1400
    # Other errors reach the client as they are, about its request.
    error = icmp6(PATH_ROUTER6, SOURCE6, 1, 3, _tunnelled6(request, "2001:db8:4::2", 41)[:200])
    action, data = d.hook_in(error, 2.0)
    assert bytes(data) == bytes(icmp6(VIP6, CLIENT6, 1, 3, request[:160], 0, 64, flow=0))
    # A wrong checksum: dropped (ip_vs_in_icmp checks it for tunnels as for NAT).
    bad = icmp6(PATH_ROUTER6, SOURCE6, 1, 3, _tunnelled6(request, "2001:db8:4::2", 41)[:200])
    bad[42] ^= 0xFF
    assert d.hook_in(bad, 2.5) == (DROP, "icmp_checksum")
    # An error about a tunnel to another real server is none of this connection's.
    error = icmp6(
        PATH_ROUTER6, SOURCE6, 2, 0, _tunnelled6(request, "2001:db8:4::3", 41)[:200], 1400
    )
    assert d.hook_in(error, 3.0) == (ACCEPT, None)


def test_an_ipv4_client_in_an_ipv6_tunnel_hears_fragmentation_needed():
    """Mixed families (an IPv4 service, an IPv6 real server): ICMPv6 packet too big
    about the tunnel becomes ICMPv4 fragmentation needed (RFC 7915 5.2), 1400 - 40."""
    d, _conn = tun_director("2001:db8:4::2", VIP, False)
    request = _df(bytes(tcp(CLIENT, VIP, 40000, 80, ACK, b"y" * 1400)))
    error = icmp6(
        PATH_ROUTER6, SOURCE6, 2, 0, _tunnelled6(request, "2001:db8:4::2", 4)[:1232], 1400
    )
    action, data = d.hook_in(error, 1.0)
    assert action == SEND
    answer = dpkt.ip.IP(bytes(data))
    assert (answer.src, answer.dst) == (socket.inet_aton(VIP), socket.inet_aton(CLIENT))
    assert (answer.data.type, answer.data.code, answer.data.data.mtu) == (3, 4, 1360)
    assert bytes(answer.data.data.data) == request[:28]
    # A parameter problem has no ICMPv4 counterpart here: not relayed.
    error = icmp6(PATH_ROUTER6, SOURCE6, 4, 0, _tunnelled6(request, "2001:db8:4::2", 4)[:200])
    assert d.hook_in(error, 2.0) == (DROP, "icmp_untranslated")


def test_an_ipv6_client_in_an_ipv4_tunnel_hears_packet_too_big():
    """The reverse: ICMPv4 fragmentation needed about an IPv4 tunnel packet carrying an
    IPv6 request (protocol 41) becomes ICMPv6 packet too big (RFC 7915 4.2), 1400 - 20."""
    d, _conn = tun_director("198.18.0.7", VIP6, True)
    request = bytes(tcp6(CLIENT6, VIP6, 40000, 80, ACK, b"y" * 1400))
    tunnelled = bytes(
        dpkt.ip.IP(src=socket.inet_aton("198.18.0.1"), dst=socket.inet_aton("198.18.0.7"),
                   p=41, ttl=63, data=request)
    )  # fmt: skip
    error = bytes(
        dpkt.ip.IP(
            src=socket.inet_aton("198.18.0.254"), dst=socket.inet_aton("198.18.0.1"), p=1,
            data=dpkt.icmp.ICMP(type=3, code=4,
                                data=dpkt.icmp.ICMP.Unreach(mtu=1400, data=tunnelled[:576])),
        )
    )  # fmt: skip
    action, data = d.hook_in(bytearray(error), 1.0)
    assert action == SEND
    assert bytes(data) == bytes(icmp6(VIP6, CLIENT6, 2, 0, request[:556], 1380, 64, flow=0))


@pytest.mark.parametrize(
    ("vip", "rs", "source", "hlen"),
    [(VIP6, "2001:db8:4::2", SOURCE6, 40), (VIP, "2001:db8:4::2", SOURCE6, 40),
     (VIP6, "198.19.0.2", "198.18.0.1", 20)],
    ids=["6in6", "4in6", "6in4"],
)  # fmt: skip
def test_path_mtu_discovery_through_the_tunnel_the_director_sent(vip, rs, source, hlen):
    """What the tunnel transmitter sent, quoted back by a router past the director
    with a smaller MTU (1400), is looked through: the client hears 1400 less the
    outer header about its own request, in its own family, and its next packet of
    that size fits the tunnel."""
    d = Director()
    service = ServiceConf("tcp", vip, 80, dests=(DestConf(rs, 80, "tunnel"),))
    d.configure(Config(services=(service,)))
    (dest,) = next(iter(d.services)).dests
    v6_outer = ":" in rs
    src = a6(source) if v6_outer else socket.inet_aton(source)
    dest.route = Route(ifindex=3, source=src, mtu=1500, onlink=False)
    client6 = ":" in vip
    if client6:
        request = tcp6(CLIENT6, vip, 40000, 80, SYN, b"y" * 1300)
    else:
        request = bytearray(_df(bytes(tcp(CLIENT, vip, 40000, 80, SYN, b"y" * 1300))))
    action, tunnelled = d.hook_in(bytearray(request), 1.0)
    assert action == SEND
    if v6_outer:
        error = icmp6(PATH_ROUTER6, source, 2, 0, bytes(tunnelled)[:1232], 1400)
    else:
        error = bytearray(bytes(dpkt.ip.IP(
            src=socket.inet_aton("198.18.0.254"), dst=src, p=1,
            data=dpkt.icmp.ICMP(type=3, code=4,
                                data=dpkt.icmp.ICMP.Unreach(mtu=1400, data=bytes(tunnelled)[:548])),
        )))  # fmt: skip
    action, answer = d.hook_in(error, 1.1)
    assert action == SEND
    inner_quote = bytes(tunnelled)[hlen:]
    if client6:
        told = icmp6(vip, CLIENT6, 2, 0, inner_quote[: (1232 if v6_outer else 548) - hlen],
                     1400 - hlen, 64, flow=0)  # fmt: skip
        assert bytes(answer) == bytes(told)
    else:
        got = dpkt.ip.IP(bytes(answer))
        assert (got.data.type, got.data.code, got.data.data.mtu) == (3, 4, 1400 - hlen)
        assert bytes(got.data.data.data) == inner_quote[:28]
    assert dest.route is not None and dest.path_mtu(dest.route) == 1400
    # The client's next packet of 1400 - hlen bytes fits the tunnel: sent.
    size = 1400 - hlen - (60 if client6 else 40)
    if client6:
        fits = tcp6(CLIENT6, vip, 40000, 80, ACK, b"z" * size)
    else:
        fits = bytearray(_df(bytes(tcp(CLIENT, vip, 40000, 80, ACK, b"z" * size))))
    action, data = d.hook_in(fits, 1.2)
    assert action == SEND and len(data) == 1400
