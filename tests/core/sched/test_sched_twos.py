"""twos: two weighted random draws, the less loaded wins (ip_vs_twos.c).

With servers C, B, A (newest first) of weights 1, 2, 3 the total is 6 and each draw
is uniform over 0..6 (get_random_u32_below(total + 1)).  The walk subtracts 1, then 2,
then 3 and stops at the first server where the draw reaches 0 or below:
draws 0, 1 -> C; 2, 3 -> B; 4, 5, 6 -> A.  So C, listed first, wins 2/7 of the draws
though its weight is 1/6 of the total.
"""

from __future__ import annotations

import random
from collections import Counter

from director.core.packet import Packet
from director.core.sched import create_scheduler
from director.core.sched.twos import PowerOfTwoChoices
from director.core.service import Dest, Service, pack_addr
from director.model.config import ServiceConf

PKT = Packet(bytearray(40), 6, pack_addr("203.0.113.10"), pack_addr("203.0.113.5"), 1, 80, 20, 40)


class Scripted(random.Random):
    """Hands out the given draws, and records the bound each was asked for."""

    def __init__(self, draws: list[int]) -> None:
        super().__init__(0)
        self.draws = list(draws)
        self.bounds: list[int] = []

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:  # type: ignore[override]
        assert stop is None
        self.bounds.append(start)
        value = self.draws.pop(0)
        assert 0 <= value < start
        return value


def _svc(**weights: int) -> tuple[Service, dict[str, Dest]]:
    """Servers oldest first by name, each added at the head of the list."""
    conf = ServiceConf("tcp", "203.0.113.5", 80, scheduler="twos")
    svc = Service(
        key=(6, pack_addr("203.0.113.5"), 80), conf=conf, scheduler=create_scheduler("twos")
    )
    named = {}
    for label, weight in weights.items():
        octet = 2 + ord(label) - ord("A")
        dest = Dest(addr=pack_addr(f"198.18.0.{octet}"), port=80, method="masq", weight=weight)
        svc.dests.insert(0, dest)
        named[label] = dest
    return svc, named


def _sched(svc: Service) -> PowerOfTwoChoices:
    sched = svc.scheduler
    assert isinstance(sched, PowerOfTwoChoices)
    return sched


def test_draws_map_to_servers_by_weight_walk() -> None:
    svc, d = _svc(A=3, B=2, C=1)
    expected = {0: "C", 1: "C", 2: "B", 3: "B", 4: "A", 5: "A", 6: "A"}
    names = {id(v): k for k, v in d.items()}
    for draw, name in expected.items():
        rng = Scripted([draw, draw])  # both choices the same server
        _sched(svc).rng = rng
        assert names[id(svc.scheduler.schedule(svc, PKT))] == name
        assert rng.bounds == [7, 7]


def test_the_less_loaded_choice_wins_ties_keep_the_first() -> None:
    svc, d = _svc(A=3, B=2, C=1)
    d["C"].activeconns = 1  # overhead 256, weight 1
    d["A"].activeconns = 2  # overhead 512, weight 3
    # choice1 = C (draw 0), choice2 = A (draw 6): 3 * 256 > 1 * 512, so A.
    _sched(svc).rng = Scripted([0, 6])
    assert svc.scheduler.schedule(svc, PKT) is d["A"]
    # Reversed: choice1 = A, choice2 = C: 1 * 512 > 3 * 256 is false, A stays.
    _sched(svc).rng = Scripted([6, 0])
    assert svc.scheduler.schedule(svc, PKT) is d["A"]
    # Equal weighted loads: A at 3 * 256 against C at 1 * 256: 1 * 768 > 3 * 256 is
    # false, so choice1 stays, whichever it is.
    d["A"].activeconns = 3
    _sched(svc).rng = Scripted([6, 0])
    assert svc.scheduler.schedule(svc, PKT) is d["A"]
    _sched(svc).rng = Scripted([0, 6])
    assert svc.scheduler.schedule(svc, PKT) is d["C"]


def test_quiesced_and_overloaded_are_left_out_of_the_total() -> None:
    svc, d = _svc(A=3, B=2, C=1)
    d["B"].weight = 0
    d["C"].overloaded = True
    rng = Scripted([0, 3])
    _sched(svc).rng = rng
    assert svc.scheduler.schedule(svc, PKT) is d["A"]
    assert rng.bounds == [4, 4]  # total 3 + 1
    d["A"].overloaded = True
    assert svc.scheduler.schedule(svc, PKT) is None


def test_seeded_runs_repeat() -> None:
    svc1, _ = _svc(A=3, B=2, C=1)
    svc2, _ = _svc(A=3, B=2, C=1)
    _sched(svc1).rng = random.Random(7)
    _sched(svc2).rng = random.Random(7)
    run1 = [_position(svc1) for _ in range(50)]
    run2 = [_position(svc2) for _ in range(50)]
    assert run1 == run2
    assert len(set(run1)) == 3


def _position(svc: Service) -> int:
    dest = svc.scheduler.schedule(svc, PKT)
    assert dest is not None
    return svc.dests.index(dest)


def test_spread_with_equal_loads_follows_the_first_draw() -> None:
    # Loads stay 0, so choice 1 always stands: C 2/7, B 2/7, A 3/7 of 7000 picks.
    svc, d = _svc(A=3, B=2, C=1)
    _sched(svc).rng = random.Random(1)
    got = Counter(id(svc.scheduler.schedule(svc, PKT)) for _ in range(7000))
    for name, share in (("C", 2000), ("B", 2000), ("A", 3000)):
        assert abs(got[id(d[name])] - share) < 200
