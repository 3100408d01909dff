"""Golden packets for VS/TUN's GUE and GRE tunnel types (ipvsadm --tun-type gue|gre).

The expected packets are the kernel's own: kernel 6.1's ip_vs_tunnel_xmit, captured
with tcpdump on the director's link toward the real servers in the IPVS VM
(tests/ctl/ipvsadm131/tuntype.sh; a client's SYN to each service, sent once from a raw
socket, its checksum complete, and once from a TCP socket, its checksum partial over
the veth).  What the kernel fills in at random or leaves to the device is set aside,
each where it is:

- the outer IPv4 identification (ip_select_ident: 0 under DF, else random; director
  leaves 0 for the raw socket to fill) and so the outer header checksum;
- GUE's UDP source port: udp_flow_src_port's flow hash has a boot-random seed, so
  only its range is compared (ip_local_port_range, 32768 to 60999); director's packet
  is compared with the kernel's port put in, its UDP checksum adjusted (RFC 1624);
- the UDP checksum of a packet the kernel sent with a complete inner checksum: it
  hands the device the pseudo-header seed (udp_set_csum's CHECKSUM_PARTIAL branch,
  ``~udp_v4_check(len, saddr, daddr, 0)``), which the veth never completes, so the
  capture shows the seed where a wire shows the sum: there the kernel's field is
  checked to be that seed and director's to be the whole checksum.

Where the capture's client checksum was partial (the TCP socket), the kernel computed
the whole UDP or GRE checksum itself (lco_csum) over the client's packet as it would be
completed: director, whose packets come complete from the queue, gives the same bytes
for the completed packet.
"""

from __future__ import annotations

import socket
import struct

import dpkt
import pytest

from director.core.checksum import adjust16, internet_checksum
from director.core.engine import Director
from director.core.route import Route
from director.core.xmit import SEND
from director.core.xmit.tun import PORT_RANGE, encap_hlen, encapsulate, tunnel_hlen
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import CLIENT, SYN, VIP, tcp

DIRECTOR = socket.inet_aton("198.18.0.1")

# Kernel 6.1 (ip_vs_tunnel_xmit), tun.pcap of tuntype.sh: SYNs 198.51.100.2 -> the VIP.
GUE_NOCSUM = bytes.fromhex(  # -r 198.18.0.3 --tun-type gue --tun-port 6080 --tun-nocsum
    "45100048000040003f11af6cc6120001c6120003822617c0003400000004000045100028123440003f06c34e"
    "c6336402cb0071079c90005011223344000000005002faf06d6d0000"
)
GUE_CSUM = bytes.fromhex(  # 198.18.0.4 --tun-port 6081 --tun-csum
    "45100048000040003f11af6bc6120001c6120004da4317c100348c6f0004000045100028123440003f06c34e"
    "c6336402cb0071079c91005111223344000000005002faf06d6b0000"
)
GUE_REMCSUM = bytes.fromhex(  # 198.18.0.5 --tun-port 6082 --tun-remcsum, complete inner
    "45100048000040003f11af6ac6120001c612000593e717c200348c700004000045100028123440003f06c34e"
    "c6336402cb0071079c92005211223344000000005002faf06d690000"
)
GRE_NOCSUM = bytes.fromhex(  # 198.18.0.6 --tun-type gre
    "45100040000040003f2faf53c6120001c61200060000080045100028123440003f06c34ec6336402cb007107"
    "9c93005311223344000000005002faf06d670000"
)
# From the TCP socket (the client's checksum partial: the kernel's lco_csum sums it as
# completed).
GUE_CSUM_LCO = bytes.fromhex(  # 198.18.0.4 --tun-port 6081 --tun-csum
    "4500005c000040003f11af67c6120004"[:24] + "c6120001c6120004973917c100482aa2000400004500003cec04"
    "40003f06e979c6336402cb00710782e80051783cdb1900000000a002faf0666c0000020405b40402080ad04f"
    "32240000000001030307"
)
GRE_CSUM_LCO = bytes.fromhex(  # 198.18.0.7 --tun-type gre --tun-csum
    "45000058000040003f2faf4ac6120001c612000780000800de6b00004500003c1a0940003f06bb75c6336402"
    "cb007107e4160054d4fa91a900000000a002faf0666c0000020405b40402080a3b1d37a50000000001030307"
)
# --tun-remcsum over a partial checksum: GUE hlen 2, GUE_FLAG_PRIV, GUE_PFLAG_REMCSUM,
# csum_start 20 and csum_start + 16 (the client's TCP checksum, left as its seed).
GUE_REMCSUM_PARTIAL = bytes.fromhex(  # 198.18.0.5 --tun-port 6082 --tun-remcsum
    "45000064000040003f11af5ec6120001c6120005d25f17c200508c8c02040001800000000014002445"
    "00003cc3ce40003f0611b0c6336402cb007107bada0052c625c6b100000000a002faf0666c0000020405b4"
    "0402080a2fefe7070000000001030307"
)
# An IPv6 client ([2001:db8:1::100]:91 -> 198.18.0.9 --tun-type gre): ETH_P_IPV6, no DF.
GRE6_IN_4 = bytes.fromhex(
    "450000544a5b00003f2fa4f1c6120001c6120009000086dd6004a66f0014063f20010db8000a0000000000000000"
    "000220010db8000100000000000000000100a083005b55667788000000005002faf0eaa50000"
)
# ... and -> 198.18.0.8 --tun-type gue --tun-port 6090 --tun-remcsum from the raw socket:
# GUE proto_ctype 41, no option (the checksum was complete).
GUE6_IN_4 = bytes.fromhex(
    "4500005cafd400003f113f8fc6120001c612000892a317ca00488c87002900006004a66f0014063f20010db8"
    "000a0000000000000000000220010db8000100000000000000000100a082005a55667788000000005002faf0"
    "eaa70000"
)


def _sum16(data: bytes) -> int:
    return 0xFFFF & ~internet_checksum(data)


def seed(packet: bytes) -> int:
    """~udp_v4_check(len, saddr, daddr, 0): the folded pseudo-header sum, uncomplemented."""
    return _sum16(packet[12:20] + struct.pack("!xBH", 17, len(packet) - 20))


def _ours(kernel: bytes, hlen: int, tun_type: str, port: int, flags: str, **kw: int) -> bytes:
    inner = bytearray(kernel[20 + hlen :])
    out = encapsulate(inner, kernel[12:16], kernel[16:20], True, tun_type, port, flags, **kw)
    return bytes(out)


def _comparable(packet: bytes) -> bytearray:
    """The IPv4 identification and header checksum set aside."""
    out = bytearray(packet)
    out[4:6] = b"\0\0"
    out[10:12] = b"\0\0"
    return out


def _with_sport(ours: bytes, kernel: bytes) -> bytearray:
    """Director's GUE packet with the kernel's UDP source port (checksum adjusted)."""
    out = bytearray(ours)
    ourport, theirs = struct.unpack_from("!H", ours, 20)[0], struct.unpack_from("!H", kernel, 20)[0]
    assert PORT_RANGE[0] <= ourport < PORT_RANGE[1] and PORT_RANGE[0] <= theirs < PORT_RANGE[1]
    struct.pack_into("!H", out, 20, theirs)
    csum = struct.unpack_from("!H", out, 26)[0]
    if csum:
        struct.pack_into("!H", out, 26, adjust16(csum, ourport, theirs) or 0xFFFF)
    return out


def _completed(inner: bytes) -> bytearray:
    """The client's IPv4 TCP packet with its checksum completed from the seed."""
    out = bytearray(inner)
    hl = (out[0] & 0x0F) << 2
    out[hl + 16 : hl + 18] = b"\0\0"
    pseudo = out[12:20] + struct.pack("!xBH", 6, len(out) - hl)
    struct.pack_into("!H", out, hl + 16, internet_checksum(bytes(pseudo) + out[hl:]))
    return out


def _udp_ok(packet: bytes) -> bool:
    return internet_checksum(packet[12:20] + struct.pack("!xBH", 17, len(packet) - 20)
                             + packet[20:]) == 0  # fmt: skip


def test_gue_nocsum_is_the_kernels() -> None:
    """UDP checksum 0 (udp_set_csum nocheck), GUE version 0 hlen 0 proto 4 flags 0."""
    ours = _ours(GUE_NOCSUM, 12, "gue", 6080, "nocsum")
    assert _comparable(_with_sport(ours, GUE_NOCSUM)) == _comparable(GUE_NOCSUM)


def test_gue_csum_and_remcsum_of_a_complete_packet() -> None:
    """--tun-csum, and --tun-remcsum over a complete checksum (no option: ipvs_gue_encap
    adds it only for CHECKSUM_PARTIAL): the kernel's field is the seed it leaves the
    device, director's the whole UDP checksum."""
    for kernel, port, flags in ((GUE_CSUM, 6081, "csum"), (GUE_REMCSUM, 6082, "remcsum")):
        ours = _with_sport(_ours(kernel, 12, "gue", port, flags), kernel)
        assert struct.unpack_from("!H", kernel, 26)[0] == seed(kernel)
        assert _udp_ok(bytes(ours))
        ours[26:28] = kernel[26:28]
        assert _comparable(ours) == _comparable(kernel)


def test_gue_csum_over_a_completed_packet_is_the_kernels_sum() -> None:
    """The kernel's lco_csum over a partial client checksum is the UDP checksum of the
    packet completed: director's over the completed packet, byte for byte."""
    kernel = bytearray(GUE_CSUM_LCO)
    inner = _completed(kernel[32:])
    ours = encapsulate(inner, bytes(kernel[12:16]), bytes(kernel[16:20]), True, "gue", 6081, "csum")
    kernel[32:] = inner
    assert _comparable(_with_sport(bytes(ours), bytes(kernel))) == _comparable(bytes(kernel))


def test_gre_nocsum_and_csum_are_the_kernels() -> None:
    """GRE version 0, protocol ETH_P_IP; under --tun-csum the C bit and RFC 2784's
    checksum, the kernel's for the packet completed (gre_checksum / lco_csum)."""
    assert _comparable(_ours(GRE_NOCSUM, 4, "gre", 0, "nocsum")) == _comparable(GRE_NOCSUM)
    kernel = bytearray(GRE_CSUM_LCO)
    kernel[28:] = _completed(kernel[28:])
    ours = _ours(bytes(kernel), 8, "gre", 0, "csum")
    assert _comparable(ours) == _comparable(bytes(kernel))
    assert struct.unpack_from("!H", ours, 24)[0] == 0xDE6B


def test_gue_remcsum_over_a_partial_checksum() -> None:
    """ipvs_gue_encap's remote checksum offload: hlen 2, GUE_FLAG_PRIV, the private
    flags word GUE_PFLAG_REMCSUM, csum_start (the client's transport header in its
    packet) and csum_start + offsetof(struct tcphdr, check); the client's checksum is
    left as its seed; the UDP checksum is computed (here the whole one)."""
    kernel = GUE_REMCSUM_PARTIAL
    ours = _with_sport(_ours(kernel, 20, "gue", 6082, "remcsum", partial_l4=20), kernel)
    assert struct.unpack_from("!H", kernel, 26)[0] == seed(kernel)
    assert _udp_ok(bytes(ours))
    ours[26:28] = kernel[26:28]
    assert _comparable(ours) == _comparable(kernel)
    assert encap_hlen("gue", "remcsum", partial=True) == 20
    assert tunnel_hlen(b"\0" * 4, "gue", "remcsum", partial=True) == 40


def test_ipv6_clients_in_ipv4_gue_and_gre() -> None:
    """An IPv6 client's packet: GRE protocol ETH_P_IPV6, GUE proto_ctype 41, no DF."""
    assert _comparable(_ours(GRE6_IN_4, 4, "gre", 0, "nocsum")) == _comparable(GRE6_IN_4)
    ours = _with_sport(_ours(GUE6_IN_4, 12, "gue", 6090, "remcsum"), GUE6_IN_4)
    assert struct.unpack_from("!H", GUE6_IN_4, 26)[0] == seed(GUE6_IN_4)
    ours[26:28] = GUE6_IN_4[26:28]
    assert _comparable(ours) == _comparable(GUE6_IN_4)


def test_ipv6_outer_headers() -> None:
    """Toward an IPv6 real server (ip_vs_tunnel_xmit_v6): next header UDP (17) or GRE
    (47), payload length counting the UDP and GUE or GRE header, the UDP checksum over
    the IPv6 pseudo-header (udp6_set_csum; 0 under --tun-nocsum), GRE's checksum over
    its header and the packet, both checked here by dpkt's own sums."""
    inner = bytearray(GUE_NOCSUM[32:])
    src, dst = (
        socket.inet_pton(socket.AF_INET6, "2001:db8:2::1"),
        socket.inet_pton(socket.AF_INET6, "2001:db8:2::8"),
    )
    for flags in ("csum", "remcsum", "nocsum"):
        packet = bytes(encapsulate(inner, src, dst, True, "gue", 6090, flags))
        ip6 = dpkt.ip6.IP6(packet)
        assert (ip6.nxt, ip6.plen, ip6.hlim) == (17, 8 + 4 + len(inner), inner[8])
        udp = ip6.data
        assert (udp.dport, udp.ulen) == (6090, 8 + 4 + len(inner))
        assert bytes(udp.data)[:4] == b"\x00\x04\x00\x00" and bytes(udp.data)[4:] == inner
        given = udp.sum
        udp.sum = 0
        assert given == (0 if flags == "nocsum" else (dpkt.ip6.IP6(bytes(ip6)).data.sum))
    packet = bytes(encapsulate(inner, src, dst, True, "gre", 0, "csum"))
    ip6 = dpkt.ip6.IP6(packet)
    assert (ip6.nxt, ip6.plen) == (47, 8 + len(inner))
    assert packet[40:44] == b"\x80\x00\x08\x00" and internet_checksum(packet[40:]) == 0
    assert packet[48:] == inner
    assert tunnel_hlen(dst, "gre", "csum") == 48 and tunnel_hlen(dst, "gue") == 52


def _director(dest: DestConf, mtu: int) -> Director:
    d = Director()
    d.configure(Config(services=(ServiceConf("tcp", VIP, 8080, scheduler="rr", dests=(dest,)),)))
    for svc in d.services:
        for live in svc.dests:
            live.route = Route(ifindex=3, source=DIRECTOR, mtu=mtu)
    return d


def test_the_path_mtu_counts_the_tunnel_types_header() -> None:
    """__ip_vs_get_out_rt: the route's MTU less the IPv4 header and, for GUE, a UDP
    and GUE header (12 bytes), for GRE its header (4, 8 with --tun-csum); a DF packet
    one byte too big gets fragmentation needed with that MTU, one that fits goes out
    through the tunnel type it was given (UDP to --tun-port, or GRE)."""
    cases = (
        (DestConf("198.19.0.2", 8080, "tunnel", tun_type="gue", tun_port=6080), 1468, 17),
        (DestConf("198.19.0.2", 8080, "tunnel", tun_type="gre", tun_flags="csum"), 1472, 47),
        (DestConf("198.19.0.2", 8080, "tunnel", tun_type="gre"), 1476, 47),
    )
    for dest, fits, protocol in cases:
        d = _director(dest, 1500)
        big = bytearray(tcp(CLIENT, VIP, 40000, 8080, SYN, b"x" * (fits + 1 - 40)))
        big[6] |= 0x40
        big[10:12] = b"\0\0"
        struct.pack_into("!H", big, 10, internet_checksum(big[:20]))
        action, packet = d.hook_in(big, 1.0)
        assert action == SEND and isinstance(packet, bytearray)
        icmp = dpkt.ip.IP(bytes(packet)).data
        assert (icmp.type, icmp.code, icmp.data.mtu) == (3, 4, fits), dest
        ok = bytearray(tcp(CLIENT, VIP, 40001, 8080, SYN, b"x" * (fits - 40)))
        action, packet = d.hook_in(ok, 1.0)
        assert action == SEND and isinstance(packet, bytearray)
        assert packet[9] == protocol and len(packet) == 1500
        if protocol == 17:
            assert struct.unpack_from("!H", packet, 22)[0] == 6080


def _frag_needed(router: bytes, about: bytes, mtu: int) -> bytearray:
    """A router's ICMP fragmentation needed (RFC 1191) about ``about``, to its source,
    quoting its header and the next 548 bytes (RFC 1812 4.3.2.3: as much as fits)."""
    quote = about[:576]
    icmp = bytearray(struct.pack("!BBHHH", 3, 4, 0, 0, mtu) + quote)
    struct.pack_into("!H", icmp, 2, internet_checksum(icmp))
    header = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0, router, about[12:16])
    )
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return header + icmp


@pytest.mark.parametrize(
    ("dest", "ulen"),
    [
        (DestConf("198.19.0.2", 8080, "tunnel", tun_type="gue", tun_port=6080), 12),
        (
            DestConf("198.19.0.2", 8080, "tunnel", tun_type="gue", tun_port=6080, tun_flags="csum"),
            12,
        ),
        (DestConf("198.19.0.2", 8080, "tunnel", tun_type="gre"), 4),
        (DestConf("198.19.0.2", 8080, "tunnel", tun_type="gre", tun_flags="csum"), 8),
    ],
    ids=["gue", "gue-csum", "gre", "gre-csum"],
)
def test_an_error_about_our_gue_or_gre_packet_reaches_the_client(dest: DestConf, ulen: int) -> None:
    """ip_vs_in_icmp with ipvs_udp_decap / ipvs_gre_decap: a router's fragmentation
    needed about the director's GUE or GRE packet is looked through to the client's
    request inside; the real server's path MTU is learned, and the client hears, from
    the VIP about its own packet, that MTU less the outer IP and tunnel headers
    (``mtu -= hlen_ipip + ulen``)."""
    d = _director(dest, 1500)
    request = bytearray(tcp(CLIENT, VIP, 40000, 8080, SYN, b"x" * 1000))
    request[6] |= 0x40
    request[10:12] = b"\0\0"
    struct.pack_into("!H", request, 10, internet_checksum(request[:20]))
    action, sent = d.hook_in(bytearray(request), 1.0)
    assert action == SEND and isinstance(sent, bytearray)
    error = _frag_needed(socket.inet_aton("198.18.0.254"), bytes(sent), 1300)
    action, answer = d.hook_in(error, 2.0)
    assert action == SEND and isinstance(answer, bytearray)
    ip = dpkt.ip.IP(bytes(answer))
    assert (socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)) == (VIP, CLIENT)
    assert (ip.data.type, ip.data.code, ip.data.data.mtu) == (3, 4, 1300 - 20 - ulen)
    assert bytes(ip.data.data.data)[:28] == bytes(sent[20 + ulen : 48 + ulen])  # its request
    (live,) = (x for svc in d.services for x in svc.dests)
    assert live.pmtu == 1300


def test_an_error_about_another_udp_packet_is_not_a_tunnels() -> None:
    """A quoted UDP datagram whose payload only looks like GUE, to a real server with
    another tunnel port (ip_vs_find_tunnel finds none): not looked through."""
    d = _director(DestConf("198.19.0.2", 8080, "tunnel", tun_type="gue", tun_port=6080), 1500)
    sent = d.hook_in(bytearray(tcp(CLIENT, VIP, 40000, 8080, SYN)), 1.0)[1]
    assert isinstance(sent, bytearray)
    other = bytearray(sent)
    struct.pack_into("!H", other, 22, 6081)
    action, _ = d.hook_in(_frag_needed(socket.inet_aton("198.18.0.254"), bytes(other), 1300), 2.0)
    assert action != SEND
    (live,) = (x for svc in d.services for x in svc.dests)
    assert live.pmtu == 0


def test_a_packet_too_big_about_our_ipv6_gue_packet_reaches_the_ipv4_client() -> None:
    """An IPv4 client's request in GUE over IPv6 (ip_vs_tunnel_xmit_v6): the router's
    ICMPv6 packet too big about it (RFC 4443 3.2) is looked through the IPv6, UDP and
    GUE headers, and the client hears fragmentation needed (RFC 7915 5.2) with the MTU
    less 40 + 12 bytes."""
    source6 = socket.inet_pton(socket.AF_INET6, "2001:db8:2::1")
    router6 = socket.inet_pton(socket.AF_INET6, "2001:db8:2::254")
    d = Director()
    dest = DestConf("2001:db8:3::2", 8080, "tunnel", tun_type="gue", tun_port=6080)
    d.configure(Config(services=(ServiceConf("tcp", VIP, 8080, scheduler="rr", dests=(dest,)),)))
    for svc in d.services:
        for live in svc.dests:
            live.route = Route(ifindex=3, source=source6, mtu=1500)
    request = bytearray(tcp(CLIENT, VIP, 40000, 8080, SYN, b"x" * 1000))
    request[6] |= 0x40
    request[10:12] = b"\0\0"
    struct.pack_into("!H", request, 10, internet_checksum(request[:20]))
    action, sent = d.hook_in(bytearray(request), 1.0)
    assert action == SEND and isinstance(sent, bytearray) and sent[6] == 17
    body = bytearray(struct.pack("!BBHI", 2, 0, 0, 1400) + bytes(sent[:1232]))
    ip6 = dpkt.ip6.IP6(src=router6, dst=source6, nxt=58, hlim=64, data=b"")
    header = bytearray(bytes(ip6))
    header[4:6] = struct.pack("!H", len(body))
    pseudo = router6 + source6 + struct.pack("!I3xB", len(body), 58)
    struct.pack_into("!H", body, 2, internet_checksum(pseudo + bytes(body)))
    action, answer = d.hook_in(header + body, 2.0)
    assert action == SEND and isinstance(answer, bytearray)
    ip = dpkt.ip.IP(bytes(answer))
    assert (socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)) == (VIP, CLIENT)
    assert (ip.data.type, ip.data.code, ip.data.data.mtu) == (3, 4, 1400 - 40 - 12)
