"""Packet builders for the core tests, made with dpkt (the project's packet model).

dpkt computes every checksum itself when a packet is serialised, so packets built
here are an independent oracle for the in-place rewrites.
"""

from __future__ import annotations

import socket

import dpkt

CLIENT = "203.0.113.10"
VIP = "203.0.113.5"
RS1 = "198.18.0.2"
RS2 = "198.18.0.3"


def tcp(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    flags: int = dpkt.tcp.TH_ACK,
    data: bytes = b"",
    opts: bytes = b"",
    ttl: int = 61,
) -> bytearray:
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=2000, data=data)
    ip = dpkt.ip.IP(
        src=socket.inet_aton(src),
        dst=socket.inet_aton(dst),
        p=dpkt.ip.IP_PROTO_TCP,
        ttl=ttl,
        id=4242,
        opts=opts,
        data=seg,
    )
    if opts:
        ip.hl = 5 + len(opts) // 4
    return bytearray(bytes(ip))


def udp(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    data: bytes = b"",
    csum: bool = True,
    ttl: int = 61,
) -> bytearray:
    dgram = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
    ip = dpkt.ip.IP(
        src=socket.inet_aton(src),
        dst=socket.inet_aton(dst),
        p=dpkt.ip.IP_PROTO_UDP,
        ttl=ttl,
        id=4242,
        data=dgram,
    )
    raw = bytearray(bytes(ip))
    if not csum:
        raw[26:28] = b"\x00\x00"
    return raw


SYN = dpkt.tcp.TH_SYN
ACK = dpkt.tcp.TH_ACK
FIN = dpkt.tcp.TH_FIN
RST = dpkt.tcp.TH_RST
