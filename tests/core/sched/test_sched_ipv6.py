"""sh, dh, mh, lblc and lblcr on IPv6 addresses, against the kernel's formulas.

Every hashing scheduler folds an IPv6 address to 32 bits by XOR of its four words
before hashing it (net/netfilter/ipvs/ip_vs_sh.c ip_vs_sh_hashkey, ip_vs_dh.c
ip_vs_dh_hashkey, ip_vs_mh.c ip_vs_mh_hashkey, ip_vs_lblc.c ip_vs_lblc_hashkey,
ip_vs_lblcr.c ip_vs_lblcr_hashkey: ``addr_fold = addr->ip6[0]^addr->ip6[1]^
addr->ip6[2]^addr->ip6[3]``, then ``ntohl(addr_fold)``; XOR commutes with the byte
swap, so the fold of the big-endian words is the host-order value).  hash_32
(include/linux/hash.h) is ``(v * 0x61C88647 mod 2^32) >> (32 - bits)``.

Worked by hand:

* 2001:db8:1::100: 0x20010DB8 ^ 0x00010000 ^ 0x00000000 ^ 0x00000100 = 0x20000CB8;
  times 0x61C88647 mod 2^32 = 0x8E6BD708: sh bucket 0x8E = 142;
* with sh-port and source port 40000 (0x9C40): 0x20000CB8 + 0x9C40 = 0x2000A8F8
  -> 0x3260ACC8: bucket 0x32 = 50;
* 2001:db8:dffe:f248:: folds to 0x20010DB8 ^ 0xDFFEF248 = 0xFFFFFFF0; port 32 makes the
  sum 0x1_0000_0010, an unsigned int in the kernel, so 0x10 -> 0x1C886470: bucket 28;
* 2001:db8:2::2: 0x20010DB8 ^ 0x00020000 ^ 0x00000002 = 0x20030DBA -> 0xAD582A96:
  dh bucket 0xAD = 173, lblc bucket (10 bits) 0xAD582A96 >> 22 = 693.

Buckets are filled from the list newest first (ip_vs_sh_reassign): servers A, B, C
added in that order and weight 1 give bucket i to [C, B, A][i % 3]: 142 % 3 = 1 is B,
173 % 3 = 2 is A.
"""

from __future__ import annotations

import pytest

from director.core.packet import Packet
from director.core.sched import create_scheduler
from director.core.sched.lblc import LocalityBasedLeastConnection as LBLC
from director.core.sched.lblc import bucket_of
from director.core.sched.lblcr import LocalityBasedLeastConnectionReplication as LBLCR
from director.core.sched.mh import HASH1, HASH2, mh_hashkey
from director.core.sched.sh import sh_hashkey
from director.core.service import Dest, Service, pack_addr
from director.model.config import ServiceConf

VIP6 = "2001:db8:1::100"


@pytest.mark.parametrize(
    ("addr", "port", "bucket"),
    [("2001:db8:1::100", 0, 142), ("2001:db8:1::100", 40000, 50),
     ("2001:db8:dffe:f248::", 32, 28), ("2001:db8:2::2", 0, 173)],
)  # fmt: skip
def test_sh_hashkey_of_ipv6_by_hand(addr: str, port: int, bucket: int) -> None:
    assert sh_hashkey(pack_addr(addr), port) == bucket


def test_lblc_bucket_of_an_ipv6_destination_by_hand() -> None:
    assert bucket_of(pack_addr("2001:db8:2::2")) == 693


def test_mh_hashes_an_ipv6_address_as_its_folded_value() -> None:
    """ip_vs_mh_hashkey hashes ``offset + port + ntohl(addr_fold)`` (one u32): an IPv6
    address hashes as the IPv4 address whose value is its fold, 0x20000CB8 =
    32.0.12.184, under both keys and with any port and offset."""
    six, four = pack_addr("2001:db8:1::100"), pack_addr("32.0.12.184")
    for key in (HASH1, HASH2):
        for port, offset in ((0, 0), (80, 0), (40000, 17)):
            assert mh_hashkey(six, port, key, offset) == mh_hashkey(four, port, key, offset)


def _svc6(name: str, flags: tuple[str, ...] = ()) -> Service:
    """An IPv6 service with A = 2001:db8:2::2, B ::3, C ::4 added in that order."""
    conf = ServiceConf("tcp", VIP6, 80, scheduler=name, sched_flags=flags)
    svc = Service(key=(6, pack_addr(VIP6), 80), conf=conf, scheduler=create_scheduler(name))
    for last in (2, 3, 4):
        dest = Dest(addr=pack_addr(f"2001:db8:2::{last}"), port=80, method="masq")
        svc.dests.insert(0, dest)
        svc.scheduler.update(svc)
    return svc


def _pkt6(saddr: str, sport: int = 40000, daddr: str = VIP6) -> Packet:
    return Packet(bytearray(60), 6, pack_addr(saddr), pack_addr(daddr), sport, 80, 40, 60)


def _label(dest: Dest | None) -> str:
    assert dest is not None
    return "ABC"[dest.addr[-1] - 2]


def test_sh_schedules_an_ipv6_client_by_its_bucket() -> None:
    """Bucket 142 for 2001:db8:1::100 holds B; with sh-port and port 40000, bucket 50
    (50 % 3 = 2) holds A."""
    assert _label(_svc6("sh").scheduler.schedule(_svc6("sh"), _pkt6(VIP6))) == "B"
    ported = _svc6("sh", ("sh-port",))
    assert _label(ported.scheduler.schedule(ported, _pkt6(VIP6, 40000))) == "A"


def test_dh_schedules_an_ipv6_destination_by_its_bucket() -> None:
    """dh hashes the packet's destination: 2001:db8:2::2 is bucket 173, server A."""
    svc = _svc6("dh")
    pkt = _pkt6("2001:db8:1::10", daddr="2001:db8:2::2")
    assert _label(svc.scheduler.schedule(svc, pkt)) == "A"


@pytest.mark.parametrize("name", ["lblc", "lblcr"])
def test_lblc_and_lblcr_remember_ipv6_destinations(name: str) -> None:
    """The locality table is keyed by the whole destination address (ip_vs_lblc_get
    compares with ip_vs_addr_equal): two IPv6 destinations with one fold still get
    entries of their own."""
    svc = _svc6(name)
    one, two = "2001:db8:2::2", "2001:db8:2:0:abcd:ef01:abcd:ef03"  # both fold: 0x20030DBA
    assert bucket_of(pack_addr(one)) == bucket_of(pack_addr(two))
    first = svc.scheduler.schedule(svc, _pkt6("2001:db8:1::10", daddr=one), 0.0)
    assert first is not None
    first.activeconns += 1  # the wlc walk now prefers another server for the next address
    second = svc.scheduler.schedule(svc, _pkt6("2001:db8:1::10", daddr=two), 0.0)
    assert second is not None and second is not first
    again = svc.scheduler.schedule(svc, _pkt6("2001:db8:1::11", daddr=one), 1.0)
    assert again is first
    assert isinstance(svc.scheduler, LBLC | LBLCR)
    assert set(svc.scheduler.table.entries) == {pack_addr(one), pack_addr(two)}
