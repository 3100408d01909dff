"""Hand-built IPv6 packets for the IPv6 netns tests (stdlib only)."""

from __future__ import annotations

import socket
import struct


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp6(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    """An IPv6 UDP datagram, its checksum over the pseudo-header (RFC 8200 §8.1; a zero
    result is sent as 0xFFFF, RFC 768)."""
    s, t = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    length = 8 + len(data)
    udp = struct.pack("!HHHH", sport, dport, length, 0) + data
    csum = checksum(s + t + struct.pack("!IxxxB", length, 17) + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    return struct.pack("!IHBB", 6 << 28, length, 17, 64) + s + t + udp


def udp4(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    """An IPv4 UDP datagram with both checksums."""
    s, t = socket.inet_aton(src), socket.inet_aton(dst)
    length = 8 + len(data)
    udp = struct.pack("!HHHH", sport, dport, length, 0) + data
    csum = checksum(s + t + struct.pack("!xBH", 17, length) + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 1, 0x4000, 64, 17, 0, s, t)
    head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
    return head + udp
