"""The board the workers' counters meet on (director/shell/board.py).

IPVS has one ``activeconns`` per real server that every CPU's scheduler reads, and sums
its per-CPU stats when read (ip_vs_stats cpustats, net/netfilter/ipvs/ip_vs_est.c
ip_vs_read_cpu_stats): after a sync every worker must see the sum of all workers'
figures, each worker's own part counted once however often it syncs.  Here the
workers are Directors in one process, each with its own view of one real memfd.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from director.core.engine import Director
from director.core.service import Dest, Service, pack_addr
from director.ctl.ipvsadm import load_rules
from director.model.config import Config, ConfigError
from director.shell import board
from director.shell.board import Board, Slots

RULES = """\
-A -t 203.0.113.5:80 -s wlc
-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m
-a -t 203.0.113.5:80 -r 198.18.0.3:80 -m
-A -u 203.0.113.5:53 -s rr
-a -u 203.0.113.5:53 -r 198.18.0.2:53 -m
"""
WEB = (6, pack_addr("203.0.113.5"), 80)


class Worker:
    """One worker: its Director and its view of the board."""

    def __init__(self, fd: int, workers: int, me: int, config: Config, slots: Slots) -> None:
        self.director = Director()
        self.slots = slots
        self.board = Board(fd, workers, me)
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.director.configure(config)
        self.board.bind(self.director, self.slots.assign(config))

    def service(self, key: tuple[int, bytes, int] = WEB) -> Service:
        found = self.director.services.services[key]
        return found

    def dest(self, rs: str, key: tuple[int, bytes, int] = WEB) -> Dest:
        found = self.service(key).find_dest(pack_addr(rs), key[2])
        assert found is not None
        return found


@pytest.fixture
def workers(request: pytest.FixtureRequest) -> Iterator[list[Worker]]:
    count: int = getattr(request, "param", 2)
    fd = board.create(count)
    slots = Slots()  # the daemon's: one set of slot numbers for every worker
    config = load_rules(RULES)
    made = [Worker(fd, count, me, config, slots) for me in range(count)]
    os.close(fd)  # the maps keep the memory
    yield made
    for worker in made:
        worker.board.close()


def counts(dest: Dest) -> tuple[int, int, int]:
    return (dest.activeconns, dest.inactconns, dest.persistconns)


def sync_all(workers: list[Worker]) -> None:
    for worker in workers:
        worker.board.sync()


def test_each_worker_sees_the_sum_of_the_connection_counts(workers: list[Worker]) -> None:
    a, b = workers
    a.dest("198.18.0.2").activeconns, a.dest("198.18.0.2").inactconns = 3, 1
    b.dest("198.18.0.2").activeconns, b.dest("198.18.0.2").persistconns = 4, 2
    b.dest("198.18.0.3").inactconns = 5
    sync_all(workers)
    sync_all(workers)  # the first worker learns the second's on its second sync
    for worker in workers:
        assert counts(worker.dest("198.18.0.2")) == (7, 1, 2)
        assert counts(worker.dest("198.18.0.3")) == (0, 5, 0)
    assert a.board.own(a.slots.slots[(WEB, pack_addr("198.18.0.2"), 80)], 0) == 3


def test_each_worker_sees_the_sum_of_the_stats(workers: list[Worker]) -> None:
    a, b = workers
    a.service().stats.conns, a.service().stats.inbytes = 2, 100
    b.service().stats.conns, b.service().stats.outpkts = 5, 9
    a.dest("198.18.0.3").stats.inpkts = 11
    b.dest("198.18.0.3").stats.inpkts = 22
    a.director.totals.outbytes = 1000
    b.director.totals.outbytes = 234
    sync_all(workers)
    sync_all(workers)
    for worker in workers:
        assert worker.service().stats.counts() == (7, 0, 9, 100, 0)
        assert worker.dest("198.18.0.3").stats.inpkts == 33
        assert worker.director.totals.outbytes == 1234
        assert worker.dest("198.18.0.2").stats.counts() == (0, 0, 0, 0, 0)


def test_increments_after_a_sync_are_added_once(workers: list[Worker]) -> None:
    """The packet path adds to the merged figure; the next sync publishes only the
    worker's own part, so syncing again and again changes nothing."""
    a, b = workers
    a.dest("198.18.0.2").activeconns = 2
    b.dest("198.18.0.2").activeconns = 3
    a.service().stats.conns = 10
    b.service().stats.conns = 20
    sync_all(workers)
    sync_all(workers)
    a.dest("198.18.0.2").activeconns += 1  # a new connection on a: 6 in all
    b.dest("198.18.0.2").activeconns -= 2  # two closed on b: 4
    a.service().stats.conns += 4
    b.service().stats.conns += 1
    sync_all(workers)  # a synced before b published: a is one round behind
    assert (a.dest("198.18.0.2").activeconns, b.dest("198.18.0.2").activeconns) == (6, 4)
    for _ in range(5):
        sync_all(workers)
        for worker in workers:
            assert worker.dest("198.18.0.2").activeconns == 4
            assert worker.service().stats.conns == 35
    a_slot = a.slots.slots[(WEB, pack_addr("198.18.0.2"), 80)]
    assert (a.board.own(a_slot, 0), b.board.own(a_slot, 0)) == (3, 1)


def test_counts_only_and_stats_only(workers: list[Worker]) -> None:
    """sync_counts (every few ms) leaves the stats alone, sync_stats the counts."""
    a, b = workers
    b.dest("198.18.0.2").activeconns = 4
    b.service().stats.conns = 6
    b.board.sync()
    a.board.sync_counts()
    assert a.dest("198.18.0.2").activeconns == 4
    assert a.service().stats.conns == 0
    a.board.sync_stats()
    assert a.service().stats.conns == 6


@pytest.mark.parametrize("workers", [3], indirect=True)
def test_three_workers(workers: list[Worker]) -> None:
    for n, worker in enumerate(workers, 1):
        worker.dest("198.18.0.3").activeconns = n
        worker.director.totals.conns = 10 * n
    sync_all(workers)
    sync_all(workers)
    for worker in workers:
        assert worker.dest("198.18.0.3").activeconns == 6
        assert worker.director.totals.conns == 60
    workers[1].dest("198.18.0.3").activeconns += 10
    sync_all(workers)
    sync_all(workers)
    assert [w.dest("198.18.0.3").activeconns for w in workers] == [16, 16, 16]


def test_slots_are_kept_for_a_removed_and_readded_server() -> None:
    slots = Slots()
    full = load_rules(RULES)
    first = slots.assign(full)
    rs3 = (WEB, pack_addr("198.18.0.3"), 80)
    without = load_rules(RULES.replace("-a -t 203.0.113.5:80 -r 198.18.0.3:80 -m\n", ""))
    assert rs3 not in slots.assign(without)
    assert slots.assign(full) == first
    assert sorted(first.values()) == list(range(1, 6))  # 2 services, 3 servers; 0: totals
    more = slots.assign(load_rules(RULES + "-a -t 203.0.113.5:80 -r 198.18.0.4:80 -m\n"))
    assert more[(WEB, pack_addr("198.18.0.4"), 80)] == 6
    assert {k: v for k, v in more.items() if k in first} == first


def test_a_full_board_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slot 0 holds the totals, so SLOTS - 1 keys fit; one more is refused and changes
    nothing."""
    monkeypatch.setattr(board, "SLOTS", 6)
    slots = Slots()
    slots.assign(load_rules(RULES))  # 5 keys: full
    with pytest.raises(ConfigError, match="full"):
        slots.assign(load_rules(RULES + "-a -t 203.0.113.5:80 -r 198.18.0.4:80 -m\n"))
    assert len(slots.slots) == 5
    assert slots.assign(load_rules(RULES)) == dict(slots.slots)


WITHOUT_RS3 = RULES.replace("-a -t 203.0.113.5:80 -r 198.18.0.3:80 -m\n", "")
WITHOUT_WEB = "\n".join(line for line in RULES.splitlines() if ":80" not in line) + "\n"


def test_a_service_removed_and_added_again_starts_from_zero(workers: list[Worker]) -> None:
    """ip_vs_add_service (net/netfilter/ipvs/ip_vs_ctl.c) makes a new service with zeroed
    stats: once every worker has made it afresh, the board shows it from zero, not the
    old service's figures taken away (before: -7 conns on one worker)."""
    a, b = workers
    a.service().stats.conns, b.service().stats.conns = 2, 5
    a.director.totals.conns, b.director.totals.conns = 2, 5
    sync_all(workers)
    sync_all(workers)
    for worker in workers:
        worker.configure(load_rules(WITHOUT_WEB))
    for worker in workers:
        worker.configure(load_rules(RULES))
    sync_all(workers)  # every worker publishes its new part (a read b's old one)
    for _ in range(3):
        sync_all(workers)
        for worker in workers:
            assert worker.service().stats.conns == 0
            assert worker.director.totals.conns == 7  # the totals live on
    a.service().stats.conns += 1
    sync_all(workers)
    sync_all(workers)
    assert [w.service().stats.conns for w in workers] == [1, 1]


def test_a_server_readded_afresh_starts_from_zero(workers: list[Worker]) -> None:
    """A removed real server no connection uses is made afresh when added again
    (ip_vs_new_dest: zeroed stats), in every worker: the board shows it from zero."""
    a, b = workers
    a.dest("198.18.0.3").stats.inpkts = 11
    b.dest("198.18.0.3").stats.inpkts = 22
    sync_all(workers)
    sync_all(workers)
    for worker in workers:
        worker.configure(load_rules(WITHOUT_RS3))
        worker.configure(load_rules(RULES))
    sync_all(workers)  # every worker publishes its new part (a read b's old one)
    for _ in range(3):
        sync_all(workers)
        for worker in workers:
            assert worker.dest("198.18.0.3").stats.counts() == (0, 0, 0, 0, 0)


def test_a_server_back_from_one_workers_trash_and_afresh_in_the_other(
    workers: list[Worker],
) -> None:
    """Worker a opened a connection to the server after the last sync, so when the
    server is removed a keeps it in its trash and gives it back with its counters
    (ip_vs_trash_get_dest) while b, which saw no connection, makes it afresh: the board
    shows a's figures, not b's old part taken away."""
    a, b = workers
    a.dest("198.18.0.3").stats.inpkts = 11
    b.dest("198.18.0.3").stats.inpkts = 22
    sync_all(workers)
    sync_all(workers)
    a.dest("198.18.0.3").activeconns = 1
    a.dest("198.18.0.3").stats.inpkts += 1
    revived = a.dest("198.18.0.3")
    for worker in workers:
        worker.configure(load_rules(WITHOUT_RS3))
    assert [len(w.director.services.trash) for w in workers] == [1, 0]
    for worker in workers:
        worker.configure(load_rules(RULES))
    assert a.dest("198.18.0.3") is revived
    sync_all(workers)  # every worker publishes its new part (a read b's old one)
    for _ in range(3):
        sync_all(workers)
        for worker in workers:
            dest = worker.dest("198.18.0.3")
            assert counts(dest) == (1, 0, 0)
            assert dest.stats.inpkts == 12  # a's own 12 (revived), b's fresh 0


def test_a_server_in_both_trashes_comes_back_with_its_counters(workers: list[Worker]) -> None:
    """With the connection synced, b counts it too and keeps the server in its trash:
    both give back the same objects, and nothing changes on the board."""
    a, b = workers
    a.dest("198.18.0.3").activeconns = 1
    a.dest("198.18.0.3").stats.inpkts = 11
    b.dest("198.18.0.3").stats.inpkts = 22
    sync_all(workers)
    sync_all(workers)
    for worker in workers:
        worker.configure(load_rules(WITHOUT_RS3))
    assert [len(w.director.services.trash) for w in workers] == [1, 1]
    for worker in workers:
        worker.configure(load_rules(RULES))
    sync_all(workers)  # every worker publishes its new part (a read b's old one)
    for _ in range(3):
        sync_all(workers)
        for worker in workers:
            assert counts(worker.dest("198.18.0.3")) == (1, 0, 0)
            assert worker.dest("198.18.0.3").stats.inpkts == 33
