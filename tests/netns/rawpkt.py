"""Hand-built IPv4 packets for the robustness tests, and the programs that send or
catch them inside a lab namespace (``python rawpkt.py COMMAND ...``, stdlib only).

Commands (each prints one JSON object on stdout):

``fuzz``
    Send a bounded number of malformed and random packets at a VIP, paced over a
    bounded time, from a source inside 203.0.113.0/24.  Most go through a raw IP
    socket (IP_HDRINCL: the kernel fills in the total length and header checksum, so
    they survive the director's ``ip_rcv`` and reach its worker); those with a broken
    IP header itself go through a packet socket to the director's MAC, and the
    director's kernel drops them before any hook.  Deterministic for a seed.
``udp-refused``
    A connected UDP socket sends one datagram to VIP:PORT and waits for
    ECONNREFUSED, while a raw ICMP socket catches the error that caused it.
``icmp-about-conn``
    Open a TCP connection to VIP:PORT and send the VIP an ICMP error about it, as a
    router on the client's side would (quoting a packet VIP:PORT -> client:cport).
``icmp-catch``
    Catch the ICMP errors that arrive for a while (in a real server's namespace).
``icmp-inject``
    Send an ICMP error crafted from the arguments (a real server's, about a client).
``udp-hold``
    A connected UDP socket sends one datagram, prints its port, and stays open until
    stdin closes (so that an ICMP error about it finds it).
"""

from __future__ import annotations

import argparse
import json
import random
import select
import socket
import struct
import sys
import time
from collections import Counter
from typing import Any

IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP = 1, 6, 17
IP_DF = 0x4000
IP_MF = 0x2000
TH_SYN, TH_RST, TH_ACK = 0x02, 0x04, 0x10
ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_TIME_EXCEEDED = 3, 4, 11
ETH_P_IP = 0x0800


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    options: bytes = b"",
    frag: int = 0,
    ident: int = 0,
    ttl: int = 64,
) -> bytes:
    """A well-formed IPv4 header (options padded to 32 bits) in front of ``payload``."""
    options += b"\x00" * (-len(options) % 4)
    ihl = 5 + len(options) // 4
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), ident, frag, ttl, proto, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    ) + options  # fmt: skip
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def _pseudo(src: str, dst: str, proto: int, segment: bytes) -> bytes:
    return struct.pack(
        "!4s4sBBH", socket.inet_aton(src), socket.inet_aton(dst), 0, proto, len(segment)
    )


def tcp(src: str, dst: str, sport: int, dport: int, flags: int, *, doff: int = 5,
        seq: int = 0, ack: int = 0, payload: bytes = b"") -> bytes:  # fmt: skip
    """A TCP segment with its checksum over the pseudo-header (options zero-filled)."""
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 65535, 0, 0)
    segment = header + b"\x00" * max(0, (doff - 5) * 4) + payload
    csum = checksum(_pseudo(src, dst, IPPROTO_TCP, segment) + segment)
    return segment[:16] + struct.pack("!H", csum) + segment[18:]


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    segment = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    csum = checksum(_pseudo(src, dst, IPPROTO_UDP, segment) + segment) or 0xFFFF
    return segment[:6] + struct.pack("!H", csum) + segment[8:]


def icmp(kind: int, code: int, body: bytes, rest: int = 0) -> bytes:
    """An ICMP message; ``rest`` is the second word (the next-hop MTU of frag-needed)."""
    message = struct.pack("!BBHI", kind, code, 0, rest) + body
    return message[:2] + struct.pack("!H", checksum(message)) + message[4:]


# --- parsing what arrives ------------------------------------------------------------


def parse_icmp_error(packet: bytes) -> dict[str, Any] | None:
    """The fields of an ICMP error as received on a raw ICMP socket (IP header first)."""
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8 + 20 or packet[ihl] not in (3, 4, 11):
        return None
    inner = ihl + 8
    inner_ihl = (packet[inner] & 0x0F) * 4
    l4 = inner + inner_ihl
    sport, dport = struct.unpack_from("!HH", packet, l4) if len(packet) >= l4 + 4 else (0, 0)
    return {
        "src": socket.inet_ntoa(packet[12:16]),
        "dst": socket.inet_ntoa(packet[16:20]),
        "type": packet[ihl],
        "code": packet[ihl + 1],
        "mtu": struct.unpack_from("!H", packet, ihl + 6)[0],
        "checksum_ok": checksum(packet[ihl:]) == 0,
        "inner_checksum_ok": checksum(packet[inner : inner + inner_ihl]) == 0,
        "inner_proto": packet[inner + 9],
        "inner_src": socket.inet_ntoa(packet[inner + 12 : inner + 16]),
        "inner_dst": socket.inet_ntoa(packet[inner + 16 : inner + 20]),
        "inner_sport": sport,
        "inner_dport": dport,
    }


def catch_icmp(sock: socket.socket, seconds: float, want: int = 1) -> list[dict[str, Any]]:
    """ICMP errors arriving on a raw ICMP socket within ``seconds`` (``want`` at most)."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while len(found) < want:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            break
        parsed = parse_icmp_error(sock.recv(65535))
        if parsed is not None:
            found.append(parsed)
    return found


# --- the fuzzer ----------------------------------------------------------------------

# What each kind is, and what the director should make of it:
#   through the worker (a raw IP socket: the IP header is sound, what follows is not)
RAW_KINDS: dict[str, int] = {
    "tcp_truncated": 8,  # fewer than 20 bytes of TCP: dropped "truncated"
    "udp_truncated": 6,  # fewer than 8 bytes of UDP: dropped "truncated"
    "tcp_bad_doff": 6,  # data offset < 5: dropped "bad_header_length"
    "zero_port": 8,  # source or destination port 0: dropped "zero_port"
    "ip_options": 8,  # IP options (NOPs, EOL), no service's port: passed
    "random_proto": 8,  # neither TCP, UDP nor ICMP: passed "unhandled_protocol"
    "random_l4": 12,  # TCP or UDP, random bytes after the IP header
    "icmp_junk": 14,  # random ICMP, errors with short or odd quotes, echoes
    "fragments": 6,  # a UDP datagram in two fragments: reassembled by the kernel
    "lone_fragment": 4,  # one fragment of a datagram never completed
}
#   dropped by the director's kernel before any hook (a packet socket: broken IP header)
LINK_KINDS: dict[str, int] = {
    "bad_version": 3,
    "bad_ihl": 3,
    "bad_total_length": 3,
    "bad_ip_checksum": 3,
    "short_ip": 2,
}


class Fuzzer:
    def __init__(self, src: str, dst: str, avoid_ports: set[int], seed: int) -> None:
        self.src, self.dst, self.avoid = src, dst, avoid_ports
        self.rng = random.Random(seed)
        self.ident = self.rng.randrange(1, 1 << 16)

    def port(self) -> int:
        while True:
            port = self.rng.randrange(1, 65536)
            if port not in self.avoid:
                return port

    def junk(self, lo: int, hi: int) -> bytes:
        return self.rng.randbytes(self.rng.randrange(lo, hi + 1))

    def next_ident(self) -> int:
        self.ident = self.ident % 65535 + 1
        return self.ident

    def ip(self, proto: int, payload: bytes, **kw: Any) -> bytes:
        return ipv4(self.src, self.dst, proto, payload, ident=self.next_ident(), **kw)

    def raw(self, kind: str) -> list[bytes]:
        """One packet (two for ``fragments``) of a kind sent through the raw IP socket."""
        rng = self.rng
        if kind == "tcp_truncated":
            return [self.ip(IPPROTO_TCP, self.junk(0, 19))]
        if kind == "udp_truncated":
            return [self.ip(IPPROTO_UDP, self.junk(0, 7))]
        if kind == "tcp_bad_doff":
            segment = bytearray(tcp(self.src, self.dst, self.port(), self.port(), TH_ACK))
            segment[12] = rng.randrange(0, 5) << 4
            return [self.ip(IPPROTO_TCP, bytes(segment) + self.junk(0, 40))]
        if kind == "zero_port":
            sport, dport = rng.choice([(0, self.port()), (self.port(), 0), (0, 0)])
            if rng.random() < 0.5:
                return [
                    self.ip(IPPROTO_UDP, udp(self.src, self.dst, sport, dport, self.junk(0, 64)))
                ]
            return [self.ip(IPPROTO_TCP, tcp(self.src, self.dst, sport, dport, TH_SYN))]
        if kind == "ip_options":
            options = b"\x01" * rng.randrange(1, 40) + b"\x00"
            if rng.random() < 0.5:
                payload = udp(self.src, self.dst, self.port(), self.port(), self.junk(0, 64))
                return [self.ip(IPPROTO_UDP, payload, options=options[:40])]
            payload = tcp(
                self.src, self.dst, self.port(), self.port(), TH_ACK, seq=rng.getrandbits(32)
            )
            return [self.ip(IPPROTO_TCP, payload, options=options[:40])]
        if kind == "random_proto":
            proto = rng.choice([p for p in range(256) if p not in (1, 6, 17)])
            return [self.ip(proto, self.junk(0, 300))]
        if kind == "random_l4":
            proto = rng.choice((IPPROTO_TCP, IPPROTO_UDP))
            body = bytearray(self.junk(0, 300))
            if len(body) >= 4:
                struct.pack_into("!H", body, 2, self.port())  # never a service's port
            return [self.ip(proto, bytes(body))]
        if kind == "icmp_junk":
            return [self.ip(IPPROTO_ICMP, self.icmp_junk())]
        if kind == "fragments":
            datagram = udp(self.src, self.dst, self.port(), self.port(), self.junk(16, 1200))
            cut = (len(datagram) // 2) & ~7
            ident = self.next_ident()
            first = ipv4(self.src, self.dst, IPPROTO_UDP, datagram[:cut], frag=IP_MF, ident=ident)
            second = ipv4(self.src, self.dst, IPPROTO_UDP, datagram[cut:], frag=cut // 8,
                          ident=ident)  # fmt: skip
            return [first, second]
        if kind == "lone_fragment":
            frag = rng.choice([IP_MF, IP_MF | rng.randrange(1, 200), rng.randrange(1, 200)])
            return [self.ip(rng.choice((IPPROTO_TCP, IPPROTO_UDP)), self.junk(8, 64), frag=frag)]
        raise ValueError(kind)

    def icmp_junk(self) -> bytes:
        rng = self.rng
        choice = rng.randrange(6)
        if choice == 0:  # anything at all
            return self.junk(0, 120)
        if choice == 1:  # an echo request: the director's own stack answers it
            return icmp(8, 0, self.junk(0, 56), rng.getrandbits(32))
        kind = rng.choice((ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_TIME_EXCEEDED))
        if choice == 2:  # an error quoting less than an IP header
            return icmp(kind, rng.randrange(16), self.junk(0, 19))
        if choice == 3:  # quoting something that is not IPv4
            quote = bytearray(self.junk(28, 60))
            quote[0] = rng.choice((0x60, 0x00, 0x43, 0xF5))
            return icmp(kind, rng.randrange(16), bytes(quote))
        if choice == 4:  # quoting a packet of another protocol
            proto = rng.choice([p for p in range(256) if p not in (6, 17)])
            return icmp(kind, rng.randrange(16), ipv4(self.dst, self.src, proto, self.junk(8, 16)))
        # a well-formed error about a TCP/UDP conversation the director never saw
        proto = rng.choice((IPPROTO_TCP, IPPROTO_UDP))
        quoted = ipv4(self.dst, self.src, proto, struct.pack("!HH", self.port(), self.port())
                      + self.junk(4, 4))  # fmt: skip
        return icmp(kind, rng.randrange(16), quoted, rng.choice((0, 576, 1280)))

    def link(self, kind: str) -> bytes:
        """One IP packet with a broken header, for the packet socket."""
        rng = self.rng
        good = bytearray(self.ip(IPPROTO_UDP, udp(self.src, self.dst, self.port(), self.port(),
                                                  self.junk(0, 64))))  # fmt: skip
        if kind == "bad_version":
            good[0] = rng.choice((0, 5, 6, 15)) << 4 | 5
        elif kind == "bad_ihl":
            good[0] = 0x40 | rng.randrange(0, 5)
        elif kind == "bad_total_length":
            bad = rng.choice((len(good) + rng.randrange(1, 500), rng.randrange(0, 20)))
            struct.pack_into("!H", good, 2, bad)
        elif kind == "bad_ip_checksum":
            struct.pack_into("!H", good, 10, struct.unpack_from("!H", good, 10)[0] ^ 0x5A5A)
            return bytes(good)
        elif kind == "short_ip":
            return bytes(good[: rng.randrange(1, 20)])
        struct.pack_into("!H", good, 10, 0)
        struct.pack_into("!H", good, 10, checksum(bytes(good[:20])))
        return bytes(good)


def fuzz(args: argparse.Namespace) -> dict[str, Any]:
    fuzzer = Fuzzer(args.src, args.dst, set(args.avoid_port), args.seed)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    link = None
    if args.ifname and args.dst_mac:
        link = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        link.bind((args.ifname, 0))
        dst_mac = bytes.fromhex(args.dst_mac.replace(":", ""))
        src_mac = link.getsockname()[4]
    kinds = dict(RAW_KINDS)
    if link is not None:
        kinds.update(LINK_KINDS)
    names, weights = list(kinds), list(kinds.values())
    sent: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    packets = 0
    start = time.monotonic()
    interval = args.seconds / args.count
    while packets < args.count:
        kind = fuzzer.rng.choices(names, weights)[0]
        if kind in LINK_KINDS:
            assert link is not None
            frames = [dst_mac + src_mac + struct.pack("!H", ETH_P_IP) + fuzzer.link(kind)]
            out, target = link, None
        else:
            frames = fuzzer.raw(kind)
            out, target = raw, (args.dst, 0)
        for frame in frames:
            try:
                if target is None:
                    out.send(frame)
                else:
                    out.sendto(frame, target)
                sent[kind] += 1
            except OSError as err:
                errors[f"{kind}:{err.errno}"] += 1
            packets += 1
        ahead = start + packets * interval - time.monotonic()
        if ahead > 0.002:
            time.sleep(ahead)
        if time.monotonic() - start > args.seconds * 2 + 5:
            break  # never run away, whatever happens to the pacing
    return {
        "sent": dict(sent),
        "errors": dict(errors),
        "raw_sent": sum(n for k, n in sent.items() if k in RAW_KINDS),
        "link_sent": sum(n for k, n in sent.items() if k in LINK_KINDS),
        "seconds": round(time.monotonic() - start, 3),
    }


# --- ICMP probes -----------------------------------------------------------------------


def _icmp_socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_ICMP)


def udp_refused(args: argparse.Namespace) -> dict[str, Any]:
    with _icmp_socket() as catcher, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((args.dst, args.port))
        sock.settimeout(args.seconds)
        sock.send(b"anyone there?")
        try:
            sock.recv(100)
            outcome = "answered"
        except ConnectionRefusedError:
            outcome = "refused"
        except TimeoutError:
            outcome = "timeout"
        caught = catch_icmp(catcher, 5.0)  # returns at the first one
        return {"outcome": outcome, "local": sock.getsockname(), "icmp": caught}


def icmp_about_conn(args: argparse.Namespace) -> dict[str, Any]:
    """The VIP, as seen from the client, sent a packet VIP:port -> client:cport that a
    router on the way could not deliver: the router's error goes back to the VIP."""
    with socket.create_connection((args.dst, args.port), timeout=5) as conn:
        client, cport = conn.getsockname()
        quoted = ipv4(args.dst, client, IPPROTO_TCP,
                      tcp(args.dst, client, args.port, cport, TH_ACK, seq=1))  # fmt: skip
        message = icmp(ICMP_DEST_UNREACH, args.code, quoted[:28], args.mtu)
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
            raw.sendto(ipv4(args.src or client, args.dst, IPPROTO_ICMP, message), (args.dst, 0))
        time.sleep(args.hold)
        return {"client": client, "cport": cport}


def icmp_catch(args: argparse.Namespace) -> dict[str, Any]:
    with _icmp_socket() as catcher:
        print("ready", file=sys.stderr, flush=True)
        return {"icmp": catch_icmp(catcher, args.seconds, args.want)}


def icmp_inject(args: argparse.Namespace) -> dict[str, Any]:
    """An ICMP error from ``src`` to ``dst`` quoting a UDP packet qsrc:qsport -> qdst:qdport."""
    quoted = ipv4(args.qsrc, args.qdst, IPPROTO_UDP,
                  udp(args.qsrc, args.qdst, args.qsport, args.qdport, b"x" * 16))  # fmt: skip
    message = icmp(ICMP_DEST_UNREACH, args.code, quoted[:28], args.mtu)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.sendto(ipv4(args.src, args.dst, IPPROTO_ICMP, message), (args.dst, 0))
    return {"sent": True}


def udp_hold(args: argparse.Namespace) -> dict[str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((args.dst, args.port))
        sock.send(b"hello")
        print(json.dumps({"local": sock.getsockname()}), flush=True)
        select.select([sys.stdin], [], [], args.seconds)
        return {"done": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="raw packets for the netns tests")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fuzz")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--avoid-port", type=int, action="append", default=[])
    p.add_argument("--ifname", default="")
    p.add_argument("--dst-mac", default="")
    p = sub.add_parser("udp-refused")
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, default=3.0)
    p = sub.add_parser("icmp-about-conn")
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--src", default="")
    p.add_argument("--code", type=int, default=3)
    p.add_argument("--mtu", type=int, default=0)
    p.add_argument("--hold", type=float, default=1.0)
    p = sub.add_parser("icmp-catch")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--want", type=int, default=1)
    p = sub.add_parser("icmp-inject")
    for name in ("src", "dst", "qsrc", "qdst"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--qsport", type=int, required=True)
    p.add_argument("--qdport", type=int, required=True)
    p.add_argument("--code", type=int, default=4)
    p.add_argument("--mtu", type=int, default=0)
    p = sub.add_parser("udp-hold")
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    command = {
        "fuzz": fuzz,
        "udp-refused": udp_refused,
        "icmp-about-conn": icmp_about_conn,
        "icmp-catch": icmp_catch,
        "icmp-inject": icmp_inject,
        "udp-hold": udp_hold,
    }[args.command]
    print(json.dumps(command(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
