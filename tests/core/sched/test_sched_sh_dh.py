"""sh and dh: the kernel's 256-bucket tables (ip_vs_sh.c, ip_vs_dh.c).

Worked by hand: ip_vs_sh_hashkey is ``(offset + (port + addr) * 2654435761) & 255``.
2654435761 = 0x9E3779B1, so modulo 256 the multiplier is 0xB1 = 177 and only the low
byte of ``port + addr`` matters:

* 203.0.113.10: low byte 10, 10 * 177 = 1770 = 6 * 256 + 234  -> bucket 234
* 203.0.113.5:  5 * 177 = 885 = 3 * 256 + 117                   -> bucket 117
* 203.0.113.6:  6 * 177 = 1062 = 4 * 256 + 38                   -> bucket 38
* 203.0.113.10 port 1000 (0x3E8): low byte 0xE8 + 10 = 242, 242 * 177 = 42834
  = 167 * 256 + 82                                                -> bucket 82
* 2001:db8:1::10 folds to 0x20010db8 ^ 0x00010000 ^ 0 ^ 0x10 = 0x20000da8;
  0xa8 = 168, 168 * 177 = 29736 = 116 * 256 + 40                  -> bucket 40

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
        ("203.0.113.10", 0, 234),
        ("203.0.113.5", 0, 117),
        ("203.0.113.6", 0, 38),
        ("203.0.113.10", 1000, 82),
        ("2001:db8:1::10", 0, 40),
    ],
)
def test_hashkey_by_hand(addr: str, port: int, bucket: int) -> None:
    assert sh_hashkey(pack_addr(addr), port) == bucket


def test_fallback_probe_sequence() -> None:
    # Probe i is hashkey(addr, 0, (234 + i) % 256) = ((234 + i) + 234) & 255 = 212 + i
    # for small i: the bucket of 203.0.113.10 plus the rolling offset.
    addr = pack_addr("203.0.113.10")
    assert [sh_hashkey(addr, 0, (234 + i) % 256) for i in range(3)] == [212, 213, 214]


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
    # Bucket 234, 234 % 3 = 0 -> C; with weights C=2 the period is 4: 234 % 4 = 2 -> B.
    svc = _svc("sh", {"A": 1, "B": 1, "C": 1})
    assert _label(svc.scheduler.schedule(svc, _pkt())) == "C"
    _get(svc, "C").weight = 2
    svc.scheduler.update(svc)  # upd_dest reassigns the buckets
    assert _label(svc.scheduler.schedule(svc, _pkt())) == "B"


def test_sh_ignores_the_port_unless_sh_port() -> None:
    # Without sh-port every source port gives bucket 234 (C); with it port 1000 gives
    # bucket 82, 82 % 3 = 1 -> B.
    plain = _svc("sh", {"A": 1, "B": 1, "C": 1})
    assert {_label(plain.scheduler.schedule(plain, _pkt(sport=p))) for p in range(1000, 1100)} == {
        "C"
    }
    ported = _svc("sh", {"A": 1, "B": 1, "C": 1}, flags=("sh-port",))
    assert _label(ported.scheduler.schedule(ported, _pkt(sport=1000))) == "B"


def test_sh_unavailable_server_without_and_with_fallback() -> None:
    # Client .10 hashes to bucket 234 (C).  With C quiesced plain sh gives nothing;
    # sh-fallback probes bucket 212 first: 212 % 3 = 2 -> A.
    for flags, expected in (((), "-"), (("sh-fallback",), "A"), (("flag-1",), "A")):
        svc = _svc("sh", {"A": 1, "B": 1, "C": 1}, flags=flags)
        _get(svc, "C").weight = 0
        svc.scheduler.update(svc)
        assert _label(svc.scheduler.schedule(svc, _pkt())) == expected
    # Overloaded counts as unavailable too; the next probe, 213 % 3 = 0, is C (quiesced),
    # then 214 % 3 = 1 -> B.
    svc = _svc("sh", {"A": 1, "B": 1, "C": 1}, flags=("sh-fallback",))
    _get(svc, "C").weight = 0
    _get(svc, "A").overloaded = True
    svc.scheduler.update(svc)
    assert _label(svc.scheduler.schedule(svc, _pkt())) == "B"
    _get(svc, "B").overloaded = True
    assert svc.scheduler.schedule(svc, _pkt()) is None


def test_sh_rebuilds_when_servers_change_without_update() -> None:
    svc = _svc("sh", {"A": 1, "B": 1, "C": 1})
    svc.dests.pop(0)  # C leaves; list B, A: bucket 234 % 2 = 0 -> B
    assert _label(svc.scheduler.schedule(svc, _pkt())) == "B"
    assert create_scheduler("sh").schedule(_svc("sh", {}), _pkt()) is None


def test_dh_hashes_the_destination_without_weights() -> None:
    # daddr .5 -> bucket 117, 117 % 3 = 0 -> C; daddr .6 -> bucket 38, 38 % 3 = 2 -> A.
    svc = _svc("dh", {"A": 1, "B": 1, "C": 5})
    assert _label(svc.scheduler.schedule(svc, _pkt(daddr="203.0.113.5"))) == "C"
    assert _label(svc.scheduler.schedule(svc, _pkt(daddr="203.0.113.6"))) == "A"
    # The client's address plays no part.
    assert _label(svc.scheduler.schedule(svc, _pkt(saddr="203.0.113.99"))) == "C"


def test_dh_no_fallback() -> None:
    svc = _svc("dh", {"A": 1, "B": 1, "C": 1})
    _get(svc, "C").overloaded = True
    assert svc.scheduler.schedule(svc, _pkt(daddr="203.0.113.5")) is None
    _get(svc, "C").overloaded = False
    _get(svc, "C").weight = 0
    assert svc.scheduler.schedule(svc, _pkt(daddr="203.0.113.5")) is None
    svc.dests.remove(_get(svc, "C"))  # list B, A: 117 % 2 = 1 -> A
    svc.scheduler.update(svc)
    assert _label(svc.scheduler.schedule(svc, _pkt(daddr="203.0.113.5"))) == "A"
