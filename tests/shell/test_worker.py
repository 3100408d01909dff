"""The copy-range message the worker sends on the queue's socket, byte for byte from
the kernel's headers: struct nlmsghdr (linux/netlink.h), struct nfgenmsg
(linux/netfilter/nfnetlink.h), NFQNL_MSG_CONFIG = 2 with NFNL_SUBSYS_QUEUE = 3 and
NFQA_CFG_PARAMS = 2 carrying the packed struct nfqnl_msg_config_params { __be32
copy_range; __u8 copy_mode; } with NFQNL_COPY_PACKET = 2
(linux/netfilter/nfnetlink_queue.h), read by nfqnl_recv_config."""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections import Counter

import pytest

from director.core.engine import Director
from director.shell import worker as worker_module
from director.shell.nfqueue import NFQA_CFG_F_GSO, config_answer, config_message
from director.shell.worker import Worker
from tests.core.packets import tcp


def test_config_message_layout() -> None:
    msg = config_message(queue=7, copy_range=0xFFFF)
    length, kind, flags, seq, portid = struct.unpack_from("=IHHII", msg)
    assert (length, len(msg)) == (32, 32)  # 16 header + 4 nfgenmsg + 9 attribute, padded
    assert kind == 3 << 8 | 2  # NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG
    assert flags == 0x1 | 0x4  # NLM_F_REQUEST | NLM_F_ACK
    assert portid == 0  # to the kernel
    assert msg[16:20] == bytes([0, 0, 0, 7])  # AF_UNSPEC, NFNETLINK_V0, res_id (be16) 7
    assert struct.unpack_from("=HH", msg, 20) == (9, 2)  # nla_len 4 + 5, NFQA_CFG_PARAMS
    assert msg[24:29] == bytes([0, 0, 0xFF, 0xFF, 2])  # be32 range, NFQNL_COPY_PACKET
    assert msg[29:] == b"\0\0\0"
    assert seq != 0


def test_config_answer_tells_the_ack_from_a_packet() -> None:
    sent = config_message(queue=0, copy_range=0xFFFF)
    seq = struct.unpack_from("=I", sent, 8)[0]

    def error(code: int, seq: int) -> bytes:  # NLMSG_ERROR: int error, then the request
        return struct.pack("=IHHII", 36, 2, 0, seq, 1234) + struct.pack("=i", code) + sent[:16]

    assert config_answer(error(0, seq)) == 0
    assert config_answer(error(-1, seq)) == 1  # EPERM: the queue is another socket's
    assert config_answer(error(0, seq + 1)) is None  # someone else's answer
    packet = struct.pack("=IHHII", 100, 3 << 8 | 0, 0, 0, 0) + bytes(84)  # NFQNL_MSG_PACKET
    assert config_answer(packet) is None


def _worker(sock: socket.socket) -> Worker:
    """A worker with no queue, no raw socket: only what configuring and verdicts use."""
    worker = Worker.__new__(Worker)
    worker._setup(Director(), 0, Counter(), time.monotonic, gso=True)
    worker.sock = sock
    return worker


def _ack(code: int, request: bytes) -> bytes:
    seq = struct.unpack_from("=I", request, 8)[0]
    return struct.pack("=IHHII", 36, 2, 0, seq, 0) + struct.pack("=i", code) + request[:16]


def _queued_packet(packet_id: int) -> bytes:
    """An NFQNL_MSG_PACKET for a reply of no connection (it passes: NF_ACCEPT)."""
    ip = bytes(tcp("198.18.0.2", "203.0.113.10", 80, 40000))
    attrs = struct.pack("=HH", 11, 1) + struct.pack("!IHB", packet_id, 0x0800, 2) + b"\0"
    attrs += struct.pack("=HH", 4 + len(ip), 10) + ip
    body = bytes([2, 0, 0, 0]) + attrs
    return struct.pack("=IHHII", 16 + len(body), 3 << 8, 0, 0, 0) + body


REQUEST = config_message(0, 0xFFFF, NFQA_CFG_F_GSO, NFQA_CFG_F_GSO)


def test_configure_waits_for_the_ack_and_gives_verdicts_meanwhile() -> None:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, kernel:
        ours.setblocking(False)
        kernel.send(_queued_packet(7))  # a packet queued before the answer
        kernel.send(_ack(0, REQUEST))
        assert _worker(ours)._configure(REQUEST) == 0
        assert kernel.recv(1000) == REQUEST  # what the kernel was sent
        verdict = kernel.recv(1000)  # then the packet's verdict: NF_ACCEPT, id 7
        assert struct.unpack_from("=IH", verdict) == (32, 3 << 8 | 1)
        assert struct.unpack_from("!II", verdict, 24) == (1, 7)


def test_configure_refused_or_unanswered_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, kernel:
        ours.setblocking(False)
        kernel.send(_ack(-errno.EPERM, REQUEST))
        assert _worker(ours)._configure(REQUEST) == errno.EPERM
        monkeypatch.setattr(worker_module, "CONFIG_TIMEOUT", 0.05)
        with pytest.raises(OSError, match="no answer") as silent:
            _worker(ours)._configure(REQUEST)
        assert silent.value.errno == errno.ETIMEDOUT


def test_a_fast_path_packet_at_local_in_is_dropped_not_delivered() -> None:
    """On the kernel fast path a connection's packets are conntrack's; one that reaches
    LOCAL_IN was not taken by it (INVALID) and would be answered with a reset by the
    host's stack: it is dropped.  Its first packet, at PRE_ROUTING, goes on marked."""
    from director.ctl.ipvsadm import load_rules
    from director.shell.nfqueue import NF_ACCEPT, NF_DROP
    from director.shell.worker import NF_INET_LOCAL_IN
    from tests.core.packets import CLIENT, VIP

    worker = Worker.__new__(Worker)
    worker._setup(Director(), 0, Counter(), time.monotonic, gso=False)
    worker.director.configure(
        load_rules(f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r 198.18.0.2:80 -m\n")
    )
    for svc in worker.director.services:
        for dest in svc.dests:
            dest.fast_mark = 0x4C000001
    syn = tcp(CLIENT, VIP, 40000, 80, flags=0x02)
    assert worker.handle(0, 0, 0, syn, 1.0) == (NF_ACCEPT, None, 0x4C000001)  # PRE_ROUTING
    late = tcp(CLIENT, VIP, 40000, 80, flags=0x10)
    assert worker.handle(NF_INET_LOCAL_IN, 0, 0, late, 2.0) == (NF_DROP, None, 0)
    assert worker.errors["fast_invalid"] == 1


class _Scripted:
    """A core that answers each packet as told, in order (the shell's part alone)."""

    def __init__(self, answers: list[tuple[int, object]]) -> None:
        self.answers = answers

    def hook_in(self, buf: bytearray, now: float, mark: int = 0) -> tuple[int, object]:
        return self.answers.pop(0)

    hook_out = hook_in


def _verdicts(sent: bytes) -> list[tuple[int, int, int, int]]:
    """(message type, verdict, id, length) of each message of one send."""
    found, at = [], 0
    while at < len(sent):
        length, kind = struct.unpack_from("=IH", sent, at)
        verdict, packet_id = struct.unpack_from("!II", sent, at + 24)
        found.append((kind, verdict, packet_id, length))
        at += length
    return found


def test_a_run_of_plain_verdicts_goes_as_one_batch_verdict() -> None:
    """Consecutive plain verdicts alike (the drops after SEND) become one
    NFQNL_MSG_VERDICT_BATCH (type 3 << 8 | 3) for the run's last id, which
    nfqnl_recv_verdict_batch (net/netfilter/nfnetlink_queue.c) gives to every packet
    still queued up to that id; a rewritten packet, a mark or another verdict ends the
    run, and a lone plain verdict stays an NFQNL_MSG_VERDICT."""
    from director.core.xmit import ACCEPT, DROP, MARK, SEND

    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, kernel:
        worker = _worker(ours)
        rewritten = bytearray(tcp("198.18.0.2", "203.0.113.10", 80, 40000))
        answers: list[tuple[int, object]] = [
            (SEND, bytearray(b"x")), (SEND, bytearray(b"y")), (DROP, None),  # 1-3: drops
            (ACCEPT, rewritten),  # 4: its payload
            (DROP, None),  # 5: alone
            (ACCEPT, None), (ACCEPT, None),  # 6-7: plain accepts
            (MARK, 0x4C000001), (MARK, 0x4C000001),  # 8-9: marks, each its own
            (DROP, None), (DROP, None),  # 10-11
        ]  # fmt: skip
        worker.director = _Scripted(answers)  # type: ignore[assignment]
        buffer = worker._buffer
        for packet_id in range(1, 12):
            msg = _queued_packet(packet_id)
            buffer[: len(msg)] = msg
            worker._message(len(msg), 1.0)
        worker._flush()
        batch, verdict = 3 << 8 | 3, 3 << 8 | 1
        assert _verdicts(kernel.recv(1 << 16)) == [
            (batch, 0, 3, 32),
            (verdict, 1, 4, 36 + len(rewritten) + (-len(rewritten) % 4)),
            (verdict, 0, 5, 32),
            (batch, 1, 7, 32),
            (verdict, 1, 8, 40),
            (verdict, 1, 9, 40),
            (batch, 0, 11, 32),
        ]
        assert worker.counters()["verdicts"] == 11
        assert worker._pending == [bytearray(b"x"), bytearray(b"y")]


class _OneAtATime:
    """A socket that refuses a send of more than one netlink message (as the kernel
    refuses a send larger than the socket's buffer) and keeps what it took."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendmsg(self, pieces: list[bytes | bytearray]) -> int:
        data = b"".join(pieces)
        if struct.unpack_from("=I", data)[0] != len(data):
            raise OSError(errno.EMSGSIZE, "too long")
        self.sent.append(data)
        return len(data)


def test_a_refused_send_goes_again_one_whole_message_at_a_time() -> None:
    """When the batch's one sendmsg fails, each verdict message goes alone, whole (its
    head, the rewritten packet and its padding: nlmsg_len bytes), in order."""
    from director.core.xmit import ACCEPT, DROP

    sock = _OneAtATime()
    worker = _worker(sock)  # type: ignore[arg-type]
    odd = bytearray(tcp("198.18.0.2", "203.0.113.10", 80, 40000, data=b"abc"))
    even = bytearray(tcp("198.18.0.2", "203.0.113.10", 80, 40000))
    answers: list[tuple[int, object]] = [
        (ACCEPT, odd), (DROP, None), (DROP, None), (ACCEPT, even), (ACCEPT, None),
    ]  # fmt: skip
    worker.director = _Scripted(answers)  # type: ignore[assignment]
    for packet_id in range(1, 6):
        msg = _queued_packet(packet_id)
        worker._buffer[: len(msg)] = msg
        worker._message(len(msg), 1.0)
    worker._flush()
    batch, verdict = 3 << 8 | 3, 3 << 8 | 1
    assert [_verdicts(m)[0] for m in sock.sent] == [
        (verdict, 1, 1, 36 + len(odd) + (-len(odd) % 4)),
        (batch, 0, 3, 32),
        (verdict, 1, 4, 36 + len(even)),
        (verdict, 1, 5, 32),
    ]
    assert sock.sent[0][36 : 36 + len(odd)] == odd and len(odd) % 4
    assert worker.errors["verdict_send_EMSGSIZE"] == 1
    assert worker.verdict_sends == 4


class _Raw:
    """A raw socket that keeps what it was given, or refuses it with ``refuse``."""

    def __init__(self, family: int, refuse: int = 0) -> None:
        self.family, self.refuse = family, refuse
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytearray, destination: tuple[str, int]) -> int:
        self.sent.append((bytes(data), destination))
        if self.refuse:
            raise OSError(self.refuse, os.strerror(self.refuse))
        return len(data)


def test_the_batch_sends_each_packet_from_its_familys_raw_socket_in_order() -> None:
    """SEND: each rewritten packet leaves, after the batch's verdicts were decided, from
    the raw socket of its IP version, to its own destination address (port 0: a raw
    socket's sendto names no port); a refused send is counted by its errno, once."""
    from tests.core.packets6 import tcp6

    worker = _worker(None)  # type: ignore[arg-type]
    worker.raw = _Raw(socket.AF_INET)  # type: ignore[assignment]
    worker.raw6 = _Raw(socket.AF_INET6)  # type: ignore[assignment]
    four = tcp("203.0.113.10", "198.18.0.2", 40000, 80)
    six = tcp6("2001:db8::10", "2001:db8:1::2", 40000, 80)
    other = tcp("203.0.113.10", "198.18.0.3", 40000, 80)
    worker._pending += [four, six, other]
    worker._send_pending(1.0)
    assert worker.raw.sent == [(four, ("198.18.0.2", 0)), (other, ("198.18.0.3", 0))]  # type: ignore[attr-defined]
    assert worker.raw6.sent == [(six, ("2001:db8:1::2", 0))]  # type: ignore[union-attr]
    assert worker._pending == [] and not worker.errors
    worker.raw = _Raw(socket.AF_INET, refuse=errno.EPERM)  # type: ignore[assignment]
    worker._pending.append(four)
    worker._send_pending(1.0)
    assert len(worker.raw.sent) == 1  # type: ignore[attr-defined]
    assert worker.errors == Counter({f"send_{errno.EPERM}": 1})
