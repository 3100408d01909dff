"""The NFQUEUE verdict worker: the thin shell around ``Director.hook_in/hook_out``.

One packet: copy the payload, hand it to the core with the time, carry out the verdict.
ACCEPT reinjects the packet (with its rewritten bytes if any); SEND drops the queued
original and sends the rewritten packet from a raw socket, routed by its new
destination, marked so the director's own OUTPUT rules leave it alone; DROP drops.
An exception on one packet is counted and that packet dropped; the worker goes on.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from collections.abc import Callable

from netfilterqueue import NetfilterQueue, Packet

from director.core.engine import Director
from director.core.xmit import ACCEPT, SEND

log = logging.getLogger(__name__)

NF_INET_LOCAL_IN = 1
NF_INET_FORWARD = 2
QUEUE_MAXLEN = 4096


class Worker:
    def __init__(
        self,
        director: Director,
        queue: int,
        mark: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.director = director
        self.queue = queue
        self.clock = clock
        self.errors: Counter[str] = Counter()
        self.nfq = NetfilterQueue()
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)

    def bind(self) -> None:
        self.nfq.bind(self.queue, self.handle, max_len=QUEUE_MAXLEN)

    def fileno(self) -> int:
        fd: int = self.nfq.get_fd()
        return fd

    def run_once(self) -> None:
        """Give verdicts on every packet waiting in the queue, then return."""
        self.nfq.run(block=False)

    def close(self) -> None:
        self.nfq.unbind()
        self.raw.close()

    def handle(self, packet: Packet) -> None:
        try:
            buf = bytearray(packet.get_payload())
            if packet.hook == NF_INET_LOCAL_IN:
                action, data = self.director.hook_in(buf, self.clock(), packet.get_mark())
            else:
                action, data = self.director.hook_out(buf, self.clock())
            if action == ACCEPT:
                if isinstance(data, bytearray):
                    packet.set_payload(bytes(data))
                packet.accept()
                return
            if action == SEND:
                assert isinstance(data, bytearray)
                self._send(data)
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
