"""Power of two choices scheduling, mirroring ``net/netfilter/ipvs/ip_vs_twos.c``.

The kernel sums the weights of the servers that are neither overloaded
(IP_VS_DEST_F_OVERLOAD) nor quiesced (weight <= 0); None if there are none.  It draws
two numbers r1, r2 uniformly from [0, total] (``get_random_u32_below(total + 1)``),
then walks those servers newest first, subtracting each weight from both: choice 1 is
the server at which r1 first drops to 0 or below, choice 2 likewise for r2.  The
range is inclusive, so the first server wins a draw with probability
(w + 1) / (total + 1) and the others w / (total + 1).  Choice 2 replaces choice 1 only
when its weighted load is strictly smaller: ``weight2 * overhead1 > weight1 *
overhead2``, with ``ip_vs_dest_conn_overhead`` as lc uses it.

The randomness is ``self.rng`` (a ``random.Random``), seedable or replaceable, so the
same draws give the same choices.  The kernel adds weights and multiplies loads in C
``int``; with weights summing past 2**31 - 1 or huge loads it overflows, which is
undefined behaviour, while Python's integers keep the arithmetic exact.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from director.core.sched import Scheduler, register
from director.core.sched.lc import conn_overhead

if TYPE_CHECKING:
    from director.core.packet import Packet
    from director.core.service import Dest, Service


@register
class PowerOfTwoChoices(Scheduler):
    name = "twos"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random()

    def schedule(self, svc: Service, pkt: Packet, now: float = 0.0) -> Dest | None:
        usable = [d for d in svc.dests if not d.overloaded and d.weight > 0]
        if not usable:
            return None  # "no destination available"
        total = sum(d.weight for d in usable) + 1
        r1 = self.rng.randrange(total)
        r2 = self.rng.randrange(total)
        choice1 = choice2 = None
        for dest in usable:
            r1 -= dest.weight
            r2 -= dest.weight
            if r1 <= 0 and choice1 is None:
                choice1 = dest
            if r2 <= 0 and choice2 is None:
                choice2 = dest
            if choice1 is not None and choice2 is not None:
                break
        # Every draw is at most the total, so both are set by the end of the walk.
        assert choice1 is not None and choice2 is not None
        if choice2.weight * conn_overhead(choice1) > choice1.weight * conn_overhead(choice2):
            return choice2
        return choice1
