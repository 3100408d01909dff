"""The NFQUEUE verdict worker: the thin shell around ``Director.hook_in/hook_out``.

One packet: copy the payload, hand it to the core with the time, carry out the verdict.
ACCEPT reinjects the packet (with its rewritten bytes if any); SEND drops the queued
original and sends the rewritten packet, at the batch's end, from a raw socket of its
family (IPv4 or IPv6, IPPROTO_RAW: the header included), routed by its new
destination, marked so the director's own OUTPUT rules leave it alone (in fragments
when it is an IPv4 packet larger than the way out that may be fragmented); DIRECT
drops the original and hands the unchanged packet to the real server's MAC (VS/DR),
at the batch's end too; DROP drops.  An exception on one packet is counted and that
packet dropped; the worker goes on.

One worker per queue: requests (LOCAL_IN) on one, NAT replies (FORWARD) on the next.
A queue carries both families: the ip6tables hooks send IPv6 packets to the same
queues (NFQNL_CFG_CMD_PF_BIND is a no-op since Linux 3.8: a queue takes every family).
NetfilterQueue binds the queue; the worker then speaks the queue's netlink protocol
itself on the queue's socket (director/shell/nfqueue.py):

- Jumbo frames and GSO: NetfilterQueue caps the copy range at 4,016 bytes and reads
  4,096-byte messages.  The worker sets the copy range to the kernel's largest
  (NFQNL_MSG_CONFIG, as ``nfq_set_mode`` sends it), reads each message whole into a
  64 KiB + headers buffer, and gives the socket a receive buffer for a burst of them.
  The reply queue also gets NFQA_CFG_F_GSO: the kernel hands over a GSO super-packet
  (up to 64 KiB, many segments) as one message instead of cutting it first, with a
  partial checksum (NFQA_SKB_INFO), and the core rewrites it once (xmit/nat.py).  The
  request queue keeps the flag off: requests are sent on by a raw socket, which takes
  no super-packets.
- Fewer system calls: the verdicts of one batch (the packets that were waiting, up to
  BATCH) go to the kernel as consecutive NFQNL_MSG_VERDICT messages, payloads
  included, in one sendmsg; the send buffer is sized for such a batch.  A run of
  consecutive plain verdicts alike (no payload, no mark: the request queue's drops
  after SEND) goes as one NFQNL_MSG_VERDICT_BATCH for the run's last id.  The kernel
  gives it to every packet still in the queue's list up to that id; the list holds,
  in id order, only the packets the socket was handed, and every one read before had
  its verdict earlier in the same stream, so the batch covers exactly the run (and a
  packet whose message could not be read, which would otherwise wait for the queue's
  end, dropped there as well).
- The interpreter's work of a batch together, then the kernel's: the packets a batch
  sends itself (SEND, DIRECT) leave after every packet of the batch had its verdict
  decided, in their order.  Each such send does the receiver's work in the sender's
  context (a veth peer's whole receive path, the real server's TCP stack in a lab);
  sent one by one between packets it would leave the interpreter's caches cold for
  the next.
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
from socket import inet_ntoa

from netfilterqueue import NetfilterQueue

from director.core.engine import Director
from director.core.fragment import fragment
from director.core.packet import SKB_CSUMNOTREADY, SKB_GSO
from director.core.route import Frame
from director.core.xmit import ACCEPT, DIRECT, DROP, MARK, SEND
from director.shell.netlink import Neighbours
from director.shell.nfqueue import (
    NF_ACCEPT,
    NF_DROP,
    NFQA_CFG_F_GSO,
    NLMSG_ERROR,
    PACKET_TYPE,
    PADS,
    REWRITTEN_HEAD,
    KernelQueue,
    PacketParser,
    VerdictHeads,
    config_answer,
    config_message,
    error_code,
    message_type,
)

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
# The send buffer (doubled too): netlink refuses a send above it (EMSGSIZE), and one
# batch of verdicts with rewritten super-packets is up to BATCH * 64 KiB.
SOCK_SNDBUF = 4 << 20
# Verdicts go out when this many bytes of them are pending, else at the batch's end.
SEND_CHUNK = 1 << 20
CONFIG_TIMEOUT = 2.0
SO_SNDBUFFORCE = 32  # asm-generic/socket.h; the socket module does not name it

IP_RECVERR = 11  # linux/in.h
IPV6_RECVERR = 25  # linux/in6.h
MSG_ERRQUEUE = 0x2000
# struct sock_extended_err (linux/errqueue.h): errno, origin, type, code, pad, info, data
_EXTENDED_ERR = struct.Struct("=IBBBBII")


class Worker:
    """The verdict worker of one queue; ``gso``: take GSO super-packets whole."""

    def __init__(
        self,
        director: Director,
        queue: int,
        mark: int,
        neighbours: Neighbours,
        clock: Callable[[], float] = time.monotonic,
        gso: bool = False,
    ) -> None:
        self._setup(director, queue, neighbours.errors, clock, gso)
        self.neighbours = neighbours
        self.nfq = NetfilterQueue()
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        self.raw.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)  # to learn the MTU it refuses
        # IPv6: IPPROTO_RAW implies the header included (inet6_create sets hdrincl);
        # none on a host without IPv6 (no IPv6 packet comes either).
        self.raw6: socket.socket | None = None
        try:
            self.raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except OSError as err:
            log.warning("no IPv6 raw socket (%s): IPv6 packets are not sent", err)
        else:
            self.raw6.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            self.raw6.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)

    def _setup(
        self,
        director: Director,
        queue: int,
        errors: Counter[str],
        clock: Callable[[], float],
        gso: bool,
    ) -> None:
        """The worker's own state, no socket yet."""
        self.director = director
        self.queue = queue
        self.gso = gso
        self.clock = clock
        # One tally of what the shell could not do (send errors, unresolved neighbours).
        self.errors = errors
        # What passed: packets taken (each gets one verdict), of them GSO and
        # partial-checksum ones, and the sends that carried the verdicts.
        self.packets = self.gso_packets = self.partial_packets = 0
        self.verdict_sends = 0
        self.sock: socket.socket | None = None
        # The identification of the datagrams it fragments itself whose id is 0 (a
        # tunnel's outer header): the raw socket would fill one per fragment
        # (ip_select_ident), and fragments of differing ids never reassemble.
        self._ident = int.from_bytes(os.urandom(2), "big")
        self._heads = VerdictHeads(queue)
        self._head, self._batch = self._heads.head, self._heads.batch
        # The verdict of the plain verdicts (no payload, no mark) that end the pending
        # ones, -1 if none do: the next packet's same verdict joins them in a batch.
        self._run = -1
        self._parse = PacketParser().parse
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)
        self._out: list[bytes | bytearray] = []  # the pending verdicts, piece by piece
        self._out_bytes = 0
        self._send_limit = SEND_CHUNK  # set by bind() from the buffer it got
        self._pending: list[bytearray | Frame] = []  # the batch's own sends, in order

    def bind(self) -> None:
        self.nfq.bind(self.queue, _unused, max_len=QUEUE_MAXLEN, sock_len=SOCK_RCVBUF)
        sock = socket.socket(fileno=self.nfq.get_fd())
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCK_SNDBUF)
        except OSError:  # not CAP_NET_ADMIN: as much as net.core.wmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_SNDBUF)
        # What is pending stays below the buffer by one whole message at least.
        sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self._send_limit = max(min(SEND_CHUNK, sndbuf - RECV_SIZE - 64), 1)
        self.sock = sock
        flags = NFQA_CFG_F_GSO if self.gso else 0
        answer = self._configure(config_message(self.queue, COPY_RANGE, flags, NFQA_CFG_F_GSO))
        if answer in (errno.EOPNOTSUPP, errno.EINVAL) and self.gso:
            log.warning("NFQUEUE %d: the kernel takes no GSO flag: %s; packets come cut",
                        self.queue, os.strerror(answer))  # fmt: skip
            self.gso = False
            answer = self._configure(config_message(self.queue, COPY_RANGE))
        if answer:
            raise OSError(answer, f"NFQUEUE {self.queue} copy range and flags: "
                                  f"{os.strerror(answer)}")  # fmt: skip

    def _configure(self, request: bytes) -> int:
        """Send a queue configuration (nfqnl_recv_config: the copy range, the flags) and
        wait for the kernel's answer, its errno (0: done); packets queued meanwhile get
        their verdicts as usual.  If the socket overflowed meanwhile (ENOBUFS: the
        answer may be lost with the packets), ask again: the setting is the same."""
        assert self.sock is not None
        sock = self.sock
        sock.send(request)
        deadline = self.clock() + CONFIG_TIMEOUT
        while True:
            left = deadline - self.clock()
            if left <= 0:
                raise OSError(errno.ETIMEDOUT, "NFQUEUE configuration: no answer from the kernel")
            readable, _, _ = select.select([sock], [], [], left)
            if not readable:
                continue
            try:
                got = sock.recv_into(self._buffer, RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                sock.send(request)
                continue
            answer = config_answer(self._view[:got])
            if answer is not None:
                self._flush()
                return answer
            now = self.clock()
            self._message(got, now)
            self._send_pending(now)

    @property
    def director(self) -> Director:
        return self._director

    @director.setter
    def director(self, director: Director) -> None:
        """The core, and its two hooks as bound methods (one lookup less a packet)."""
        self._director = director
        self._hook_in, self._hook_out = director.hook_in, director.hook_out

    def fileno(self) -> int:
        fd: int = self.nfq.get_fd()
        return fd

    def run_once(self) -> None:
        """Give verdicts on the packets waiting in the queue, at most BATCH of them, then
        return: under a flood the daemon's loop still serves the control socket, the
        connection collector and the watchdog between batches.  The batch is one
        instant (the clock is read once, as the kernel's jiffies stand still for a
        burst)."""
        assert self.sock is not None, "bind() first"
        recv_into, buffer, message = self.sock.recv_into, self._buffer, self._message
        now = self.clock()
        try:
            for _ in range(BATCH):
                try:
                    got = recv_into(buffer, RECV_SIZE)
                except BlockingIOError:
                    break
                except OSError as err:
                    if err.errno != errno.ENOBUFS:
                        raise
                    # The socket overflowed: the kernel counted those packets dropped
                    # (queue_user_dropped); the queue goes on.
                    self.errors["nfqueue_enobufs"] += 1
                    continue
                message(got, now)
        finally:
            self._send_pending(now)
            self._flush()

    def close(self) -> None:
        if self.sock is not None:
            self._flush()
            self.sock.detach()  # the fd is the queue's: NetfilterQueue closes it
            self.sock = None
        self.nfq.unbind()
        self.raw.close()
        if self.raw6 is not None:
            self.raw6.close()

    def counters(self) -> dict[str, int]:
        """What passed this worker, for the metrics."""
        return {
            "packets": self.packets,
            "gso_packets": self.gso_packets,
            "partial_checksum_packets": self.partial_packets,
            "verdicts": self.packets,
            "verdict_sends": self.verdict_sends,
        }

    def _message(self, got: int, now: float) -> None:
        """One message from the kernel: a packet gets its verdict queued.  The core is
        called here rather than through ``handle`` (the same steps, one call less a
        packet), and a rewritten packet to reinject, the common verdict, is queued
        without a call more."""
        try:
            packet_id, hook, mark, skb_info, at, length, _ = self._parse(self._view, got)
        except ValueError:
            self._other_message(got)
            return
        self.packets += 1
        if skb_info:
            self._count_skb_info(skb_info)
        buf = self._buffer[at : at + length]
        try:
            if hook == NF_INET_FORWARD:
                action, data = self._hook_out(buf, now, skb_info)
            else:
                action, data = self._hook_in(buf, now, mark)
        except Exception:
            action, data = self._failed()
        out = self._out
        if action == ACCEPT and isinstance(data, bytearray):
            size = len(data)
            out += (self._head(packet_id, NF_ACCEPT, size), data, PADS[size & 3])
            self._out_bytes += size + 40
            self._run = -1
        else:
            verdict, mark = self._carry_out(hook, action, data, now)
            if verdict == self._run and not mark:
                # The previous packet's plain verdict was the same: one batch verdict
                # for both (and the run before them), in its place.
                out[-1] = self._batch(packet_id, verdict)
            else:
                out.append(self._head(packet_id, verdict, 0, mark))
                self._out_bytes += 40 if mark else 32
                self._run = -1 if mark else verdict
        if self._out_bytes >= self._send_limit:
            self._flush()

    def _other_message(self, got: int) -> None:
        """A message that is no packet the parser could read: the error a verdict met
        (NLMSG_ERROR), or one that is malformed."""
        view = self._view
        kind = message_type(view) if got >= 16 else PACKET_TYPE  # 16: struct nlmsghdr
        if kind == PACKET_TYPE:
            self.errors["nfqueue_bad_message"] += 1
        elif kind == NLMSG_ERROR:
            code = error_code(view[:got])
            if code:
                self.errors[f"verdict_{errno.errorcode.get(code, code)}"] += 1

    def _count_skb_info(self, skb_info: int) -> None:
        if skb_info & SKB_GSO:
            self.gso_packets += 1
        if skb_info & SKB_CSUMNOTREADY:
            self.partial_packets += 1

    def handle(
        self, hook: int, mark: int, skb_info: int, buf: bytearray, now: float
    ) -> tuple[int, bytearray | None, int]:
        """The verdict on one packet (NF_ACCEPT or NF_DROP), its new bytes if any, and
        the firewall mark it goes on with (0: its own), as ``_message`` gives it.  A
        request comes at LOCAL_IN, or at PRE_ROUTING as a new flow of the kernel fast
        path; a reply at FORWARD."""
        try:
            if hook == NF_INET_FORWARD:
                action, data = self.director.hook_out(buf, now, skb_info)
            else:
                action, data = self.director.hook_in(buf, now, mark)
        except Exception:
            action, data = self._failed()
        if action == ACCEPT and isinstance(data, bytearray):
            return NF_ACCEPT, data, 0
        verdict, mark = self._carry_out(hook, action, data, now)
        return verdict, None, mark

    def _carry_out(self, hook: int, action: int, data: object, now: float) -> tuple[int, int]:
        """The verdict (and the mark to go on with, 0: its own) for what the core said
        of a packet that is not reinjected rewritten: SEND and DIRECT leave at the
        batch's end (``_send_pending``) and drop the original."""
        if action == ACCEPT:
            return NF_ACCEPT, 0
        if action == MARK and isinstance(data, int):
            if hook != NF_INET_LOCAL_IN:
                return NF_ACCEPT, data
            # A packet of a fast-path connection that conntrack did not take (it
            # found it INVALID: out of window, ...) reached the host: dropped, as a
            # firewall drops INVALID, not answered with a reset by the host's stack.
            self.errors["fast_invalid"] += 1
        elif action in (SEND, DIRECT) and isinstance(data, bytearray | Frame):
            self._pending.append(data)
        return NF_DROP, 0

    def _failed(self) -> tuple[int, None]:
        """The core raised on a packet: counted, logged, the packet dropped."""
        self.errors["worker_exception"] += 1
        log.exception("packet handling failed; packet dropped")
        return DROP, None

    def _send_pending(self, now: float) -> None:
        """Send what the batch's packets left to send, in their order: rewritten
        packets by the raw sockets, VS/DR frames to their real server's MAC."""
        pending = self._pending
        if not pending:
            return
        for data in pending:
            try:
                if isinstance(data, Frame):
                    self.neighbours.send(data, now)
                else:
                    self._send(data)
            except Exception:
                self.errors["worker_exception"] += 1
                log.exception("sending a packet failed; packet dropped")
        pending.clear()

    def _flush(self) -> None:
        """Send the pending verdicts, all in one sendmsg (one by one if that fails)."""
        out = self._out
        if not out or self.sock is None:
            return
        self._out_bytes = 0
        self._run = -1
        if not self._sendmsg(out):
            begin = 0
            while begin < len(out):  # a rewritten packet's message: head, packet, padding
                end = begin + (3 if len(out[begin]) == REWRITTEN_HEAD else 1)
                self._sendmsg(out[begin:end])
                begin = end
        out.clear()  # in place: run_once holds this list

    def _sendmsg(self, pieces: list[bytes | bytearray]) -> bool:
        assert self.sock is not None
        try:
            self.sock.sendmsg(pieces)
        except OSError as err:
            self.errors[f"verdict_send_{errno.errorcode.get(err.errno or 0, err.errno)}"] += 1
            return False
        self.verdict_sends += 1
        return True

    def _send(self, data: bytearray) -> None:
        """Send a rewritten packet from the raw socket of its family; when that fails,
        ``_send_failed``."""
        if data[0] >> 4 == 6:
            if self.raw6 is None:
                self.errors["send_no_ipv6"] += 1
                return
            sock = self.raw6
            destination: tuple[str, int] = (socket.inet_ntop(socket.AF_INET6, data[24:40]), 0)
        else:
            sock = self.raw
            destination = (inet_ntoa(data[16:20]), 0)
        try:
            sock.sendto(data, destination)
        except OSError as err:
            self._send_failed(data, sock, destination, err)

    def _send_failed(self, data: bytearray, sock: socket.socket,
                     destination: tuple[str, int], failed: OSError) -> None:  # fmt: skip
        """A send refused: an IPv4 packet larger than the way out (a datagram the
        kernel reassembled before LOCAL_IN) goes as fragments, as the kernel's output
        path would send it (a raw socket with the header included never fragments); an
        IPv6 one is counted (``send_90``: the core answered what did not fit its route
        with its own "packet too big"), as is any other error."""
        too_big = failed.errno == errno.EMSGSIZE and sock is self.raw
        if too_big and not data[4] | data[5]:
            self._ident = (self._ident + 1) & 0xFFFF or 1
            data[4:6] = self._ident.to_bytes(2, "big")  # fragment() sums each header anew
        pieces = fragment(data, reported_mtu(sock)) if too_big else []
        if not pieces:
            if failed.errno == errno.EMSGSIZE and sock is self.raw6:
                reported_mtu(sock)  # empty the error queue
            self.errors[f"send_{failed.errno}"] += 1
            return
        for piece in pieces:
            try:
                sock.sendto(piece, destination)
            except OSError as err:
                self.errors[f"send_{err.errno}"] += 1
                return


# The error queue's message of each family: (cmsg level, cmsg type).
_RECVERR = {socket.AF_INET: (socket.IPPROTO_IP, IP_RECVERR),
            socket.AF_INET6: (socket.IPPROTO_IPV6, IPV6_RECVERR)}  # fmt: skip


def reported_mtu(sock: socket.socket) -> int:
    """The MTU the kernel refused a packet of ``sock`` for, or 0: raw_send_hdrinc
    (IPv4, IP_RECVERR) and rawv6_send_hdrinc (IPv6, IPV6_RECVERR, by ipv6_local_error)
    queue it on the socket's error queue, ee_info of a sock_extended_err."""
    mtu = 0
    wanted = _RECVERR[sock.family]
    while True:
        try:
            _, ancillary, _, _ = sock.recvmsg(0, 512, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except OSError:  # the queue is empty
            return mtu
        for level, kind, data in ancillary:
            if (level, kind) == wanted and len(data) >= 16:
                ee_errno, _, _, _, _, ee_info, _ = _EXTENDED_ERR.unpack_from(data)
                if ee_errno == errno.EMSGSIZE:
                    mtu = ee_info


def queue_sample(worker: Worker, kernel: dict[int, KernelQueue]) -> dict[str, int]:
    """The worker's counters and the kernel's for its queue (absent: not in the table)."""
    counts = worker.counters()
    entry = kernel.get(worker.queue)
    if entry is not None:
        counts.update(
            waiting=entry.waiting,
            kernel_dropped=entry.dropped,
            kernel_user_dropped=entry.user_dropped,
            kernel_id_sequence=entry.id_sequence,
        )
    return counts


def _unused(packet: object) -> None:
    """NetfilterQueue's callback: never called, the worker reads the socket itself."""
