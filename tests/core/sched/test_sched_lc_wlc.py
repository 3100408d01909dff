"""lc and wlc: least (weighted) connection overhead, first minimum wins (ip_vs_lc.c,
ip_vs_wlc.c).  Overhead is ip_vs_dest_conn_overhead: (activeconns << 8) + inactconns."""

from __future__ import annotations

from typing import Any

import pytest

from director.core.sched import create_scheduler
from director.core.service import Dest, Service, pack_addr
from director.model.config import ServiceConf

PKT: Any = None  # neither looks at the packet


def _svc(name: str, *dests: tuple[str, int, int, int]) -> tuple[Service, dict[str, Dest]]:
    """Servers given oldest first as (name, weight, activeconns, inactconns)."""
    conf = ServiceConf("tcp", "203.0.113.5", 80, scheduler=name)
    svc = Service(
        key=(6, pack_addr("203.0.113.5"), 80), conf=conf, scheduler=create_scheduler(name)
    )
    by_name = {}
    for i, (label, weight, active, inactive) in enumerate(dests):
        dest = Dest(
            addr=pack_addr(f"198.18.0.{2 + i}"),
            port=80,
            method="masq",
            weight=weight,
            activeconns=active,
            inactconns=inactive,
        )
        svc.dests.insert(0, dest)  # newest first
        by_name[label] = dest
    svc.scheduler.update(svc)
    return svc, by_name


def _pick(svc: Service, by_name: dict[str, Dest]) -> str | None:
    dest = svc.scheduler.schedule(svc, PKT)
    return None if dest is None else next(k for k, v in by_name.items() if v is dest)


@pytest.mark.parametrize(
    ("dests", "expected"),
    [
        # overheads A 256, B 300, C 10: C
        ([("A", 1, 1, 0), ("B", 1, 0, 300), ("C", 1, 0, 10)], "C"),
        # one active outweighs 255 inactive: B 255 < A 256
        ([("A", 1, 1, 0), ("B", 1, 0, 255)], "B"),
        # weights other than 0 do not count: A 1 < B 2 despite A's weight 1
        ([("A", 1, 0, 1), ("B", 100, 0, 2)], "A"),
        # tie A = B = 0: the newest (B, met first from the head) wins
        ([("A", 1, 0, 0), ("B", 1, 0, 0)], "B"),
        # tie between the two oldest: B (newer than A) wins; C has more
        ([("A", 1, 2, 0), ("B", 1, 2, 0), ("C", 1, 3, 0)], "B"),
        # weight 0 is quiesced even with no connections
        ([("A", 0, 0, 0), ("B", 1, 5, 5)], "B"),
        ([("A", 0, 0, 0)], None),
    ],
)
def test_lc(dests: list[tuple[str, int, int, int]], expected: str | None) -> None:
    assert _pick(*_svc("lc", *dests)) == expected


@pytest.mark.parametrize(
    ("dests", "expected"),
    [
        # loads A 512/3 = 170.7, B 256/1, C 300/2 = 150: C
        ([("A", 3, 2, 0), ("B", 1, 1, 0), ("C", 2, 0, 300)], "C"),
        # weight counts: A 256/4 = 64 < B 100/1
        ([("A", 4, 1, 0), ("B", 1, 0, 100)], "A"),
        # equal loads A 512/2 = B 256/1: B (newest) is the first choice and A does not
        # displace it, since 256 * 2 > 512 * 1 is false
        ([("A", 2, 2, 0), ("B", 1, 1, 0)], "B"),
        # all idle: every load is 0, the newest wins
        ([("A", 5, 0, 0), ("B", 1, 0, 0), ("C", 3, 0, 0)], "C"),
        # the newest is quiesced: the first stage starts from B; A is lighter
        ([("A", 1, 0, 1), ("B", 1, 0, 2), ("C", 0, 0, 0)], "A"),
        # weight 0 is compared in the second stage but never wins: loh * 0 > doh * w
        ([("A", 0, 0, 0), ("B", 1, 9, 9)], "B"),
        ([("A", 0, 0, 0), ("B", 0, 0, 0)], None),
        # weights up to 2**31 - 1 multiply without overflow (the kernel uses s64)
        ([("A", 2147483647, 1000, 0), ("B", 1, 0, 1)], "A"),
    ],
)
def test_wlc(dests: list[tuple[str, int, int, int]], expected: str | None) -> None:
    assert _pick(*_svc("wlc", *dests)) == expected


@pytest.mark.parametrize("name", ["lc", "wlc"])
def test_overloaded_never_chosen(name: str) -> None:
    svc, by_name = _svc(name, ("A", 1, 0, 0), ("B", 1, 9, 0), ("C", 1, 0, 0))
    by_name["A"].overloaded = by_name["C"].overloaded = True
    assert _pick(svc, by_name) == "B"
    by_name["B"].overloaded = True
    assert _pick(svc, by_name) is None


@pytest.mark.parametrize("name", ["lc", "wlc"])
def test_empty_service(name: str) -> None:
    svc, by_name = _svc(name)
    assert _pick(svc, by_name) is None
