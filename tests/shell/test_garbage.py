"""The daemon's garbage collection policy (director.shell.daemon.settle_garbage): what
has survived is frozen out of the cyclic collector's full passes, which a million
connection entries would make half a second long; what comes after is collected as
before."""

from __future__ import annotations

import gc
import weakref

from director.core.engine import Director
from director.model.config import Config, DestConf, ServiceConf
from director.shell.daemon import settle_garbage
from tests.core.packets import RS1, SYN, VIP, tcp


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_settled_entries_leave_the_collector_and_new_cycles_are_still_collected() -> None:
    d = Director()
    d.configure(Config(services=(ServiceConf("tcp", VIP, 80, dests=(DestConf(RS1, 80, "masq"),)),)))
    for port in range(1024, 3024):
        d.hook_in(tcp("198.51.100.7", VIP, port, 80, SYN), 1.0)
    try:
        settle_garbage()
        frozen = gc.get_freeze_count()
        assert frozen >= len(d.conns)
        assert not any(type(o).__name__ == "Conn" for o in gc.get_objects())
        # A cycle made afterwards is the collector's as ever.
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
