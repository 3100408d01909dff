"""The NFQUEUE verdict worker: the thin shell around ``Director.hook_in/hook_out``.

One packet: copy the payload, hand it to the core with the time, carry out the verdict.
ACCEPT reinjects the packet (with its rewritten bytes if any); SEND drops the queued
original and sends the rewritten packet from a raw socket, routed by its new
destination, marked so the director's own OUTPUT rules leave it alone (in fragments
when it is larger than the way out and may be fragmented); DIRECT drops the
original and hands the unchanged packet to the real server's MAC (VS/DR); DROP drops.
An exception on one packet is counted and that packet dropped; the worker goes on.

Jumbo frames: NetfilterQueue's ``bind`` caps the copy range at 4,016 bytes and its
``run_socket`` asks for 4,096-byte messages, so a larger packet would reach the core cut
short.  The worker sets the queue's copy range itself (an NFQNL_MSG_CONFIG message on
the queue's own netlink socket, as ``nfq_set_mode`` sends it, with the kernel's
largest range), reads each message whole into a 64 KiB + headers buffer, and gives
the socket a receive buffer that holds a burst of jumbo packets.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable

from netfilterqueue import NetfilterQueue, Packet

from director.core.engine import Director
from director.core.fragment import fragment
from director.core.route import Frame
from director.core.xmit import ACCEPT, DIRECT, SEND
from director.shell.netlink import Neighbours

log = logging.getLogger(__name__)

NF_INET_LOCAL_IN = 1
NF_INET_FORWARD = 2
QUEUE_MAXLEN = 4096
BATCH = 64  # packets per turn of the daemon's loop
# The whole packet, up to the kernel's own cap (NFQNL_MAX_COPY_RANGE, 0xFFFF less
# the attribute header): IPv4's 65,535 bytes but for the last four.
COPY_RANGE = 0xFFFF
# One message: the packet and its attributes (headers, marks, interfaces: < 1 KiB).
RECV_SIZE = COPY_RANGE + 4096
# The socket's receive buffer (the kernel doubles the figure): a burst of ~1,000
# 9,000-byte packets, or ~240 of 64 KiB, while the loop is busy elsewhere.
SOCK_RCVBUF = 8 << 20

# The copy-mode message (linux/netfilter/nfnetlink_queue.h), nfnetlink framed.
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_CONFIG = 2
NFQA_CFG_PARAMS = 2
NFQNL_COPY_PACKET = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, portid
_CONFIG_SEQ = 0x6A756D62  # ours, to tell the kernel's answer from packets
CONFIG_TIMEOUT = 2.0

IP_RECVERR = 11  # linux/in.h
MSG_ERRQUEUE = 0x2000
# struct sock_extended_err (linux/errqueue.h): errno, origin, type, code, pad, info, data
_EXTENDED_ERR = struct.Struct("=IBBBBII")


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
        self.raw.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)  # to learn the MTU it refuses

    def bind(self) -> None:
        self.nfq.bind(self.queue, self.handle, max_len=QUEUE_MAXLEN, sock_len=SOCK_RCVBUF)
        sock = socket.socket(fileno=self.nfq.get_fd())
        sock.setblocking(False)
        self._batch = _Batch(sock)
        self._set_copy_range(sock)

    def _set_copy_range(self, sock: socket.socket) -> None:
        """Ask the kernel for whole packets (nfqnl_recv_config, NFQA_CFG_PARAMS) and
        wait for its answer; packets queued meanwhile get their verdicts as usual.  If
        the socket overflowed meanwhile (ENOBUFS: the answer may be lost with the
        packets), ask again: the setting is the same each time."""
        request = config_message(self.queue, COPY_RANGE)
        sock.send(request)
        deadline = self.clock() + CONFIG_TIMEOUT
        while True:
            left = deadline - self.clock()
            if left <= 0:
                raise OSError(errno.ETIMEDOUT, "NFQUEUE copy range: no answer from the kernel")
            readable, _, _ = select.select([sock], [], [], left)
            if not readable:
                continue
            try:
                message = sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                sock.send(request)
                continue
            answer = config_answer(message)
            if answer is None:  # a packet: handle it as run_once would
                self.nfq.run_socket(_Replay(message))  # type: ignore[arg-type]
                continue
            if answer:
                raise OSError(answer, f"NFQUEUE copy range: {os.strerror(answer)}")
            return

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
        """Send a rewritten packet; one larger than the way out (a datagram the kernel
        reassembled before LOCAL_IN) goes as fragments, as the kernel's output path
        would send it (a raw socket with the header included never fragments)."""
        destination = (socket.inet_ntoa(data[16:20]), 0)
        try:
            self.raw.sendto(data, destination)
            return
        except OSError as err:
            failed = err
        pieces = fragment(data, self._reported_mtu()) if failed.errno == errno.EMSGSIZE else []
        if not pieces:
            self.errors[f"send_{failed.errno}"] += 1
            return
        for piece in pieces:
            try:
                self.raw.sendto(piece, destination)
            except OSError as err:
                self.errors[f"send_{err.errno}"] += 1
                return

    def _reported_mtu(self) -> int:
        """The MTU the kernel refused a packet for (raw_send_hdrinc queues it on the
        socket's error queue with IP_RECVERR: ee_info of a sock_extended_err), or 0."""
        mtu = 0
        while True:
            try:
                _, ancillary, _, _ = self.raw.recvmsg(0, 512, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except OSError:  # the queue is empty
                return mtu
            for level, kind, data in ancillary:
                if level == socket.IPPROTO_IP and kind == IP_RECVERR and len(data) >= 16:
                    ee_errno, _, _, _, _, ee_info, _ = _EXTENDED_ERR.unpack_from(data)
                    if ee_errno == errno.EMSGSIZE:
                        mtu = ee_info


def config_message(queue: int, copy_range: int) -> bytes:
    """NFQNL_MSG_CONFIG with NFQA_CFG_PARAMS (copy_range, copy_mode=NFQNL_COPY_PACKET)
    for ``queue``, asking for an acknowledgement (struct nfqnl_msg_config_params is
    packed: a big-endian u32 and a u8, padded to 4 in the attribute)."""
    params = struct.pack("!IB", copy_range, NFQNL_COPY_PACKET)
    attr = struct.pack("=HH", 4 + len(params), NFQA_CFG_PARAMS) + params
    attr += b"\0" * (-len(attr) % 4)
    nfgen = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue)  # family, NFNETLINK_V0, res_id
    body = nfgen + attr
    kind = NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_CONFIG
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK,
                            _CONFIG_SEQ, 0)  # fmt: skip
    return header + body


def config_answer(message: bytes) -> int | None:
    """The errno of the kernel's answer to ``config_message`` (0: done), or None when
    ``message`` is something else (a queued packet)."""
    if len(message) < _NLMSGHDR.size + 4:
        return None
    _, kind, _, seq, _ = _NLMSGHDR.unpack_from(message)
    if kind != NLMSG_ERROR or seq != _CONFIG_SEQ:
        return None
    error: int = struct.unpack_from("=i", message, _NLMSGHDR.size)[0]
    return -error


class _Batch:
    """A stand-in for the queue's socket that NetfilterQueue.run_socket reads from: it
    hands out BATCH messages (one packet each), then says EAGAIN, which ends the run.
    Each message is read whole (RECV_SIZE, not the 4,096 bytes run_socket asks for)
    into one buffer, and only its own length is copied out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.left = 0
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)

    def refill(self) -> _Batch:
        self.left = BATCH
        return self

    def recv(self, size: int) -> bytes:
        if self.left <= 0:
            raise BlockingIOError(errno.EAGAIN, "batch done")
        self.left -= 1
        got = self.sock.recv_into(self._buffer, RECV_SIZE)
        return bytes(self._view[:got])


class _Replay:
    """One message already read, for run_socket (then EAGAIN)."""

    def __init__(self, message: bytes) -> None:
        self.message: bytes | None = message

    def recv(self, size: int) -> bytes:
        message, self.message = self.message, None
        if message is None:
            raise BlockingIOError(errno.EAGAIN, "replayed")
        return message
