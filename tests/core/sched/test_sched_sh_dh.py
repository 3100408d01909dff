"""sh and dh: the kernel's 256-bucket tables (net/netfilter/ipvs/ip_vs_sh.c
ip_vs_sh_hashkey, ip_vs_sh_reassign, ip_vs_sh_get_fallback; ip_vs_dh.c ip_vs_dh_hashkey,
ip_vs_dh_reassign).

Worked by hand: ip_vs_sh_hashkey is ``(offset + hash_32(port + addr, 8)) & 255`` and
ip_vs_dh_hashkey is ``hash_32(addr, 8)``, where hash_32 (include/linux/hash.h) is
``(v * 0x61C88647 mod 2^32) >> 24`` for 8 bits, port and address in host order:

* 203.0.113.10 = 0xCB00710A; times 0x61C88647 mod 2^32 = 0xA21A95C6 -> bucket 0xA2 = 162
* 203.0.113.5  = 0xCB007105 -> 0xB92FF663 -> bucket 0xB9 = 185
* 203.0.113.7  = 0xCB007107 -> 0x7CC102F1 -> bucket 0x7C = 124
* 203.0.113.8  = 0xCB007108 -> 0xDE898938 -> bucket 0xDE = 222
* 203.0.114.10 = 0xCB00720A -> 0x6AA0DCC6 -> bucket 0x6A = 106 (same last octet as
  203.0.113.10, another bucket: the old low-bits product put both in one)
* 203.0.113.10 port 1001: 0xCB00710A + 0x3E9 = 0xCB0074F3 -> 0xFB2FA165 -> bucket 251
* 2001:db8:1::10 folds to 0x20010db8 ^ 0x00010000 ^ 0 ^ 0x10 = 0x20000DA8
  -> 0x3A69B998 -> bucket 0x3A = 58

Buckets are filled from the list newest first: servers A, B, C added in that order give
the list C, B, A, so with weight 1 each bucket i holds [C, B, A][i % 3]; with weights
C=2, B=1, A=1 the pattern is C, C, B, A, so bucket i holds it[i % 4].
"""

from __future__ import annotations

import pytest

from director.core.packet import Packet
from director.core.sched import create_scheduler
from director.core.sched.sh import fill_buckets, sh_hashkey
from director.core.service import Dest, Service, pack_addr
from director.model.config import ServiceConf


def _svc(name: str, weights: dict[str, int], flags: tuple[str, ...] = ()) -> Service:
    """Servers oldest first by name: A is 198.18.0.2, B .3, C .4."""
    conf = ServiceConf("tcp", "203.0.113.5", 80, scheduler=name, sched_flags=flags)
    svc = Service(
        key=(6, pack_addr("203.0.113.5"), 80), conf=conf, scheduler=create_scheduler(name)
    )
    for label, weight in weights.items():
        octet = 2 + ord(label) - ord("A")
        dest = Dest(addr=pack_addr(f"198.18.0.{octet}"), port=80, method="masq", weight=weight)
        svc.dests.insert(0, dest)
        svc.scheduler.update(svc)
    return svc


def _pkt(saddr: str = "203.0.113.10", sport: int = 1000, daddr: str = "203.0.113.5") -> Packet:
    return Packet(bytearray(40), 6, pack_addr(saddr), pack_addr(daddr), sport, 80, 20, 40)


def _label(dest: Dest | None) -> str:
    return "-" if dest is None else chr(ord("A") + dest.addr[-1] - 2)


def _get(svc: Service, label: str) -> Dest:
    return next(d for d in svc.dests if _label(d) == label)


@pytest.mark.parametrize(
    ("addr", "port", "bucket"),
    [
        ("203.0.113.10", 0, 162),
        ("203.0.113.5", 0, 185),
        ("203.0.113.7", 0, 124),
        ("203.0.113.8", 0, 222),
        ("203.0.114.10", 0, 106),
        ("203.0.113.10", 1001, 251),
        ("2001:db8:1::10", 0, 58),
    ],
)
def test_hashkey_by_hand(addr: str, port: int, bucket: int) -> None:
    assert sh_hashkey(pack_addr(addr), port) == bucket


def test_fallback_probe_sequence() -> None:
    # Probe i is hashkey(addr, 0, (162 + i) % 256) = ((162 + i) + 162) & 255 = 68 + i
    # for small i: the bucket of 203.0.113.10 plus the rolling offset.
    addr = pack_addr("203.0.113.10")
    assert [sh_hashkey(addr, 0, (162 + i) % 256) for i in range(3)] == [68, 69, 70]


def test_fill_weighted_and_unweighted() -> None:
    svc = _svc("sh", {"A": 1, "B": 1, "C": 2})
    buckets = [_label(d) for d in fill_buckets(svc.dests, weighted=True)]
    assert "".join(buckets[:8]) == "CCBACCBA"
    assert len(buckets) == 256
    # A weight 0 server still takes one bucket per turn (++count >= 0 at once).
    _get(svc, "B").weight = 0
    assert "".join(_label(d) for d in fill_buckets(svc.dests, weighted=True)[:8]) == "CCBACCBA"
    # dh ignores weights: one bucket each in turn.
    assert "".join(_label(d) for d in fill_buckets(svc.dests, weighted=False)[:6]) == "CBACBA"
    assert fill_buckets([], weighted=True) == [None] * 256


def test_sh_picks_the_bucket_of_the_client() -> None:
    # Bucket 162, 162 % 3 = 0 -> C; with weights C=2 the period is 4: 162 % 4 = 2 -> B.
    svc = _svc("sh", {"A": 1, "B": 1, "C": 1})
    assert _label(svc.scheduler.schedule(svc, _pkt())) == "C"
    _get(svc, "C").weight = 2
    svc.scheduler.update(svc)  # upd_dest reassigns the buckets
    assert _label(svc.scheduler.schedule(svc, _pkt())) == "B"


def test_sh_ignores_the_port_unless_sh_port() -> None:
    # Without sh-port every source port gives bucket 162 (C); with it port 1001 gives
    # bucket 251, 251 % 3 = 2 -> A.
    plain = _svc("sh", {"A": 1, "B": 1, "C": 1})
    assert {_label(plain.scheduler.schedule(plain, _pkt(sport=p))) for p in range(1000, 1100)} == {
        "C"
    }
    ported = _svc("sh", {"A": 1, "B": 1, "C": 1}, flags=("sh-port",))
    assert _label(ported.scheduler.schedule(ported, _pkt(sport=1001))) == "A"


def test_sh_unavailable_server_without_and_with_fallback() -> None:
    # Client .10 hashes to bucket 162 (C).  With C quiesced plain sh gives nothing;
    # sh-fallback probes bucket 68 first: 68 % 3 = 2 -> A.
    for flags, expected in (((), "-"), (("sh-fallback",), "A"), (("flag-1",), "A")):
        svc = _svc("sh", {"A": 1, "B": 1, "C": 1}, flags=flags)
        _get(svc, "C").weight = 0
        svc.scheduler.update(svc)
        assert _label(svc.scheduler.schedule(svc, _pkt())) == expected
    # Overloaded counts as unavailable too; the next probe, 69 % 3 = 0, is C (quiesced),
    # then 70 % 3 = 1 -> B.
    svc = _svc("sh", {"A": 1, "B": 1, "C": 1}, flags=("sh-fallback",))
    _get(svc, "C").weight = 0
    _get(svc, "A").overloaded = True
    svc.scheduler.update(svc)
    assert _label(svc.scheduler.schedule(svc, _pkt())) == "B"
    _get(svc, "B").overloaded = True
    assert svc.scheduler.schedule(svc, _pkt()) is None


def test_sh_rebuilds_when_servers_change_without_update() -> None:
    svc = _svc("sh", {"A": 1, "B": 1, "C": 1})
    svc.dests.pop(0)  # C leaves; list B, A: bucket 162 % 2 = 0 -> B
    assert _label(svc.scheduler.schedule(svc, _pkt())) == "B"
    assert create_scheduler("sh").schedule(_svc("sh", {}), _pkt()) is None


def test_dh_hashes_the_destination_without_weights() -> None:
    # daddr .5 -> bucket 185, 185 % 3 = 2 -> A; .7 -> 124 % 3 = 1 -> B; .8 -> 222 % 3 = 0
    # -> C, whatever C's weight.
    svc = _svc("dh", {"A": 1, "B": 1, "C": 5})
    assert _label(svc.scheduler.schedule(svc, _pkt(daddr="203.0.113.5"))) == "A"
    assert _label(svc.scheduler.schedule(svc, _pkt(daddr="203.0.113.7"))) == "B"
    assert _label(svc.scheduler.schedule(svc, _pkt(daddr="203.0.113.8"))) == "C"
    # The client's address plays no part.
    assert _label(svc.scheduler.schedule(svc, _pkt(saddr="203.0.113.99"))) == "A"


def test_dh_no_fallback() -> None:
    # daddr .8 -> bucket 222 -> C.
    svc = _svc("dh", {"A": 1, "B": 1, "C": 1})
    _get(svc, "C").overloaded = True
    assert svc.scheduler.schedule(svc, _pkt(daddr="203.0.113.8")) is None
    _get(svc, "C").overloaded = False
    _get(svc, "C").weight = 0
    assert svc.scheduler.schedule(svc, _pkt(daddr="203.0.113.8")) is None
    svc.dests.remove(_get(svc, "C"))  # list B, A: 222 % 2 = 0 -> B
    svc.scheduler.update(svc)
    assert _label(svc.scheduler.schedule(svc, _pkt(daddr="203.0.113.8"))) == "B"


def _kernel_hash_32(value: int, bits: int) -> int:
    """include/linux/hash.h hash_32 with __hash_32_generic: val * GOLDEN_RATIO_32."""
    return ((value * 0x61C88647) % 2**32) >> (32 - bits)


def _kernel_buckets(weights: list[int], weighted: bool) -> list[int]:
    """ip_vs_sh_reassign / ip_vs_dh_reassign walked as the C does: ``p`` steps along
    svc->destinations (index -1 is the list head), skipping the head; sh moves on
    once ``++d_count >= weight``, dh after every bucket."""
    buckets, p, d_count = [], -1, 0
    for _ in range(256):
        if p == -1:
            p = 0
        buckets.append(p)
        if not weighted:
            p = p + 1 if p + 1 < len(weights) else -1
            continue
        d_count += 1
        if d_count >= weights[p]:
            p = p + 1 if p + 1 < len(weights) else -1
            d_count = 0
    return buckets


def test_sh_and_dh_pick_what_the_kernel_formulas_pick() -> None:
    """Many clients and destinations against the kernel's formulas, computed here
    from ip_vs_sh_hashkey / ip_vs_dh_hashkey and the reassign loops."""
    import random

    rng = random.Random(10)
    weights = {"A": 3, "B": 1, "C": 2, "D": 0, "E": 5}
    sh, dh = _svc("sh", weights, flags=("sh-port",)), _svc("dh", weights)
    order = [_label(d) for d in sh.dests]  # newest first: E, D, C, B, A
    sh_table = _kernel_buckets([weights[x] for x in order], weighted=True)
    dh_table = _kernel_buckets([weights[x] for x in order], weighted=False)
    for _ in range(2000):
        addr = rng.getrandbits(32)
        port = rng.randrange(1, 65536)
        text = ".".join(str(addr >> s & 255) for s in (24, 16, 8, 0))
        want_sh = order[sh_table[(0 + _kernel_hash_32((port + addr) % 2**32, 8)) & 255]]
        got = sh.scheduler.schedule(sh, _pkt(saddr=text, sport=port))
        assert _label(got) == ("-" if want_sh == "D" else want_sh)  # D: weight 0
        want_dh = order[dh_table[_kernel_hash_32(addr, 8)]]
        got = dh.scheduler.schedule(dh, _pkt(daddr=text))
        assert _label(got) == ("-" if want_dh == "D" else want_dh)


def test_clients_sharing_the_last_octet_spread() -> None:
    """hash_32 keeps the high bits of the product: 256 clients x.y.z.10 fall into many
    buckets, where the low byte of the product would have put them all in one."""
    same_octet = {sh_hashkey(pack_addr(f"198.{i}.100.10")) for i in range(256)}
    assert len(same_octet) > 100
