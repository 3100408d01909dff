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
address's lowest bits, where clients differ most.  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from director.model.config import Config

MAX_WORKERS = 16  # NFQUEUE pairs one daemon takes: 2 ** 4 shards, 4 address bits
ALL_BITS = 0xFFFFFFFF


def shard_bits_needed(workers: int) -> int:
    """Address bits to tell ``workers`` shards apart (2 ** bits >= workers)."""
    return max(workers - 1, 0).bit_length()


def persistence_mask(config: Config) -> int:
    """The address bits every persistent IPv4 service keeps together: the AND of their
    netmasks (all 32 bits when no service is persistent)."""
    mask = ALL_BITS
    for svc in config.services:
        if svc.persistent is not None and "." in svc.netmask:
            mask &= _ipv4(svc.netmask)
    return mask


def lowest_bits(mask: int, count: int) -> tuple[int, ...]:
    """The positions (0: the address's last bit) of the ``count`` lowest bits set in
    ``mask``, or of all of them when it has fewer."""
    bits = [bit for bit in range(32) if mask >> bit & 1]
    return tuple(bits[:count])


@dataclass(frozen=True, slots=True)
class Shards:
    """``workers`` workers over the ``2 ** len(bits)`` values of the client address bits
    ``bits``; value ``v`` belongs to worker ``v % workers``."""

    workers: int = 1
    bits: tuple[int, ...] = ()

    @classmethod
    def for_config(cls, workers: int, config: Config) -> Shards:
        return cls(workers, lowest_bits(persistence_mask(config), shard_bits_needed(workers)))

    @property
    def mask(self) -> int:
        """The bits as an address mask (an integer)."""
        return sum(1 << bit for bit in self.bits)

    def value(self, addr: int) -> int:
        """The shard value of an IPv4 address given as an integer."""
        return sum((addr >> bit & 1) << i for i, bit in enumerate(self.bits))

    def owner(self, addr: bytes) -> int:
        """The worker of a client address (packed; IPv6 clients go to worker 0)."""
        if len(addr) != 4 or self.workers == 1:
            return 0
        return self.value(int.from_bytes(addr, "big")) % self.workers

    def patterns(self) -> Iterable[tuple[int, int, int]]:
        """(address, mask, worker) per shard value, for the hook rules: a client whose
        address ANDed with ``mask`` equals ``address`` belongs to ``worker``."""
        for value in range(1 << len(self.bits)):
            addr = sum((value >> i & 1) << bit for i, bit in enumerate(self.bits))
            yield addr, self.mask, value % self.workers

    def covers(self, config: Config) -> bool:
        """Whether every persistent service's netmask holds all the shard bits."""
        return self.mask & ~persistence_mask(config) == 0


def _ipv4(text: str) -> int:
    return int.from_bytes(bytes(int(part) for part in text.split(".")), "big")


def dotted(value: int) -> str:
    """An IPv4 address or mask given as an integer, as iptables takes it."""
    return ".".join(str(value >> shift & 0xFF) for shift in (24, 16, 8, 0))
