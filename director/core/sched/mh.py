"""Maglev hashing scheduling, mirroring ``net/netfilter/ipvs/ip_vs_mh.c``.

A lookup table of IP_VS_MH_TAB_SIZE = primes[CONFIG_IP_VS_MH_TAB_INDEX - 8] = 4093 slots
(the default index 12) maps a hash of the client's address (and source port with
``mh-port``) to a real server, built as in the Maglev paper (NSDI '16, section 3.4):

* ``ip_vs_mh_hashkey(addr, port, key, offset)`` is ``hsiphash`` of the 32-bit value
  ``offset + port + addr`` (address in host order, IPv6 folded by XOR of its words),
  with the kernel's fixed keys: hash1 = {2654435761, 2654435761} and
  hash2 = {2654446892, 2654446892}.  On 64-bit kernels hsiphash *is* SipHash-1-3 over
  the 4 bytes of the value in memory (little endian), truncated to 32 bits, with the
  two key words as 64-bit integers; that is what runs here (a 32-bit kernel would run
  HalfSipHash-1-3 and build another table).
* Each real server gets ``offset = hashkey(addr, port, hash1) % 4093`` and
  ``skip = hashkey(addr, port, hash2) % 4092 + 1``; its preference list is offset,
  offset + skip, ... (mod 4093).
* Weights: ``last_weight`` (the latest non-zero weight a server had; a server added
  with weight 0 has 0) is divided by the gcd of the positive last weights, then shifted
  right by ``fls(max / gcd) - 6`` when that is positive, so no server takes more than
  64-odd turns per round; a non-zero weight that shifts to 0 still gets 1 turn.
* ``ip_vs_mh_populate`` goes round the servers newest first, each taking ``turns``
  free slots in a row from its preference list, until all 4093 slots are full.

Quiescing a server (weight 0) keeps its last weight, so the table does not change and
its slots answer "unavailable".  Scheduling reads ``slot = hashkey(client, port, hash1)
% 4093``; an unavailable server there (weight <= 0 or IP_VS_DEST_F_OVERLOAD) gives
None, or with ``mh-fallback`` the first available server among the slots
``hashkey(client, port, hash1, (slot + i) % 4093) % 4093`` for i = 0..4092, an empty
slot ending the search.  The table is rebuilt on add_dest, del_dest and upd_dest.
"""

from __future__ import annotations

from math import gcd
from typing import TYPE_CHECKING

from director.core.sched import Scheduler, register
from director.core.sched.sh import fold_addr, hashed_pick

if TYPE_CHECKING:
    from director.core.packet import Packet
    from director.core.service import Dest, Service

PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
TAB_INDEX = 12  # CONFIG_IP_VS_MH_TAB_INDEX
TAB_BITS = TAB_INDEX // 2  # IP_VS_MH_TAB_BITS: how many bits of weight / gcd are kept
TAB_SIZE = PRIMES[TAB_INDEX - 8]  # 4093

# generate_hash_secret: hsiphash_key_t is two unsigned longs.
HASH1 = (2654435761, 2654435761)
HASH2 = (2654446892, 2654446892)

_M64 = (1 << 64) - 1


def _rotl(word: int, shift: int) -> int:
    return ((word << shift) | (word >> (64 - shift))) & _M64


def siphash(key: tuple[int, int], data: bytes, c_rounds: int = 2, d_rounds: int = 4) -> int:
    """SipHash-c-d (Aumasson and Bernstein) of ``data`` under the 64-bit key words, as
    lib/siphash.c lays them out (v0 and v2 take key[0], v1 and v3 key[1])."""
    k0, k1 = key
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1

    def rounds(count: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(count):
            v0 = (v0 + v1) & _M64
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _M64
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _M64
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _M64
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    whole = len(data) - len(data) % 8
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        rounds(c_rounds)
        v0 ^= m
    b = ((len(data) & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= b
    rounds(c_rounds)
    v0 ^= b
    v2 ^= 0xFF
    rounds(d_rounds)
    return v0 ^ v1 ^ v2 ^ v3


def hsiphash_u32(value: int, key: tuple[int, int]) -> int:
    """hsiphash(&v, sizeof(u32), key) on a 64-bit little-endian kernel."""
    return siphash(key, value.to_bytes(4, "little"), 1, 3) & 0xFFFFFFFF


def mh_hashkey(addr: bytes, port: int, key: tuple[int, int], offset: int = 0) -> int:
    """ip_vs_mh_hashkey: the sum is an unsigned int, so it wraps at 2**32."""
    return hsiphash_u32((offset + port + fold_addr(addr)) & 0xFFFFFFFF, key)


def _slot(addr: bytes, port: int, offset: int) -> int:
    """The lookup slot of a client at ``offset`` (ip_vs_mh_get / _get_fallback)."""
    return mh_hashkey(addr, port, HASH1, offset) % TAB_SIZE


def turns(last_weights: list[int]) -> list[int]:
    """How many slots each server takes per round (ip_vs_mh_gcd_weight,
    ip_vs_mh_shift_weight and the turns of ip_vs_mh_permutate); all 0 when no
    server has a positive last weight (gcd < 1: the table is emptied)."""
    g = 0
    for weight in last_weights:
        if weight > 0:
            g = gcd(weight, g)
    if g < 1:
        return [0] * len(last_weights)
    shift = max((max(last_weights) // g).bit_length() - TAB_BITS, 0)
    return [((w // g) >> shift) or (1 if w != 0 else 0) for w in last_weights]


def populate(dests: list[Dest], last_weights: list[int]) -> list[Dest | None]:
    """ip_vs_mh_permutate + ip_vs_mh_populate: the lookup table for servers in list
    order (newest first) and their last weights."""
    counts = turns(last_weights)
    if not any(counts):
        return [None] * TAB_SIZE
    perm = [mh_hashkey(d.addr, d.port, HASH1) % TAB_SIZE for d in dests]
    skip = [mh_hashkey(d.addr, d.port, HASH2) % (TAB_SIZE - 1) + 1 for d in dests]
    table: list[Dest | None] = [None] * TAB_SIZE
    filled = 0
    while True:
        for i, dest in enumerate(dests):
            for _ in range(counts[i]):
                slot = perm[i]
                while table[slot] is not None:
                    slot += skip[i]
                    if slot >= TAB_SIZE:
                        slot -= TAB_SIZE
                perm[i] = slot
                table[slot] = dest
                filled += 1
                if filled == TAB_SIZE:
                    return table


@register
class MaglevHashing(Scheduler):
    name = "mh"

    def __init__(self) -> None:
        self._lookup: list[Dest | None] = [None] * TAB_SIZE
        # (server, weight seen, last_weight), in list order.
        self._seen: list[tuple[Dest, int, int]] = []

    @property
    def lookup(self) -> list[Dest | None]:
        """The 4093-slot table, for tests and ``dirctl which``."""
        return self._lookup

    def update(self, svc: Service) -> None:
        if [(d, w) for d, w, _ in self._seen] == [(d, d.weight) for d in svc.dests]:
            return
        # __ip_vs_update_dest: last_weight follows every add, and every edit to a
        # non-zero weight.  The Dest objects in _seen are alive, so ids are unique.
        known = {id(d): lw for d, _, lw in self._seen}
        seen = []
        for dest in svc.dests:
            last = known.get(id(dest))
            if last is None or dest.weight != 0:
                last = dest.weight
            seen.append((dest, dest.weight, last))
        if [(d, lw) for d, _, lw in seen] != [(d, lw) for d, _, lw in self._seen]:
            self._lookup = populate(svc.dests, [lw for _, _, lw in seen])
        self._seen = seen

    def schedule(self, svc: Service, pkt: Packet, now: float = 0.0) -> Dest | None:
        self.update(svc)  # a no-op unless servers changed without update()
        return hashed_pick(svc, pkt, self._lookup, self.name, _slot)
