"""Benchmark: the per-packet cost of the pure core, in-process.

A NAT TCP service (wlc over one real server) in a real ``Director``: the CPU time
(``time.thread_time``, so that other load on the machine does not count) of a SYN of
a new connection, a client segment of an established one (ACK with 100 bytes) and
its reply, each the best of 7 runs of 5,000 packets, through the fused path and
through the general one (``Director.fused`` off).  A program that prints figures,
never a test.  Run: ``.venv/bin/python bench/core.py``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import dpkt

from director.core.engine import Director
from director.model.config import Config, DestConf, ServiceConf

VIP, RS, CLIENT = "203.0.113.5", "198.18.0.2", "203.0.113.10"
PACKETS, RUNS = 5000, 7


def tcp(src: str, dst: str, sport: int, dport: int, flags: int, data: bytes = b"") -> bytes:
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, data=data)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, data=seg)
    return bytes(ip)


def best(hook: Callable[[bytearray, float], object], batch: Callable[[], list[bytearray]]) -> float:
    """The least CPU time per packet over RUNS runs, in microseconds."""
    times = []
    for _ in range(RUNS):
        packets = batch()
        start = time.thread_time()
        for packet in packets:
            hook(packet, 1.0)
        times.append((time.thread_time() - start) / len(packets) * 1e6)
    return min(times)


def measure(fused: bool) -> tuple[float, float, float]:
    d = Director()
    d.fused = fused
    d.configure(
        Config(services=(ServiceConf("tcp", VIP, 80, "wlc", dests=(DestConf(RS, 80, "masq"),)),))
    )
    ports = iter(range(1024, 65536))
    syn = best(
        d.hook_in,
        lambda: [bytearray(tcp(CLIENT, VIP, next(ports), 80, dpkt.tcp.TH_SYN))
                 for _ in range(PACKETS)],
    )  # fmt: skip
    request = tcp(CLIENT, VIP, 1024, 80, dpkt.tcp.TH_ACK, b"x" * 100)
    d.hook_in(bytearray(request), 1.0)  # SYN_RECV to ESTABLISHED
    established = best(d.hook_in, lambda: [bytearray(request) for _ in range(PACKETS)])
    reply = tcp(RS, CLIENT, 80, 1024, dpkt.tcp.TH_ACK, b"y" * 100)
    out = best(d.hook_out, lambda: [bytearray(reply) for _ in range(PACKETS)])
    return syn, established, out


def main() -> None:
    print(f"{'path':<8} {'SYN':>8} {'in':>8} {'reply':>8}   (us of CPU per packet)")
    for fused in (False, True):
        syn, established, out = measure(fused)
        print(f"{'fused' if fused else 'general':<8} {syn:8.2f} {established:8.2f} {out:8.2f}")


if __name__ == "__main__":
    main()
