"""wrr: the kernel's mark (cl, cw, mw, di) and its dest_changed rule (ip_vs_wrr.c)."""

from __future__ import annotations

from collections import Counter
from functools import reduce
from math import gcd
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from director.core.sched import create_scheduler
from director.core.service import Dest, Service, ServiceTable, pack_addr
from director.model.config import Config, DestConf, ServiceConf

PKT: Any = None  # wrr never looks at the packet
NAMES = {pack_addr(f"198.18.0.{2 + i}"): chr(ord("A") + i) for i in range(26)}


def _config(*weights: int) -> Config:
    dests = tuple(
        DestConf(f"198.18.0.{2 + i}", 80, "masq", weight=w) for i, w in enumerate(weights)
    )
    return Config(services=(ServiceConf("tcp", "203.0.113.5", 80, scheduler="wrr", dests=dests),))


def _picks(svc: Service, count: int) -> str:
    out = []
    for _ in range(count):
        dest = svc.scheduler.schedule(svc, PKT)
        out.append("-" if dest is None else NAMES[dest.addr])
    return "".join(out)


def test_kernel_sequence_servers_added_one_by_one() -> None:
    # ipvsadm -A -s wrr; -a A -w 4; -a B -w 3; -a C -w 2, one change at a time.
    # The list is C(2), B(3), A(4) (newest first).
    #
    # init_service, no servers: di = 1 (no positive weight), mw = 0 - (1-1) = 0, cw = 0.
    # add A(4):  di = 4, mw = 4 - 3 = 1; cw == 0 so cw = mw = 1.
    # add B(3):  di = gcd(3, 4) = 1, mw = 4 - 0 = 4; cw = 1 is neither 0 nor > mw and
    #            di == 1, so cw stays 1.
    # add C(2):  di = gcd(2, 1) = 1, mw = 4; cw stays 1.  Every add puts cl at the head.
    #
    # pick 1:  cw = 1, walk from head: C (2 >= 1)          -> C
    # pick 2:  on from C: B (3 >= 1)                       -> B
    # pick 3:  on from B: A (4 >= 1)                       -> A
    # pick 4:  nothing after A; cw = 1 - 1 = 0 <= 0, so cw = mw = 4 (restarted);
    #          from head: C 2 < 4, B 3 < 4, A 4 >= 4       -> A
    # pick 5:  nothing after A; cw = 3: C 2 < 3, B 3 >= 3  -> B
    # pick 6:  on from B: A 4 >= 3                         -> A
    # pick 7:  nothing after A; cw = 2: C 2 >= 2           -> C
    # pick 8:  B (3 >= 2)                                  -> B
    # pick 9:  A (4 >= 2)                                  -> A
    # pick 10..12: cw = 1: C, B, A                         -> C B A
    # pick 13: cw = 0 -> 4 again: the cycle A BA CBA CBA repeats.
    #
    # A full cycle (cw = 4, 3, 2, 1) is "A" "BA" "CBA" "CBA": A 4, B 3, C 2 times.
    # Adding one by one leaves the mark at cw = 1, so the first three picks are the
    # cw = 1 tail of a cycle.
    table = ServiceTable()
    table.apply(_config())
    for n in (1, 2, 3):
        table.apply(_config(*(4, 3, 2)[:n]))
    (svc,) = table
    assert _picks(svc, 3 + 9 + 9) == "CBA" + "ABACBACBA" + "ABACBACBA"


def test_one_apply_replays_one_change_per_server() -> None:
    # update() hears of three additions at once and replays dest_changed for each, as
    # ipvsadm-restore's three "-a" lines would make the kernel do: same mark, same picks.
    table = ServiceTable()
    table.apply(_config(4, 3, 2))
    (svc,) = table
    assert _picks(svc, 12) == "CBA" + "ABACBACBA"


def test_gcd_steps() -> None:
    # A(4) then B(2); list B, A.
    # add A: di = 4, mw = 4 - 3 = 1, cw = 0 -> 1.
    # add B: di = 2, mw = 4 - 1 = 3; cw = 1 <= mw and di > 1: cw = (1 // 2) * 2 + 1 = 1.
    # cw = 1: B, A; cw = 1 - 2 < 0 -> mw = 3: A (B 2 < 3); cw = 1: B, A; cw = 3: A ...
    table = ServiceTable()
    table.apply(_config(4, 2))
    (svc,) = table
    assert _picks(svc, 8) == "BA" + "ABA" + "ABA"


def test_weight_change_rounds_cw_to_di() -> None:
    # 4, 3, 2 as above: "CBA" (cw = 1), "A" (cw = 4), "BA" (cw = 3), "C" (cw = 2).
    # Then ipvsadm -e B -w 2: weights 4, 2, 2, di = 2, mw = 4 - 1 = 3; cw = 2 <= mw,
    # di > 1, so cw = (2 // 2) * 2 + 1 = 3 (it goes up), and cl goes back to the head.
    # cw = 3: C 2 no, B 2 no, A -> A; cw = 1: C, B, A; cw = 3: A; cw = 1: C ...
    table = ServiceTable()
    table.apply(_config(4, 3, 2))
    (svc,) = table
    assert _picks(svc, 7) == "CBAABAC"
    table.apply(_config(4, 2, 2))
    assert _picks(svc, 6) == "ACBAAC"


def test_unrelated_apply_does_not_reset_the_mark() -> None:
    # After "CB" (cw = 1, cl = B) the next picks are A, then A at cw = 4.  Had the
    # mark been reset (cl = head, cw kept at 1) they would be C, B.
    table = ServiceTable()
    table.apply(_config(4, 3, 2))
    (svc,) = table
    assert _picks(svc, 2) == "CB"
    table.apply(_config(4, 3, 2))  # same servers: the kernel would hear nothing
    assert _picks(svc, 2) == "AA"


def test_all_weights_zero() -> None:
    table = ServiceTable()
    table.apply(_config(0, 0))
    (svc,) = table
    assert _picks(svc, 2) == "--"


def test_overloaded_skipped_and_all_overloaded() -> None:
    table = ServiceTable()
    table.apply(_config(4, 3, 2))
    (svc,) = table
    a = svc.dests[2]
    a.overloaded = True
    assert Counter(_picks(svc, 10)) == Counter("BBBBBBCCCC")
    for d in svc.dests:
        d.overloaded = True
    assert _picks(svc, 2) == "--"
    for d in svc.dests:
        d.overloaded = False
    assert set(_picks(svc, 9)) == {"A", "B", "C"}


def test_empty_service() -> None:
    conf = ServiceConf("tcp", "203.0.113.5", 80, scheduler="wrr")
    svc = Service(
        key=(6, pack_addr("203.0.113.5"), 80), conf=conf, scheduler=create_scheduler("wrr")
    )
    assert svc.scheduler.schedule(svc, PKT) is None
    svc.scheduler.update(svc)
    assert svc.scheduler.schedule(svc, PKT) is None


# A history of changes: each step adds a server, removes one, or edits a weight.
_step = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 12)),
    st.tuples(st.just("remove"), st.integers(0, 30)),
    st.tuples(st.just("edit"), st.integers(0, 30), st.integers(0, 12)),
)


@given(history=st.lists(_step, min_size=1, max_size=12), skip=st.integers(0, 40))
def test_every_server_gets_its_weight_share_over_a_cycle(
    history: list[tuple[Any, ...]], skip: int
) -> None:
    conf = ServiceConf("tcp", "203.0.113.5", 80, scheduler="wrr")
    svc = Service(
        key=(6, pack_addr("203.0.113.5"), 80), conf=conf, scheduler=create_scheduler("wrr")
    )
    octet = 2
    for step in history:
        if step[0] == "add":
            dest = Dest(addr=pack_addr(f"198.18.0.{octet}"), port=80, method="masq", weight=step[1])
            octet += 1
            svc.dests.insert(0, dest)
        elif step[0] == "remove" and svc.dests:
            svc.dests.pop(step[1] % len(svc.dests))
        elif step[0] == "edit" and svc.dests:
            svc.dests[step[1] % len(svc.dests)].weight = step[2]
        svc.scheduler.update(svc)
        for _ in range(skip % 7):  # picks between changes move the mark
            svc.scheduler.schedule(svc, PKT)
    for _ in range(skip):  # start anywhere in the cycle
        svc.scheduler.schedule(svc, PKT)
    weights = [d.weight for d in svc.dests if d.weight > 0]
    if not weights:
        assert svc.scheduler.schedule(svc, PKT) is None
        return
    di = reduce(gcd, weights)
    cycle = sum(weights) // di
    got: Counter[int] = Counter()
    for _ in range(cycle):
        dest = svc.scheduler.schedule(svc, PKT)
        assert dest is not None
        got[id(dest)] += 1
    assert got == Counter({id(d): d.weight // di for d in svc.dests if d.weight > 0})


def test_vain_passes_are_skipped() -> None:
    # Weights 2147483647 and 1 with the heavy one overloaded: the kernel lowers cw one
    # pass at a time, 2**31 passes before B qualifies.  Same answer, without the wait.
    table = ServiceTable()
    table.apply(_config(2147483647, 1))
    (svc,) = table
    svc.dests[1].overloaded = True
    assert _picks(svc, 3) == "BBB"
