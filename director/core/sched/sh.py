"""Source hashing scheduling, mirroring ``net/netfilter/ipvs/ip_vs_sh.c``.

A table of IP_VS_SH_TAB_SIZE = 256 buckets maps a hash of the client's address (and
source port with ``sh-port``) to a real server.  ``ip_vs_sh_hashkey`` is
``(offset + hash_32(port + addr, 8)) & 255`` with port and address in host order (an
IPv6 address folded to 32 bits by XOR of its four words) and their sum taken modulo
2^32.  ``hash_32`` (include/linux/hash.h) multiplies by GOLDEN_RATIO_32 = 0x61C88647
modulo 2^32 and keeps the *high* bits, so every bit of the address moves the bucket.

``ip_vs_sh_reassign`` fills the buckets in order from the list of real servers (newest
first), giving each server ``weight`` consecutive buckets (at least one, so a weight 0
server still holds buckets) before moving to the next, and wrapping to the head until
all 256 are filled.  The table is rebuilt whenever a server is added, removed or
edited (add_dest, del_dest and upd_dest all reassign).

Scheduling looks at one bucket: a server that is quiesced (weight <= 0) or overloaded
(IP_VS_DEST_F_OVERLOAD) gives None, the kernel's "no destination available".  With
``sh-fallback`` the kernel instead probes ``hashkey(addr, port, (ihash + i) % 256)``
for i = 0, 1, ... 255 (ihash being the first bucket) and takes the first available
server met; an empty bucket stops the search.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from director.core.sched import Scheduler, register, usable

if TYPE_CHECKING:
    from director.core.packet import Packet
    from director.core.service import Dest, Service

TAB_BITS = 8  # CONFIG_IP_VS_SH_TAB_BITS
TAB_SIZE = 1 << TAB_BITS
TAB_MASK = TAB_SIZE - 1
GOLDEN_RATIO_32 = 0x61C88647  # include/linux/hash.h
PORTED_PROTOCOLS = frozenset({6, 17, 132})  # TCP, UDP, SCTP: ip_vs_sh_get_port reads ports


def fold_addr(addr: bytes) -> int:
    """``ntohl(addr_fold)``: an IPv4 address in host order, or the XOR of an IPv6
    address's four 32-bit words (XOR commutes with the byte swap)."""
    value = int.from_bytes(addr[:4], "big")
    if len(addr) == 16:
        for i in (4, 8, 12):
            value ^= int.from_bytes(addr[i : i + 4], "big")
    return value


def hash_32(value: int, bits: int) -> int:
    """hash_32 (include/linux/hash.h): the high ``bits`` of ``value * GOLDEN_RATIO_32``
    modulo 2^32."""
    return ((value * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> (32 - bits)


def sh_hashkey(addr: bytes, port: int = 0, offset: int = 0) -> int:
    """ip_vs_sh_hashkey; ip_vs_dh_hashkey is the same without port and offset."""
    return (offset + hash_32((port + fold_addr(addr)) & 0xFFFFFFFF, TAB_BITS)) & TAB_MASK


def fill_buckets(dests: list[Dest], weighted: bool) -> list[Dest | None]:
    """ip_vs_sh_reassign (weighted) and ip_vs_dh_reassign (one bucket per server in
    turn): walk the list round and round, newest first, until every bucket is set."""
    if not dests:
        return [None] * TAB_SIZE
    buckets: list[Dest | None] = []
    at = count = 0
    for _ in range(TAB_SIZE):
        dest = dests[at]
        buckets.append(dest)
        count += 1
        if not weighted or count >= dest.weight:
            at = (at + 1) % len(dests)
            count = 0
    return buckets


def has_flag(svc: Service, name: str, bit: int) -> bool:
    """An ipvsadm -b flag, by its scheduler's name or as the generic ``flag-N``."""
    flags = svc.conf.sched_flags
    return name in flags or f"flag-{bit}" in flags


def hashed_pick(
    svc: Service,
    pkt: Packet,
    table: Sequence[Dest | None],
    name: str,
    slot: Callable[[bytes, int, int], int],
) -> Dest | None:
    """The lookup sh and mh share (ip_vs_sh_schedule, ip_vs_mh_schedule): the client's
    slot ``slot(addr, port, 0)`` of ``table``; a usable server there is the choice.  With
    ``NAME-fallback`` the kernel's _get_fallback probes ``slot(addr, port, (ihash + i) %
    size)`` for i = 0 .. size - 1 and takes the first usable server; an empty slot ends
    the search.  ``NAME-port`` hashes the source port too (TCP, UDP, SCTP only)."""
    port = 0
    if has_flag(svc, f"{name}-port", 2) and pkt.protocol in PORTED_PROTOCOLS:
        port = pkt.sport
    ihash = slot(pkt.saddr, port, 0)
    dest = table[ihash]
    if dest is None or usable(dest):
        return dest
    if not has_flag(svc, f"{name}-fallback", 1):
        return None  # "no destination available"
    for offset in range(len(table)):
        dest = table[slot(pkt.saddr, port, (offset + ihash) % len(table))]
        if dest is None:
            break
        if usable(dest):
            return dest
    return None


@register
class SourceHashing(Scheduler):
    name = "sh"

    def __init__(self) -> None:
        self._buckets: list[Dest | None] = [None] * TAB_SIZE
        self._seen: list[tuple[Dest, int]] = []

    def update(self, svc: Service) -> None:
        seen = [(dest, dest.weight) for dest in svc.dests]
        if seen != self._seen:
            self._buckets = fill_buckets(svc.dests, weighted=True)
            self._seen = seen

    def schedule(self, svc: Service, pkt: Packet, now: float = 0.0) -> Dest | None:
        self.update(svc)  # a no-op unless servers changed without update()
        return hashed_pick(svc, pkt, self._buckets, self.name, sh_hashkey)
