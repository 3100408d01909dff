"""Which worker owns a client: the shards of ``directord --workers N``.

IPVS runs on every CPU over one shared connection table.  A userspace director has one
table per worker process instead, so every packet of a connection must reach the same
worker, both ways.  The shards are cut by a few bits of the client's address, which a
request carries as its source and a NAT reply as its destination: iptables matches them
with a non-contiguous mask (``-s 0.0.0.1/0.0.0.1`` on requests, ``-d`` on replies), and
an ICMP error by the address it quotes (the u32 match).  NFQUEUE's ``--queue-balance``
cannot do it: it hashes (client, VIP) one way and (real server, client) the other.

The bits are the lowest ones inside the persistence netmask (``-M``) of every
persistent service, so a client network that persistence keeps on one real server is
kept on one worker, which holds its template.  Without persistence they are the
address's lowest bits, where clients differ most.  Each family has its own bits: the
IPv4 ones inside every IPv4 service's dotted netmask, the IPv6 ones inside every IPv6
service's prefix (ipvsadm's ``-M 64``: ip_vs_sched_persist masks an IPv6 client with
ipv6_addr_prefix), so with ``-M 64`` they are the lowest bits of the /64 prefix and
one client network is one template on one worker.  ip6tables takes the non-contiguous
masks in address form as iptables does (``-s ::1/::1``).  Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from director.model.config import Config

MAX_WORKERS = 16  # NFQUEUE pairs one daemon takes: 2 ** 4 shards, 4 address bits
ALL_BITS = 0xFFFFFFFF
ALL_BITS6 = (1 << 128) - 1


def shard_bits_needed(workers: int) -> int:
    """Address bits to tell ``workers`` shards apart (2 ** bits >= workers)."""
    return max(workers - 1, 0).bit_length()


def prefix_mask6(plen: int) -> int:
    """ipv6_addr_prefix's mask: the first ``plen`` of 128 bits, as an integer."""
    return ALL_BITS6 >> (128 - plen) << (128 - plen)


def persistence_mask(config: Config) -> int:
    """The address bits every persistent IPv4 service keeps together: the AND of their
    netmasks (all 32 bits when no service is persistent)."""
    mask = ALL_BITS
    for svc in config.services:
        if svc.persistent is not None and "." in svc.netmask:
            mask &= _ipv4(svc.netmask)
    return mask


def persistence_mask6(config: Config) -> int:
    """The IPv6 address bits every persistent IPv6 service keeps together: the AND of
    their prefixes (a prefix length, ``-M 64``; all 128 bits when none is persistent)."""
    mask = ALL_BITS6
    for svc in config.services:
        if svc.persistent is not None and svc.netmask.isdigit():
            mask &= prefix_mask6(int(svc.netmask))
    return mask


def lowest_bits(mask: int, count: int) -> tuple[int, ...]:
    """The positions (0: the address's last bit) of the ``count`` lowest bits set in
    ``mask``, or of all of them when it has fewer."""
    bits = [bit for bit in range(mask.bit_length()) if mask >> bit & 1]
    return tuple(bits[:count])


def _value(addr: int, bits: tuple[int, ...]) -> int:
    return sum((addr >> bit & 1) << i for i, bit in enumerate(bits))


def _patterns(bits: tuple[int, ...], workers: int) -> Iterable[tuple[int, int, int]]:
    mask = sum(1 << bit for bit in bits)
    for value in range(1 << len(bits)):
        addr = sum((value >> i & 1) << bit for i, bit in enumerate(bits))
        yield addr, mask, value % workers


@dataclass(frozen=True, slots=True)
class Shards:
    """``workers`` workers over the ``2 ** len(bits)`` values of the IPv4 client address
    bits ``bits`` (and of the IPv6 ones ``bits6``); value ``v`` belongs to worker
    ``v % workers``."""

    workers: int = 1
    bits: tuple[int, ...] = ()
    bits6: tuple[int, ...] = ()

    @classmethod
    def for_config(cls, workers: int, config: Config) -> Shards:
        needed = shard_bits_needed(workers)
        return cls(
            workers,
            lowest_bits(persistence_mask(config), needed),
            lowest_bits(persistence_mask6(config), needed),
        )

    @property
    def mask(self) -> int:
        """The IPv4 bits as an address mask (an integer)."""
        return sum(1 << bit for bit in self.bits)

    @property
    def mask6(self) -> int:
        """The IPv6 bits as an address mask (a 128-bit integer)."""
        return sum(1 << bit for bit in self.bits6)

    def value(self, addr: int) -> int:
        """The shard value of an IPv4 address given as an integer."""
        return _value(addr, self.bits)

    def value6(self, addr: int) -> int:
        """The shard value of an IPv6 address given as an integer."""
        return _value(addr, self.bits6)

    def owner(self, addr: bytes) -> int:
        """The worker of a client address (packed, 4 or 16 bytes)."""
        if self.workers == 1:
            return 0
        number = int.from_bytes(addr, "big")
        value = self.value(number) if len(addr) == 4 else self.value6(number)
        return value % self.workers

    def patterns(self) -> Iterable[tuple[int, int, int]]:
        """(address, mask, worker) per IPv4 shard value, for the hook rules: a client
        whose address ANDed with ``mask`` equals ``address`` belongs to ``worker``."""
        return _patterns(self.bits, self.workers)

    def patterns6(self) -> Iterable[tuple[int, int, int]]:
        """``patterns`` for IPv6 clients: 128-bit address and mask integers."""
        return _patterns(self.bits6, self.workers)

    def where6(self) -> list[tuple[str, int]]:
        """The ip6tables ``-s``/``-d`` text (``ADDR/MASK``, both in address form) and the
        worker of each IPv6 shard value; empty with one shard (no bits to match)."""
        return [(f"{hex6(addr)}/{hex6(mask)}", worker)
                for addr, mask, worker in self.patterns6() if mask]  # fmt: skip

    def covers(self, config: Config) -> bool:
        """Whether every persistent service's netmask holds all the shard bits."""
        return (
            self.mask & ~persistence_mask(config) == 0
            and self.mask6 & ~persistence_mask6(config) == 0
        )


def _ipv4(text: str) -> int:
    return int.from_bytes(bytes(int(part) for part in text.split(".")), "big")


def dotted(value: int) -> str:
    """An IPv4 address or mask given as an integer, as iptables takes it."""
    return ".".join(str(value >> shift & 0xFF) for shift in (24, 16, 8, 0))


def hex6(value: int) -> str:
    """An IPv6 address or mask given as an integer, as ip6tables takes it (RFC 5952)."""
    return str(ipaddress.IPv6Address(value))
