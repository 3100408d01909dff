"""The VIP-path probe for DR and TUN real servers: does the real server answer on the
VIP, the way client traffic reaches it?

A DR or TUN real server answers clients from the VIP, which it holds on a device that
does not ARP.  A check on its own address (RIP:port) passes even when it has lost the
VIP, and every client packet sent to it is then lost.  So, as Seesaw does for its DSR
checks, the director sends a TCP SYN for VIP:port from its own address toward the
real server exactly as it forwards client packets: for DR in an Ethernet frame to the
real server's MAC (the IP packet is for the VIP), for TUN inside an IPIP packet to the
real server.  A real server that holds the VIP answers SYN-ACK to the director's
address (an RST if nothing listens); one that lost it drops the SYN.  The handshake
is then aborted with an RST: the probe is half-open, like a SYN scan, and opens no
connection in the real server's application.

The answer is read with a packet socket whose BPF filter lets through only the
probe's own reply (from VIP:port to the director's address and the probe's port,
unfragmented TCP), so the probe costs nothing when the LAN is busy.  The probe's
port is reserved by binding a TCP socket to it for the duration.  Needs CAP_NET_RAW.

IPv6 the same way: an IPv6 SYN (its checksum over the IPv6 pseudo-header), in an
Ethernet frame of EtherType IPv6 to the MAC NDP gives (DR), or tunnelled as TUN
tunnels it: IPv6-in-IPv6, and for the mixed-family pools IPVS allows for tunnels,
IPv4-in-IPv6 and IPv6-in-IPv4 (a raw socket of the real server's family whose
protocol is the VIP's: the kernel adds the outer header).  The SYN comes from the
director's address of the VIP's family: the source toward the real server when the
families agree, else an address of that family on the interface toward it.

Blocking (it runs in an executor thread of the health loop).
"""

from __future__ import annotations

import contextlib
import ctypes
import random
import select
import socket
import struct
import time

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
SO_ATTACH_FILTER = 26
IPPROTO_IPIP = 4
IPPROTO_IPV6 = 41
RT_SCOPE_UNIVERSE = 0
NUD_INCOMPLETE = 0x01
NUD_FAILED = 0x20
NTF_USE = 0x01
TH_FIN, TH_SYN, TH_RST, TH_ACK = 0x01, 0x02, 0x04, 0x10

Outcome = tuple[bool, str]


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def tcp_packet(
    src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int
) -> bytes:
    """An IPv4 (4-byte addresses) or IPv6 (16-byte) TCP segment with no payload (a SYN
    carries an MSS option: 1460 over IPv4, 1440 over IPv6's 20 more header bytes)."""
    ipv6 = len(src) == 16
    mss = 1440 if ipv6 else 1460
    options = struct.pack("!BBH", 2, 4, mss) if flags & TH_SYN else b""
    offset = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, 64240, 0, 0)
    tcp += options
    if ipv6:  # RFC 8200 8.1: upper-layer length (32 bits), three zero bytes, next header
        pseudo = src + dst + struct.pack("!IxxxB", len(tcp), socket.IPPROTO_TCP)
        tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
        return struct.pack("!IHBB", 6 << 28, len(tcp), socket.IPPROTO_TCP, 64) + src + dst + tcp
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + len(tcp), random.getrandbits(16), 0x4000, 64, socket.IPPROTO_TCP, 0,
        src, dst,
    )  # fmt: skip
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + tcp


def reply_filter(vip: bytes, vport: int, src: bytes, sport: int) -> bytes:
    """Classic BPF over the IP header (packet socket, SOCK_DGRAM): accept only TCP from
    vip:vport to src:sport, not a fragment."""
    drop = 14

    def ins(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("=HBBI", code, jt, jf, k)

    def to_drop(at: int) -> int:
        return drop - (at + 1)

    program = [
        ins(0x30, 0, 0, 9),  # 0  ldb [9]           protocol
        ins(0x15, 0, to_drop(1), socket.IPPROTO_TCP),  # 1
        ins(0x20, 0, 0, 12),  # 2  ld [12]           source address
        ins(0x15, 0, to_drop(3), int.from_bytes(vip, "big")),  # 3
        ins(0x20, 0, 0, 16),  # 4  ld [16]           destination address
        ins(0x15, 0, to_drop(5), int.from_bytes(src, "big")),  # 5
        ins(0x28, 0, 0, 6),  # 6  ldh [6]           flags and fragment offset
        ins(0x45, to_drop(7), 0, 0x1FFF),  # 7  jset: a fragment
        ins(0xB1, 0, 0, 0),  # 8  ldxb 4*([0]&0xf)  IP header length
        ins(0x48, 0, 0, 0),  # 9  ldh [x+0]         TCP source port
        ins(0x15, 0, to_drop(10), vport),  # 10
        ins(0x48, 0, 0, 2),  # 11 ldh [x+2]         TCP destination port
        ins(0x15, 0, to_drop(12), sport),  # 12
        ins(0x06, 0, 0, 0xFFFF),  # 13 accept
        ins(0x06, 0, 0, 0),  # 14 drop
    ]
    return b"".join(program)


def reply_filter6(vip: bytes, vport: int, src: bytes, sport: int) -> bytes:
    """``reply_filter`` over an IPv6 header: next header TCP right after it (no
    extension header, so no fragment), from vip:vport to src:sport."""

    def ins(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("=HBBI", code, jt, jf, k)

    tests = [(0x30, 6, socket.IPPROTO_TCP)]  # ldb [6]: next header
    tests += [(0x20, 8 + 4 * i, int.from_bytes(vip[4 * i : 4 * i + 4], "big")) for i in range(4)]
    tests += [(0x20, 24 + 4 * i, int.from_bytes(src[4 * i : 4 * i + 4], "big")) for i in range(4)]
    tests += [(0x28, 40, vport), (0x28, 42, sport)]  # ldh: TCP source and destination ports
    drop = 2 * len(tests) + 1
    program = []
    for load, at, value in tests:
        program.append(ins(load, 0, 0, at))
        program.append(ins(0x15, 0, drop - (len(program) + 1), value))
    program += [ins(0x06, 0, 0, 0xFFFF), ins(0x06, 0, 0, 0)]  # accept, drop
    return b"".join(program)


def _attach(sock: socket.socket, program: bytes) -> None:
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("HP", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _route(rip: str, vip: str = "") -> tuple[int, str, bool]:
    """(ifindex, the director's source address of the VIP's family, on-link) toward
    the real server."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        (answer, *_) = ipr.route("get", dst=rip)
        ifindex = int(answer.get_attr("RTA_OIF") or 0)
        source = str(answer.get_attr("RTA_PREFSRC") or "")
        family = _family(vip or rip)
        if family != _family(rip):  # a mixed-family tunnel: the inner packet's source
            source = ""
            for msg in ipr.get_addr(index=ifindex, family=family):
                addr = str(msg.get_attr("IFA_ADDRESS") or "")
                if msg["scope"] == RT_SCOPE_UNIVERSE and addr and addr != vip:
                    source = addr
                    break
        return ifindex, source, answer.get_attr("RTA_GATEWAY") is None


def _neighbour(rip: str, ifindex: int, deadline: float) -> bytes | None:
    """The real server's MAC from the kernel's neighbour table, resolving it (as
    ``director.shell.netlink`` does, with NTF_USE) if it is not known yet."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        asked = False
        while True:
            for entry in ipr.get_neighbours(dst=rip, ifindex=ifindex):
                lladdr = entry.get_attr("NDA_LLADDR")
                if lladdr and not entry["state"] & (NUD_INCOMPLETE | NUD_FAILED):
                    return bytes.fromhex(str(lladdr).replace(":", ""))
            if time.monotonic() >= deadline:
                return None
            if not asked:
                with contextlib.suppress(Exception):
                    ipr.neigh("set", dst=rip, ifindex=ifindex, family=_family(rip),
                              state=NUD_INCOMPLETE, flags=NTF_USE)  # fmt: skip
                asked = True
            time.sleep(0.02)


def probe(vip: str, vport: int, rip: str, method: str, timeout: float) -> Outcome:
    """SYN to vip:vport delivered to the real server ``rip`` as ``method`` (droute or
    tunnel) forwards; healthy if it answers SYN-ACK within ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        ifindex, source, onlink = _route(rip, vip)
    except Exception as exc:
        return False, f"no route to {rip}: {exc}"
    if not source:
        return False, f"no source address toward {rip}"
    mac = None
    family = _family(vip)
    if method == "droute":
        if family != _family(rip):
            return False, f"DR cannot carry {vip} to {rip}: their families differ"
        if not onlink:
            return False, f"{rip} is not on a directly connected network"
        mac = _neighbour(rip, ifindex, deadline)
        if mac is None:
            return False, f"{rip} does not answer {'NDP' if family == socket.AF_INET6 else 'ARP'}"
    src, dst = socket.inet_pton(family, source), socket.inet_pton(family, vip)
    ether = ETH_P_IPV6 if family == socket.AF_INET6 else ETH_P_IP
    with contextlib.ExitStack() as stack:
        reserve = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
        reserve.bind((source, 0))
        sport = reserve.getsockname()[1]
        rx = stack.enter_context(
            socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ether))
        )
        program = reply_filter6 if family == socket.AF_INET6 else reply_filter
        _attach(rx, program(dst, vport, src, sport))
        rx.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while rx.recv(65535):  # what came before the filter was attached
                pass
        if mac is not None:
            tx = stack.enter_context(
                socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ether))
            )
            where: tuple[object, ...] = (socket.if_indextoname(ifindex), ether, 0, 0, mac)
        else:  # the outer header the real server's family, the inner the VIP's
            inner = IPPROTO_IPV6 if family == socket.AF_INET6 else IPPROTO_IPIP
            tx = stack.enter_context(socket.socket(_family(rip), socket.SOCK_RAW, inner))
            where = (rip, 0)
        seq = random.getrandbits(32)
        tx.sendto(tcp_packet(src, dst, sport, vport, seq, 0, TH_SYN), where)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, f"no answer from {rip} on the VIP {vip}:{vport}"
            ready, _, _ = select.select([rx], [], [], left)
            if not ready:
                continue
            with contextlib.suppress(BlockingIOError):
                packet = rx.recv(65535)
                outcome = _judge(packet, seq)
                if outcome is None:
                    continue
                if outcome[0]:  # abort the half-open connection
                    ack = seq + 1
                    rst = tcp_packet(src, dst, sport, vport, ack & 0xFFFFFFFF, 0, TH_RST)
                    with contextlib.suppress(OSError):
                        tx.sendto(rst, where)
                return outcome


def _judge(packet: bytes, seq: int) -> Outcome | None:
    ihl = 40 if packet[0] >> 4 == 6 else (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 20:
        return None
    ack, flags = struct.unpack_from("!I", packet, ihl + 8)[0], packet[ihl + 13]
    if ack != (seq + 1) & 0xFFFFFFFF:
        return None
    if flags & (TH_SYN | TH_ACK) == TH_SYN | TH_ACK:
        return True, ""
    if flags & TH_RST:
        return False, "refused on the VIP (RST)"
    return None
