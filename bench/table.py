"""Benchmark: the connection table at scale, in-process on the pure core.

Fills the table of a real ``Director`` (director.core.engine) with a NAT service, the
seed's port 80 service (wlc over 198.18.0.2:80 and 198.18.0.3:8000), by feeding
client SYNs to ``Director.hook_in`` as the daemon's worker does, up to each size of
``--sizes`` (by default 1, 10k, 100k and 1,000,000 entries), and prints at each size

* bytes per entry: the memory Python holds for the director after the fill less
  before it (tracemalloc, in a first pass of fills) over the entries, and the process's
  resident size grown over the entries (/proc/self/statm, in the timed pass; pages,
  so coarse at small sizes);
* the fill's cost per SYN (wall time of the fill from the size before, over its
  SYNs: everything included, the dict's growth and the garbage collector's passes
  over a table of a million objects);
* the per-packet cost, ``time.perf_counter`` over ``--packets`` packets in blocks of
  100 (median of the blocks, and the mean): a SYN of a new connection (hook_in; each
  block's entries are removed after it, untimed, so the table keeps its size), a
  client packet of an established connection (hook_in, ACK with data) and a reply of
  one (hook_out), on connections picked at random over the whole table and brought
  to ESTABLISHED beforehand (untimed).  The mean includes what the median leaves out:
  the garbage collector's passes and, on a loaded machine, time the process waited
  for a CPU.

Issue 11's goals: at most 256 bytes per entry (the kernel's ``struct ip_vs_conn`` is
some 128), and a per-packet cost flat from 1 to 1,000,000 entries; the report prints
both against them.  A program that prints figures, never a test; nothing is sent
anywhere (SPEC §3 addresses in the packets all the same).  The garbage collector runs
as in the daemon.  The fill's SYNs are one packet built with dpkt whose client address
and port are patched in place, so their checksums are stale: the core does not check
them and its incremental rewrite costs the same; the timed packets are whole dpkt
packets.  Run: ``make bench-table`` or ``.venv/bin/python bench/table.py``; about two
minutes of CPU and 1.5 GiB of memory with a million entries.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import socket
import statistics
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dpkt

from director.core.engine import Director
from director.core.service import IPPROTO_TCP
from director.core.xmit import SEND
from director.model.config import Config, DestConf, ServiceConf

VIP = "203.0.113.5"
TARGETS = (("198.18.0.2", 80), ("198.18.0.3", 8000))  # the seed's port 80 service
CONFIG = Config(
    services=(
        ServiceConf(
            "tcp",
            VIP,
            80,
            scheduler="wlc",
            dests=tuple(DestConf(addr, port, "masq") for addr, port in TARGETS),
        ),
    )
)
SIZES = (1, 10_000, 100_000, 1_000_000)
MAX_SIZE = 4_000_000
BLOCK = 100  # packets per timed block
PORTS = 64_000  # client ports per client address (1024 upwards)
FIRST_HOST = 16  # clients are 203.0.113.16 upwards (to .81 at most)
NOW = 1000.0  # the core's clock, fixed: nothing expires meanwhile
BYTES_GOAL = 256
PAGE = os.sysconf("SC_PAGE_SIZE")


def client(i: int) -> tuple[bytes, int]:
    """The ``i``-th client tuple: (address, port), all distinct, in 203.0.113.0/24."""
    host, port = divmod(i, PORTS)
    return bytes((203, 0, 113, FIRST_HOST + host)), 1024 + port


def tcp(src: bytes, dst: bytes, sport: int, dport: int, flags: int, data: bytes = b"") -> bytes:
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=2000, data=data)
    ip = dpkt.ip.IP(src=src, dst=dst, p=dpkt.ip.IP_PROTO_TCP, ttl=61, id=4242, data=seg)
    return bytes(ip)


VIP_BYTES = socket.inet_aton(VIP)
SYN_TEMPLATE = tcp(bytes(4), VIP_BYTES, 0, 80, dpkt.tcp.TH_SYN)
_PORT = struct.Struct("!H")


def syn(i: int) -> bytearray:
    """The fill's SYN of client ``i``: the template with address and port patched."""
    addr, port = client(i)
    buf = bytearray(SYN_TEMPLATE)
    buf[12:16] = addr
    _PORT.pack_into(buf, 20, port)
    return buf


WARM_UP = MAX_SIZE + 200_000  # a client of its own, beyond every fill and timed SYN


def fresh() -> Director:
    """A configured director that has made and removed one connection already, so
    that what a first packet allocates once (counters, caches) is no entry's cost."""
    director = Director()
    director.configure(CONFIG)
    fill(director, WARM_UP, WARM_UP + 1)
    addr, port = client(WARM_UP)
    tab = director.conns.in_tab
    director.conns.remove(tab[(IPPROTO_TCP, addr, port, VIP_BYTES, 80)])
    return director


def fill(director: Director, start: int, stop: int) -> None:
    """Clients ``start`` to ``stop - 1`` open a connection each (one SYN)."""
    hook_in = director.hook_in
    for i in range(start, stop):
        if hook_in(syn(i), NOW)[0] != SEND:
            raise RuntimeError(f"SYN {i} was not sent on: {director.drops or director.passes}")


@dataclass
class Row:
    size: int
    entries: int = 0
    traced_bytes: float | None = None  # per entry
    rss_bytes: float | None = None  # per entry
    fill_us: float | None = None  # per SYN of the fill that grew the table to this size
    syn_us: tuple[float, float] | None = None  # (median of blocks, mean)
    est_in_us: tuple[float, float] | None = None
    est_out_us: tuple[float, float] | None = None


def timed(packets: list[bytearray], hook: Callable[[bytearray, float], object]) -> list[float]:
    """µs per packet of each block of BLOCK packets."""
    blocks: list[float] = []
    clock = time.perf_counter
    for first in range(0, len(packets), BLOCK):
        block = packets[first : first + BLOCK]
        start = clock()
        for buf in block:
            hook(buf, NOW)
        blocks.append((clock() - start) * 1e6 / len(block))
    return blocks


def summary(blocks: list[float]) -> tuple[float, float]:
    return statistics.median(blocks), statistics.fmean(blocks)


def time_syns(director: Director, size: int, count: int) -> tuple[float, float]:
    """SYNs of clients beyond the table's, BLOCK at a time, each block's entries
    removed after it (untimed)."""
    blocks: list[float] = []
    tab = director.conns.in_tab
    for first in range(size, size + count, BLOCK):
        ids = range(first, min(first + BLOCK, size + count))
        packets = [syn(i) for i in ids]
        blocks += timed(packets, director.hook_in)
        for i in ids:
            addr, port = client(i)
            director.conns.remove(tab[(IPPROTO_TCP, addr, port, VIP_BYTES, 80)])
    return summary(blocks)


def time_established(
    director: Director, size: int, count: int, rng: random.Random
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Client packets and replies of ``count`` connections picked over the table,
    each made ESTABLISHED first by an ACK (untimed)."""
    tab = director.conns.in_tab
    picks = [rng.randrange(size) for _ in range(count)]
    ins: list[bytearray] = []
    outs: list[bytearray] = []
    for i in picks:
        addr, port = client(i)
        conn = tab[(IPPROTO_TCP, addr, port, VIP_BYTES, 80)]
        director.hook_in(bytearray(tcp(addr, VIP_BYTES, port, 80, dpkt.tcp.TH_ACK)), NOW)
        ins.append(bytearray(tcp(addr, VIP_BYTES, port, 80, dpkt.tcp.TH_ACK, b"GET / " * 10)))
        outs.append(bytearray(tcp(conn.daddr, addr, conn.dport, port, dpkt.tcp.TH_ACK, b"x" * 100)))
    return summary(timed(ins, director.hook_in)), summary(timed(outs, director.hook_out))


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


def memory_pass(sizes: list[int], rows: dict[int, Row]) -> None:
    """Fill one director size by size under tracemalloc: bytes per entry at each."""
    director = fresh()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        filled = 0
        for size in sizes:
            fill(director, filled, size)
            filled = size
            rows[size].traced_bytes = (tracemalloc.get_traced_memory()[0] - base) / size
    finally:
        tracemalloc.stop()
    del director
    gc.collect()


def time_pass(sizes: list[int], rows: dict[int, Row], count: int, seed: int) -> None:
    """Fill one director size by size, untraced: RSS per entry and packet costs."""
    rng = random.Random(seed)
    director = fresh()
    gc.collect()
    base = rss()
    filled = 0
    for size in sizes:
        start = time.perf_counter()
        fill(director, filled, size)
        row = rows[size]
        row.fill_us = (time.perf_counter() - start) * 1e6 / (size - filled)
        filled = size
        row.rss_bytes = (rss() - base) / size
        row.syn_us = time_syns(director, size, count)
        row.est_in_us, row.est_out_us = time_established(director, size, count, rng)
        row.entries = len(director.conns)
        print(f"measured: {size:,} entries", file=sys.stderr, flush=True)


def _us(value: tuple[float, float] | None) -> str:
    return "-" if value is None else f"{value[0]:.1f} / {value[1]:.1f}"


def _bytes(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def report(rows: list[Row], count: int) -> None:
    print()
    print(
        f"connection table of director.core (one NAT service, wlc over 2 servers): "
        f"per-packet µs, median / mean of blocks of {BLOCK}, {count} packets each"
    )
    print(
        f"{'entries':>10} {'B/entry':>8} {'RSS B/entry':>12} {'fill µs':>8} {'SYN µs':>13} "
        f"{'established µs':>15} {'reply µs':>13}"
    )
    for r in rows:
        fill_us = "-" if r.fill_us is None else f"{r.fill_us:.1f}"
        print(
            f"{r.entries:>10,} {_bytes(r.traced_bytes):>8} {_bytes(r.rss_bytes):>12} "
            f"{fill_us:>8} {_us(r.syn_us):>13} {_us(r.est_in_us):>15} {_us(r.est_out_us):>13}"
        )
    print("B/entry: tracemalloc, the director's Python memory; RSS: the process's pages;")
    print("fill: wall time per SYN of the fill up to that size, everything included")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"peak resident size of this process: {peak / 1024:,.0f} MiB")
    first, last = rows[0], rows[-1]
    print()
    if last.traced_bytes is not None:
        verdict = "meets" if last.traced_bytes <= BYTES_GOAL else "misses"
        print(
            f"bytes per entry at {last.entries:,} entries: {last.traced_bytes:,.0f} "
            f"({verdict} issue 11's goal of at most {BYTES_GOAL})"
        )
    if len(rows) > 1:
        for what, a, b in (
            ("SYN", first.syn_us, last.syn_us),
            ("established packet", first.est_in_us, last.est_in_us),
            ("reply", first.est_out_us, last.est_out_us),
        ):
            if a and b:
                print(
                    f"{what} at {last.entries:,} entries vs {first.entries:,}: "
                    f"{b[0] / a[0]:.2f}x (medians; issue 11's goal: flat, 1.00x)"
                )


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated entry counts") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"sizes from 1 to {MAX_SIZE:,}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="director connection table at scale")
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=list(SIZES),
        metavar="N[,N...]",
        help="table sizes in entries (default 1,10000,100000,1000000)",
    )
    parser.add_argument(
        "--packets", type=int, default=2000, help="timed packets of each kind per size"
    )
    parser.add_argument(
        "--no-tracemalloc", action="store_true", help="skip the memory pass (RSS only)"
    )
    parser.add_argument("--seed", type=int, default=11, help="for the connections picked")
    args = parser.parse_args(argv)
    count = max(BLOCK, min(args.packets, 100_000))  # bounded
    rows = {size: Row(size) for size in args.sizes}
    if not args.no_tracemalloc:
        memory_pass(args.sizes, rows)
    time_pass(args.sizes, rows, count, args.seed)
    report(list(rows.values()), count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
