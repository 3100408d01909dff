"""The other workers of ``directord --workers N``: one process per shard of clients.

The daemon's own process is worker 0: it serves shard 0's packets and everything else
(the control socket, the hooks, health checks, metrics, the rules file).  Workers 1 to
N-1 are processes of their own (``python -m director.shell.peer``), each with its own
connection table and its own pair of NFQUEUEs (director.core.shard says whose clients);
the board (director.shell.board) makes their counters one director's.

The daemon drives each worker through a socket pair with one request at a time
(``Peer.call``), answered between two batches of packets:

    configure  the services and real servers (the effective table health makes), with
               their board slots; the real servers' routes are looked up again
    sysctls    IPVS's sysctls
    bind       take the queues (after the first configure and load)
    publish    write the worker's counters to the board now (answer: its entries)
    report     the figures the metrics add up (drops, passes, queues, errors...)
    conns      one page of its connection entries, and how many it holds
    which      the real server a tuple would go to now
    load       take these dumped connection entries (a restart, director.core.conn_dump)
    emigrants  the entries new shards give to other workers (a dump)
    prune      drop those entries (the others have taken them)
    follow     conntrack's events (fast path) for the clients of these shards only,
               or (None) for every client while the shards are cut anew
    stop       give the queues back and answer with the table's dump
    sync_master  the master sync daemon's settings (send this shard's connections on
               a socket of the worker's own), or None to stop
    sync_apply the entries the backup sync daemon received for this shard's clients
    sync_backup  whether the backup sync daemon runs (for backup_only)

A worker ignores SIGTERM and SIGINT (the daemon stops it, after taking its table) and
dies with the daemon (PR_SET_PDEATHSIG), or when the socket pair closes.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from director.core import app, conn_dump, proto_tcp, sync
from director.core.conn import COLLECT_SLICE, CONN_BYTES, PAGE, Conn
from director.core.engine import Director
from director.core.service import PROTO_NUMBERS, pack_addr
from director.core.shard import Shards
from director.core.sync import SyncConn
from director.core.sysctl import Sysctls
from director.ctl.report import conn_page
from director.model.config import Config
from director.model.sync import DaemonConf
from director.shell import fastpath
from director.shell.board import Board, CountPacer, SlotKey
from director.shell.netfilter import worker_queue
from director.shell.netlink import Neighbours, Routes
from director.shell.nfqueue import read_queue_table
from director.shell.sync import Sender
from director.shell.sync import apply as sync_apply
from director.shell.worker import Worker, queue_sample

log = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0  # seconds a worker may take to answer (a load of many entries)
TICK = 1.0
PR_SET_PDEATHSIG = 1


def build_director(
    tcp_timeouts: dict[str, int],
    sysctls: Sysctls,
    conn_limit: int,
    ftp_ports: tuple[int, ...] = (),
) -> Director:
    """A Director with the daemon's settings: TCP timeouts, sysctls, table cap, the
    FTP helper's ports (none: no helper)."""
    director = Director()
    app.configure(director, "ftp", ftp_ports)
    director.conn_limit = conn_limit
    for state, seconds in tcp_timeouts.items():
        director.tcp.timeouts[proto_tcp.STATE_NAMES.index(state.upper())] = seconds
    director.sysctls = sysctls
    return director


def table_share(conn_table_memory: int, workers: int) -> int:
    """The entries one worker's table may hold: its share of the memory cap (MiB)."""
    return (conn_table_memory << 20) // CONN_BYTES // workers


def available_pages(cap_bytes: int, used: int) -> int:
    """4 KiB pages left: the host's MemAvailable or the cap's, the lesser (the DoS
    defences' ``availmem``)."""
    left = max(cap_bytes - used, 0) // PAGE
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return min(left, int(line.split()[1]) * 1024 // PAGE)
    except OSError:
        pass
    return left


def settle_garbage() -> None:
    """Keep the cyclic garbage collector's full passes small however large the table.

    A full collection walks every tracked object; with a million connection entries
    that is half a second without packets, every time a quarter more objects have
    survived into the oldest generation (CPython's rule), so about once per 250,000
    new connections.  The entries need no cyclic collection (the table unlinks an
    entry wholly when it removes it, and reference counting frees it), so once a
    second the young generations are collected and everything that has survived so
    far is frozen (gc.freeze: moved out of the collector's sight, in constant time;
    frozen objects are still freed by reference counting when they die).  Full
    passes then walk only what the last second left.  The price: a reference cycle
    that outlived its first two generations before becoming garbage is never
    reclaimed; the packet path makes none."""
    gc.collect(1)
    gc.freeze()


def leaving(shards: Shards, index: int) -> Callable[[Conn], bool]:
    """Whether an entry of worker ``index`` belongs to another worker under ``shards``
    (a template's client address is its network's, inside the shard bits)."""
    return lambda conn: shards.owner(conn.caddr) != index


def guarded(
    errors: Counter[str], what: str, action: Callable[[], object], where: str | None = None
) -> bool:
    """Run one piece of a loop's work; an exception in it is counted under ``where``
    (``what`` by default) and logged, the 1st, 10th, 100th... time with its traceback
    (a fault that repeats on every turn must not flood the journal), and the loop goes
    on.  Whether it succeeded."""
    try:
        action()
    except Exception:
        key = what if where is None else where
        errors[key] += 1
        count = errors[key]
        if count == 10 ** (len(str(count)) - 1):
            log.exception("%s failed (%d times so far); going on", what, count)
        return False
    return True


class PeerWorker:
    """Worker ``index`` (1 to N-1) in its own process."""

    def __init__(self, conn: Connection, board: Board, init: dict[str, Any]) -> None:
        self.conn = conn
        self.board = board
        self.index: int = init["index"]
        workers: int = init["workers"]
        self.director = build_director(
            init["tcp_timeouts"],
            init["sysctls"],
            table_share(init["conn_table_memory"], workers),
            init.get("ftp_ports", ()),
        )
        self.memory_cap = (init["conn_table_memory"] << 20) // workers
        self.neighbours = Neighbours()
        self.routes = Routes()
        queue, mark = worker_queue(init["queue_num"], self.index), init["send_mark"]
        self.workers = [
            Worker(self.director, queue, mark, self.neighbours),
            Worker(self.director, queue + 1, mark, self.neighbours, gso=True),
        ]
        self.loop_errors: Counter[str] = Counter()
        self.stopping = False
        self.fast: bool = init.get("fast", False)
        self.shards: Shards | None = init.get("shards")
        self.follower: fastpath.Follower | None = None
        self.ops: dict[str, Callable[..., Any]] = {
            "configure": self.configure,
            "sysctls": self.set_sysctls,
            "bind": self.bind,
            "publish": self.publish,
            "report": self.report,
            "conns": self.conns,
            "which": self.which,
            "load": self.load,
            "emigrants": self.emigrants,
            "prune": self.prune,
            "follow": self.follow,
            "stop": self.stop,
            "sync_master": self.sync_master,
            "sync_apply": self.sync_apply,
            "sync_backup": self.sync_backup,
        }
        self.sender: Sender | None = None  # the master sync daemon's, for this shard

    # -- requests ------------------------------------------------------------------

    def configure(self, config: Config, slots: dict[SlotKey, int]) -> None:
        self.director.configure(config)
        fastpath.annotate(self.director, slots, self.fast)
        self.board.bind(self.director, slots)
        self.routes.annotate(d for svc in self.director.services for d in svc.dests)
        self.director.local_addrs = self.routes.local_addresses()

    def set_sysctls(self, sysctls: Sysctls) -> None:
        self.director.sysctls = sysctls

    def sync_master(self, conf: DaemonConf | None) -> None:
        """The master sync daemon started (this worker sends its own connections on a
        socket of its own) or stopped (None)."""
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        if conf is not None:
            self.sender = Sender(conf, self.director, self.director.sysctls.sync_sock_size)
        master = None if self.sender is None else self.sender.master
        state = self.director.sync_state & ~sync.IP_VS_STATE_MASTER
        self.director.set_sync(state | (sync.IP_VS_STATE_MASTER if master else 0), master)

    def sync_backup(self, running: bool) -> None:
        """The backup sync daemon runs (in worker 0) or stopped: backup_only's state."""
        state = self.director.sync_state & ~sync.IP_VS_STATE_BACKUP
        self.director.set_sync(
            state | (sync.IP_VS_STATE_BACKUP if running else 0), self.director.sync_master
        )

    def sync_apply(self, conns: list[SyncConn], now: float) -> dict[str, int]:
        """Entries the backup received for this worker's clients (ip_vs_proc_conn)."""
        return dict(sync_apply(self.director, conns, now))

    def bind(self) -> None:
        for worker in self.workers:
            worker.bind()

    def publish(self) -> int:
        """Counters to the board now; the entries the table holds."""
        self.board.sync()
        return len(self.director.conns)

    def report(self) -> dict[str, Any]:
        director = self.director
        self.board.sync()
        kernel = read_queue_table()
        defense = director.defense
        return {
            "conn_entries": len(director.conns),
            "verdicts": dict(director.verdicts),
            "drops": dict(director.drops),
            "passes": dict(director.passes),
            "app_events": dict(director.apps.counters),
            "defenses": {
                "drop_entry": int(defense.drop_entry),
                "drop_packet": int(bool(defense.drop_rate)),
                "secure_tcp": int(defense.secure),
            },
            "drop_rate": defense.drop_rate,
            "conn_limit": director.conn_limit,
            "worker_errors": dict(self.workers[0].errors),
            "loop_errors": dict(self.loop_errors),
            "queues": [(w.queue, queue_sample(w, kernel)) for w in self.workers],
            "sync": {} if self.sender is None else self.sender.report(),
            "fast_path": {} if self.follower is None else self.follower.report(),
        }

    def conns(self, offset: int, limit: int) -> tuple[list[Any], int]:
        table = self.director.conns
        total = len(table.in_tab) + len(table.templates)
        return conn_page(self.director, time.monotonic(), offset, limit), total

    def which(
        self, protocol: str, client: tuple[str, int], virtual: tuple[str, int], mark: int
    ) -> tuple[bytes, int] | None:
        dest = self.director.which(PROTO_NUMBERS[protocol], pack_addr(client[0]), client[1],
                                   pack_addr(virtual[0]), virtual[1], time.monotonic(),
                                   mark)  # fmt: skip
        return None if dest is None else dest.key

    def load(self, data: dict[str, Any]) -> tuple[int, int]:
        gc.disable()
        try:
            return conn_dump.load(self.director, data, time.monotonic())
        finally:
            gc.enable()

    def emigrants(self, shards: Shards) -> dict[str, Any]:
        """A dump of the entries whose clients ``shards`` give to other workers (they
        stay here until ``prune``)."""
        return conn_dump.dump(self.director, time.monotonic(), leaving(shards, self.index))

    def follow(self, shards: Shards | None) -> None:
        """Conntrack's events for this worker's clients under ``shards`` (None: every
        client's, while the shards are cut anew)."""
        self.shards = shards
        if self.follower is not None:
            self.follower.follow(shards, self.index)

    def prune(self, shards: Shards) -> int:
        """Drop the entries whose clients ``shards`` give to other workers."""
        return conn_dump.drop(self.director, leaving(shards, self.index))

    def stop(self) -> dict[str, Any]:
        for worker in self.workers:
            worker.close()
        self.stopping = True
        return conn_dump.dump(self.director, time.monotonic())

    # -- the loop ------------------------------------------------------------------

    def _request(self) -> None:
        try:
            seq, op, args = self.conn.recv()
        except (EOFError, OSError):
            self.stopping = True  # the daemon is gone
            return
        try:
            answer: tuple[int, bool, Any] = (seq, True, self.ops[op](*args))
        except Exception as err:
            log.exception("worker %d: %s failed", self.index, op)
            answer = (seq, False, f"{type(err).__name__}: {err}")
        self.conn.send(answer)

    def _step(self, where: str, action: Callable[[], object]) -> None:
        guarded(self.loop_errors, f"worker {self.index}: {where}", action, where)

    def _on_netlink(self) -> None:
        self.neighbours.on_readable()
        if self.neighbours.routes_changed:
            self.neighbours.routes_changed = False
            self.routes.annotate(d for svc in self.director.services for d in svc.dests)
        self.director.local_addrs = self.routes.local_addresses()

    def _tick(self, now: float) -> None:
        director = self.director

        def forget_unresolved() -> None:
            for nexthop in self.neighbours.expire(now):
                director.forget(nexthop)

        pages = available_pages(self.memory_cap, director.conns.memory())
        steps: tuple[tuple[str, Callable[[], object]], ...] = (
            ("defend", lambda: director.defend(pages, now)),
            ("neighbours", forget_unresolved),
            ("board", self.board.sync),
            ("garbage", settle_garbage),
        )
        for where, action in steps:
            self._step(where, action)

    def serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.conn.fileno(), selectors.EVENT_READ, ("control", self._request))
        selector.register(self.neighbours, selectors.EVENT_READ, ("netlink", self._on_netlink))
        follower = fastpath.follow(self.director, self.shards, self.index) if self.fast else None
        self.follower = follower
        if follower is not None:
            selector.register(follower, selectors.EVENT_READ, ("conntrack", follower.on_readable))
        registered = False
        pacer = CountPacer(self.board)
        next_tick = time.monotonic()
        while not self.stopping:
            if not registered and self.workers[0].sock is not None:
                for worker in self.workers:
                    selector.register(worker, selectors.EVENT_READ, ("packets", worker.run_once))
                registered = True
            now = time.monotonic()
            behind = self.director.conns.behind(now)
            timeout = 0.0 if behind else pacer.timeout(now, max(0.0, next_tick - now))
            wakeup = None if self.sender is None else self.sender.next_wakeup()
            if wakeup is not None:
                timeout = min(timeout, max(0.0, wakeup - now))
            events = selector.select(timeout)
            if events:
                self._step("board", partial(pacer.before, time.monotonic()))
            for key, _ in events:
                where, action = key.data
                if where == "packets" and self.stopping:
                    continue
                self._step(where, action)
            now = time.monotonic()
            if self.sender is not None:
                self._step("sync", partial(self.sender.flush, now))
            self._step("board", partial(pacer.after, now, bool(events)))
            if now >= next_tick or self.director.conns.behind(now):
                self._step("expire", partial(self.director.expire, now, COLLECT_SLICE))
            if now >= next_tick:
                self._tick(now)
                if follower is not None:
                    self._step("conntrack", partial(follower.tick, now))
                next_tick = now + TICK
        selector.close()
        if follower is not None:
            follower.close()
        self.neighbours.close()
        self.routes.close()


class PeerError(RuntimeError):
    """A worker did not answer, or answered with an error."""


class Peer:
    """The daemon's handle on worker ``index``: the process and its socket pair."""

    def __init__(self, index: int, board_fd: int, init: dict[str, Any]) -> None:
        self.index = index
        self.board_fd = board_fd
        self.init = dict(init, index=index)
        self._seq = 0
        self.conn: Connection
        self.process: subprocess.Popen[bytes]
        self.start()

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "director.shell.peer", str(theirs.fileno()),
             str(self.board_fd)],
            pass_fds=(theirs.fileno(), self.board_fd),
        )  # fmt: skip
        theirs.close()
        self.conn = Connection(ours.detach())
        self.call("init", self.init)

    def fileno(self) -> int:
        return self.conn.fileno()

    def send(self, op: str, *args: Any) -> int:
        self._seq += 1
        self.conn.send((self._seq, op, args))
        return self._seq

    def answer(self, seq: int, timeout: float = CALL_TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conn.poll(left):
                raise PeerError(f"worker {self.index} did not answer in {timeout:.0f} s")
            try:
                got, ok, value = self.conn.recv()
            except (EOFError, OSError) as err:
                raise PeerError(f"worker {self.index} is gone: {err}") from None
            if got != seq:
                continue  # the answer to a request that timed out
            if not ok:
                raise PeerError(f"worker {self.index}: {value}")
            return value

    def call(self, op: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        return self.answer(self.send(op, *args), timeout)

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self, timeout: float = 5.0) -> None:
        self.conn.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def fan_out(peers: Iterable[Peer], op: str, *args: Any) -> list[Any]:
    """The same request to every worker at once; their answers in order."""
    asked = [(peer, peer.send(op, *args)) for peer in peers]
    return [peer.answer(seq) for peer, seq in asked]


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    """A worker process: ``python -m director.shell.peer CONN_FD BOARD_FD``."""
    logging.basicConfig(
        level=os.environ.get("DIRECTOR_LOG_LEVEL", "INFO"),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _die_with_parent()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    conn = Connection(int(argv[0]))
    if os.getppid() == 1:
        return 1  # the daemon died before the prctl
    seq, op, (init,) = conn.recv()
    assert op == "init"
    board = Board(int(argv[1]), init["workers"], init["index"])
    os.close(int(argv[1]))
    worker = PeerWorker(conn, board, init)
    conn.send((seq, True, None))
    worker.serve()
    board.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
