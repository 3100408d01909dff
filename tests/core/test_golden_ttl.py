"""Golden cases for the IPv4 TTL (net/netfilter/ipvs/ip_vs_xmit.c decrement_ttl, commit
8d8e20e2d7bb "ipvs: Decrement ttl").

__ip_vs_get_out_rt calls decrement_ttl for every packet it routes anywhere but to the
director itself: the requests of ip_vs_nat_xmit, ip_vs_dr_xmit and ip_vs_tunnel_xmit,
and the ICMP errors ip_vs_icmp_xmit relays to a real server (for NAT through its own
__ip_vs_get_out_rt, for DR and TUN through the connection's transmitter).  A TTL of 1
or 0 is answered with ``icmp_send(skb, ICMP_TIME_EXCEEDED, ICMP_EXC_TTL, 0)`` and the
packet dropped; icmp_send answers no ICMP error with another.  Otherwise
ip_decrease_ttl takes one off, its checksum following.  The tunnel's outer header
takes the inner TTL after that (ip_vs_prepare_tunneled_skb).  Not decremented: a
local node's packets (the local route returns before decrement_ttl) and NAT replies
(handle_response in ip_vs_core.c only rewrites and reroutes them; ip_forward took
their hop before the FORWARD hook).

Expected packets are built by dpkt from those fields, dpkt computing every checksum;
the time exceeded message by dpkt's own TimeExceed layout (RFC 792: 32 unused bits,
then the offending header and 8 bytes of its payload), from the VIP (icmp_send's
source on the local input route) with TTL 64 (ip_default_ttl).
"""

from __future__ import annotations

import socket
import struct
from typing import NoReturn

import dpkt
from hypothesis import given
from hypothesis import strategies as st

from director.core.checksum import adjust16
from director.core.engine import Director
from director.core.packet import parse
from director.core.route import Frame, Route
from director.core.xmit import ACCEPT, DIRECT, DROP, SEND
from director.core.xmit.mtu import TTL_DEC_WORDS, ip_decrease_ttl
from director.core.xmit.nat import rewrite, rewrite_fused
from director.core.xmit.tun import encapsulate
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import ACK, CLIENT, SYN, VIP, tcp, udp

RS_LAN = "198.18.0.2"
RS_REMOTE = "198.19.0.2"
DIRECTOR_LAN = socket.inet_aton("198.18.0.1")
ROUTER = "203.0.113.1"
METHODS = ("masq", "droute", "tunnel")
RS = {"masq": RS_LAN, "droute": RS_LAN, "tunnel": RS_REMOTE, "local": "203.0.113.5"}


def director(method: str, fused: bool = True) -> Director:
    d = Director()
    d.fused = fused
    d.configure(
        Config(
            services=(
                ServiceConf("tcp", VIP, 80, scheduler="rr",
                            dests=(DestConf(RS[method], 80, method),)),
                ServiceConf("udp", VIP, 53, scheduler="rr",
                            dests=(DestConf(RS[method], 53, method),)),
            )
        )
    )  # fmt: skip
    for svc in d.services:
        for dest in svc.dests:
            dest.route = Route(ifindex=3, source=DIRECTOR_LAN, mtu=1500, local=method == "local")
    return d


def sent(method: str, packet: bytearray) -> bytearray:
    """What the kernel hands on toward the real server for ``packet`` (already one hop
    older), by method: the NAT rewrite, the frame's packet, the tunnel packet."""
    if method == "masq":
        ip = dpkt.ip.IP(bytes(packet))
        ip.dst = socket.inet_aton(RS_LAN)
        ip.sum = 0
        ip.data.sum = 0
        return bytearray(bytes(ip))
    if method == "tunnel":
        return encapsulate(bytearray(packet), DIRECTOR_LAN, socket.inet_aton(RS_REMOTE))
    return packet


def verdict_bytes(verdict: tuple[int, object]) -> bytes:
    data = verdict[1]
    return bytes(data.packet if isinstance(data, Frame) else data)  # type: ignore[arg-type]


def time_exceeded(original: bytes) -> bytes:
    icmp = dpkt.icmp.ICMP(type=11, code=0, data=dpkt.icmp.ICMP.TimeExceed(data=original[:28]))
    return bytes(
        dpkt.ip.IP(src=socket.inet_aton(VIP), dst=socket.inet_aton(CLIENT), p=1, ttl=64,
                   data=icmp)
    )  # fmt: skip


# A SYN then a segment of the flow (the fused path's), a datagram twice (the second fused).
FLOW = (
    lambda ttl: tcp(CLIENT, VIP, 40000, 80, SYN, ttl=ttl),
    lambda ttl: tcp(CLIENT, VIP, 40000, 80, ACK, b"x", ttl=ttl),
    lambda ttl: udp(CLIENT, VIP, 5000, 53, b"q", ttl=ttl),
    lambda ttl: udp(CLIENT, VIP, 5000, 53, b"q", ttl=ttl),
)


def test_requests_leave_one_hop_older_on_every_method_general_and_fused():
    """TTL 64 -> 63 for the first packet (the general path) and the next (the fused
    path), TCP and UDP, by NAT, DR and TUN; the tunnel's outer TTL is the inner's 63."""
    for method in METHODS:
        for fused in (True, False):
            d = director(method, fused)
            action = DIRECT if method == "droute" else SEND
            for build in FLOW:
                verdict = d.hook_in(build(64), 1.0)
                assert verdict[0] == action, (method, fused)
                out = verdict_bytes(verdict)
                assert out == bytes(sent(method, build(63))), (method, fused)
                if method == "tunnel":
                    assert out[8] == 63 and out[20 + 8] == 63


def test_the_fused_path_takes_the_hop_itself():
    """An established flow's packet is sent by the fused path (Xmit.fused_in), never
    the general one, one hop older."""
    for method in METHODS:
        d = director(method)
        d.hook_in(udp(CLIENT, VIP, 5000, 53, b"q", ttl=64), 1.0)

        def general(*args: object) -> NoReturn:
            raise AssertionError("the general path")

        d._in_general = general  # type: ignore[method-assign]
        verdict = d.hook_in(udp(CLIENT, VIP, 5000, 53, b"q", ttl=64), 1.0)
        older = udp(CLIENT, VIP, 5000, 53, b"q", ttl=63)
        assert verdict_bytes(verdict) == bytes(sent(method, older))


def test_nat_replies_keep_their_ttl_general_and_fused():
    """handle_response (ip_vs_core.c) rewrites the source and reroutes; the TTL is
    the one the kernel's forwarding left (64 here), general and fused alike."""
    for fused in (True, False):
        d = director("masq", fused)
        d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN, ttl=64), 1.0)
        for flags in (SYN | ACK, ACK):
            reply = tcp(RS_LAN, CLIENT, 80, 40000, flags, b"r", ttl=64)
            assert d.hook_out(reply, 1.1) == (ACCEPT, tcp(VIP, CLIENT, 80, 40000, flags, b"r",
                                                          ttl=64))  # fmt: skip


def test_a_local_node_keeps_the_ttl():
    """The route is local: __ip_vs_get_out_rt returns before decrement_ttl."""
    d = director("local")
    packet = tcp(CLIENT, VIP, 40000, 80, SYN, ttl=1)
    assert d.hook_in(bytearray(packet), 1.0) == (ACCEPT, None)


def test_ttl_one_or_zero_gets_time_exceeded_and_nothing_goes_to_the_real_server():
    """decrement_ttl: ``ttl <= 1``: icmp_send(ICMP_TIME_EXCEEDED, ICMP_EXC_TTL) to the
    sender, the packet dropped, on the general path (a new connection) and the
    fused one (an established connection's packet)."""
    for method in METHODS:
        for fused in (True, False):
            d = director(method, fused)
            for ttl in (1, 0):
                syn = tcp(CLIENT, VIP, 40000 + ttl, 80, SYN, ttl=ttl)
                assert d.hook_in(bytearray(syn), 1.0) == (SEND, bytearray(time_exceeded(syn)))
            d.hook_in(udp(CLIENT, VIP, 5000, 53, b"q", ttl=64), 1.0)
            for ttl in (1, 0):
                late = udp(CLIENT, VIP, 5000, 53, b"q", ttl=ttl)
                assert d.hook_in(bytearray(late), 2.0) == (SEND, bytearray(time_exceeded(late)))
            assert d.verdicts["direct"] == (1 if method == "droute" else 0)


def test_ttl_two_arrives_with_ttl_one():
    for method in METHODS:
        out = verdict_bytes(director(method).hook_in(tcp(CLIENT, VIP, 40000, 80, SYN, ttl=2), 1.0))
        assert out == bytes(sent(method, tcp(CLIENT, VIP, 40000, 80, SYN, ttl=1)))


def icmp_error(dst: str, quoted: bytes, ttl: int) -> bytes:
    icmp = dpkt.icmp.ICMP(type=3, code=4, data=dpkt.icmp.ICMP.Unreach(mtu=1280, data=quoted[:28]))
    return bytes(dpkt.ip.IP(src=socket.inet_aton(ROUTER), dst=socket.inet_aton(dst), p=1,
                            ttl=ttl, data=icmp))  # fmt: skip


def test_a_relayed_icmp_error_loses_a_hop_and_one_that_runs_out_is_dropped_unanswered():
    """ip_vs_icmp_xmit's __ip_vs_get_out_rt (NAT) or the connection's transmitter (DR,
    TUN) decrements the error's TTL: 2 leaves as 1; at 1 decrement_ttl's icmp_send
    will not answer an ICMP error, so it is dropped."""
    reply = bytes(tcp(VIP, CLIENT, 80, 40000, ACK, ttl=64))
    for method in METHODS:
        d = director(method)
        d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN, ttl=64), 0.0)
        verdict = d.hook_in(bytearray(icmp_error(VIP, reply, 2)), 1.0)
        assert verdict[0] in (SEND, DIRECT)
        out = verdict_bytes(verdict)
        inner = out[20:] if method == "tunnel" else out
        assert inner[8] == 1
        assert dpkt.in_cksum(inner[:20]) == 0  # the header checksum followed
        assert d.hook_in(bytearray(icmp_error(VIP, reply, 1)), 1.0) == (DROP, "ttl")
        assert d.drops["ttl"] == 1


@given(st.integers(0, 0xFFFF), st.integers(2, 255), st.integers(0, 255))
def test_ip_decrease_ttl_is_rfc1624(check, ttl, protocol):
    """ip_decrease_ttl's ``check + htons(0x0100)`` with its carry writes the bits RFC
    1624 eqn. 3 writes for the TTL's word one less (whatever the checksum held), the
    sum TTL_DEC_WORDS stands for in the fused path's one sum."""
    buf = bytearray(20)
    buf[8], buf[9] = ttl, protocol
    struct.pack_into("!H", buf, 10, check)
    ip_decrease_ttl(buf)
    word = ttl << 8 | protocol
    assert buf[8] == ttl - 1
    assert struct.unpack_from("!H", buf, 10)[0] == adjust16(check, word, word - 0x0100)


@given(
    st.sampled_from((6, 17)),
    st.binary(min_size=4, max_size=4),
    st.integers(1, 65535),
    st.sampled_from((0, 1, 0xFEFF, 0xFFFE, 0xFFFF)) | st.integers(0, 0xFFFF),
    st.integers(2, 255),
)
def test_the_fused_one_sum_is_rewrite_then_ip_decrease_ttl(protocol, new_addr, new_port,
                                                             ip_csum, ttl):  # fmt: skip
    """NAT's fused request: the TTL's change folded into the address's one IP checksum
    sum writes what ip_decrease_ttl then the word-by-word rewrite write."""
    raw = (tcp if protocol == 6 else udp)(CLIENT, VIP, 40000, 80, data=b"p", ttl=ttl)
    struct.pack_into("!H", raw, 10, ip_csum)
    a, b = bytearray(raw), bytearray(raw)
    ip_decrease_ttl(a)
    rewrite(parse(a), 16, 2, new_addr, new_port)
    old = int.from_bytes(raw[16:20], "big") << 16 | 80
    b[8] -= 1
    rewrite_fused(b, protocol, 16, 22, old, int.from_bytes(new_addr, "big") << 16 | new_port,
                  TTL_DEC_WORDS)  # fmt: skip
    assert a == b
