"""The NFQUEUE verdict worker: the thin shell around ``Director.hook_in/hook_out``.

One packet: copy the payload, hand it to the core with the time, carry out the verdict.
ACCEPT reinjects the packet (with its rewritten bytes if any); SEND drops the queued
original and sends the rewritten packet from a raw socket, routed by its new
destination, marked so the director's own OUTPUT rules leave it alone; DIRECT drops the
original and hands the unchanged packet to the real server's MAC (VS/DR); DROP drops.
An exception on one packet is counted and that packet dropped; the worker goes on.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable

from netfilterqueue import NetfilterQueue, Packet

from director.core.engine import Director
from director.core.route import Frame
from director.core.xmit import ACCEPT, DIRECT, SEND
from director.shell.netlink import Neighbours

log = logging.getLogger(__name__)

NF_INET_LOCAL_IN = 1
NF_INET_FORWARD = 2
QUEUE_MAXLEN = 4096
BATCH = 64  # packets per turn of the daemon's loop


class Worker:
    def __init__(
        self,
        director: Director,
        queue: int,
        mark: int,
        neighbours: Neighbours,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.director = director
        self.neighbours = neighbours
        self.queue = queue
        self.clock = clock
        # One tally of what the shell could not do (send errors, unresolved neighbours).
        self.errors: Counter[str] = neighbours.errors
        self.nfq = NetfilterQueue()
        self._batch: _Batch | None = None
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)

    def bind(self) -> None:
        self.nfq.bind(self.queue, self.handle, max_len=QUEUE_MAXLEN)
        sock = socket.socket(fileno=self.nfq.get_fd())
        sock.setblocking(False)
        self._batch = _Batch(sock)

    def fileno(self) -> int:
        fd: int = self.nfq.get_fd()
        return fd

    def run_once(self) -> None:
        """Give verdicts on the packets waiting in the queue, at most BATCH of them, then
        return: under a flood the daemon's loop still serves the control socket, the
        connection collector and the watchdog between batches."""
        assert self._batch is not None, "bind() first"
        # run_socket only calls recv() on what it is given.
        self.nfq.run_socket(self._batch.refill())  # type: ignore[arg-type]

    def close(self) -> None:
        if self._batch is not None:
            self._batch.sock.detach()  # the fd is the queue's: NetfilterQueue closes it
        self.nfq.unbind()
        self.raw.close()

    def handle(self, packet: Packet) -> None:
        try:
            buf = bytearray(packet.get_payload())
            now = self.clock()
            if packet.hook == NF_INET_LOCAL_IN:
                action, data = self.director.hook_in(buf, now, packet.get_mark())
            else:
                action, data = self.director.hook_out(buf, now)
            if action == ACCEPT:
                if isinstance(data, bytearray):
                    packet.set_payload(bytes(data))
                packet.accept()
                return
            if action == SEND:
                assert isinstance(data, bytearray)
                self._send(data)
            elif action == DIRECT:
                assert isinstance(data, Frame)
                self.neighbours.send(data, now)
            packet.drop()
        except Exception:
            self.errors["worker_exception"] += 1
            log.exception("packet handling failed; packet dropped")
            packet.drop()

    def _send(self, data: bytearray) -> None:
        try:
            self.raw.sendto(data, (socket.inet_ntoa(data[16:20]), 0))
        except OSError as err:
            self.errors[f"send_{err.errno}"] += 1


class _Batch:
    """A stand-in for the queue's socket that NetfilterQueue.run_socket reads from: it
    hands out BATCH messages (one packet each), then says EAGAIN, which ends the run."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.left = 0

    def refill(self) -> _Batch:
        self.left = BATCH
        return self

    def recv(self, size: int) -> bytes:
        if self.left <= 0:
            raise BlockingIOError(errno.EAGAIN, "batch done")
        self.left -= 1
        return self.sock.recv(size)
