"""The NFQUEUE netlink messages the worker reads and writes itself, byte for byte as
the kernel's headers define them (linux/netlink.h, linux/netfilter/nfnetlink.h,
linux/netfilter/nfnetlink_queue.h) and net/netfilter/nfnetlink_queue.c reads them.

- ``config_message``: NFQNL_MSG_CONFIG with the copy range (NFQA_CFG_PARAMS) and queue
  flags (NFQA_CFG_MASK / NFQA_CFG_FLAGS, e.g. NFQA_CFG_F_GSO), read by nfqnl_recv_config;
- ``parse_packet``: the NFQNL_MSG_PACKET nfqnl_build_packet_message sends: packet id
  and hook (NFQA_PACKET_HDR), mark (NFQA_MARK), NFQA_SKB_INFO, the packet (NFQA_PAYLOAD);
  ``PacketParser`` reads the same, fast for messages laid out as earlier ones;
- ``verdict_head``: the head of an NFQNL_MSG_VERDICT (NFQA_VERDICT_HDR, then the header
  of an NFQA_PAYLOAD when the packet was rewritten), read by nfqnl_recv_verdict.  The
  kernel takes several such messages in one send (netlink_rcv_skb walks them all);
  ``VerdictHeads.batch``: an NFQNL_MSG_VERDICT_BATCH, one verdict (no payload, no
  mark) for every packet still queued up to an id, read by nfqnl_recv_verdict_batch.
- ``queue_table``: /proc/net/netfilter/nfnetlink_queue (seq_show): per queue the
  packets waiting, those the kernel dropped, and its packet id sequence.

Netlink headers are in host order; the nfnetlink payloads (res_id, ids, marks, flags)
in network order.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
PACKET_TYPE = NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET
VERDICT_TYPE = NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_VERDICT
CONFIG_TYPE = NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_CONFIG
VERDICT_BATCH_TYPE = NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_VERDICT_BATCH

# enum nfqnl_attr_type
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_PAYLOAD = 10
NFQA_CAP_LEN = 13
NFQA_SKB_INFO = 14
# enum nfqnl_attr_config
NFQA_CFG_PARAMS = 2
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_GSO = 1 << 2
NFQNL_COPY_PACKET = 2

NF_DROP = 0
NF_ACCEPT = 1

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, portid
_NLA = struct.Struct("=HH")  # nla_len, nla_type
_PACKET_HDR = struct.Struct("!IHB")  # packet_id, hw_protocol, hook
_BE32 = struct.Struct("!I")
_U32 = struct.Struct("=I")
_LEN_TYPE = struct.Struct("=IH")  # nlmsg_len, nlmsg_type
_VERDICT_HDR = struct.Struct("!II")  # verdict, id
_HEAD = NLMSGHDR.size + 4  # nlmsghdr + nfgenmsg
CONFIG_SEQ = 0x6A756D62  # ours, to tell the kernel's answer from packets


def _nfgen(queue: int) -> bytes:
    """struct nfgenmsg: family AF_UNSPEC, NFNETLINK_V0, res_id = the queue (be16)."""
    return struct.pack("!BBH", socket.AF_UNSPEC, 0, queue)


def _attr(kind: int, data: bytes) -> bytes:
    attr = _NLA.pack(4 + len(data), kind) + data
    return attr + b"\0" * (-len(attr) % 4)


def config_message(queue: int, copy_range: int, flags: int = 0, mask: int = 0) -> bytes:
    """NFQNL_MSG_CONFIG for ``queue``: NFQA_CFG_PARAMS (copy_range, NFQNL_COPY_PACKET;
    struct nfqnl_msg_config_params is packed: a be32 and a u8, padded to 4) and, when
    ``mask`` is given, the queue flags to set under it (NFQA_CFG_MASK, NFQA_CFG_FLAGS);
    an acknowledgement is asked for."""
    body = _nfgen(queue) + _attr(NFQA_CFG_PARAMS, struct.pack("!IB", copy_range, NFQNL_COPY_PACKET))
    if mask:
        body += _attr(NFQA_CFG_MASK, _BE32.pack(mask)) + _attr(NFQA_CFG_FLAGS, _BE32.pack(flags))
    header = NLMSGHDR.pack(NLMSGHDR.size + len(body), CONFIG_TYPE, NLM_F_REQUEST | NLM_F_ACK,
                           CONFIG_SEQ, 0)  # fmt: skip
    return header + body


def error_code(message: bytes | bytearray | memoryview) -> int | None:
    """The errno an NLMSG_ERROR message carries (0: an acknowledgement), None for any
    other message."""
    if len(message) < NLMSGHDR.size + 4 or NLMSGHDR.unpack_from(message)[1] != NLMSG_ERROR:
        return None
    error: int = struct.unpack_from("=i", message, NLMSGHDR.size)[0]
    return -error


def config_answer(message: bytes | bytearray | memoryview) -> int | None:
    """The errno of the kernel's answer to ``config_message`` (0: done), or None when
    ``message`` is something else (a queued packet, a verdict's error)."""
    if len(message) < NLMSGHDR.size + 4 or NLMSGHDR.unpack_from(message)[3] != CONFIG_SEQ:
        return None
    return error_code(message)


def message_type(message: bytes | bytearray | memoryview) -> int:
    kind: int = NLMSGHDR.unpack_from(message)[1]
    return kind


# packet id, hook, mark, NFQA_SKB_INFO flags, payload offset, payload length, length
# of the packet in the kernel (NFQA_CAP_LEN; the payload's own when it is whole).
Queued = tuple[int, int, int, int, int, int, int]


def parse_packet(message: bytes | bytearray | memoryview, size: int) -> Queued:
    """Read an NFQNL_MSG_PACKET of ``size`` bytes; ValueError if it is malformed."""
    return _walk(message, size)[0]


def _walk(message: bytes | bytearray | memoryview, size: int) -> tuple[Queued, _Layout | None]:
    """Walk the attributes; also the message's layout, when it can be learned (the
    payload is the last attribute, as nfqnl_build_packet_message puts it)."""
    if size < _HEAD:
        raise ValueError("short NFQUEUE message")
    length, kind, _, _, _ = NLMSGHDR.unpack_from(message)
    if kind != PACKET_TYPE:
        raise ValueError("not an NFQNL_MSG_PACKET")
    end = min(length, size)
    at = _HEAD
    packet_id = hook = payload_at = -1
    payload_len = mark = skb_info = cap_len = 0
    heads: list[tuple[int, int]] = []  # (offset, header word) of each attribute
    values = {NFQA_MARK: -1, NFQA_SKB_INFO: -1, NFQA_CAP_LEN: -1}  # where each is read
    while at + 4 <= end:
        nla_len, kind = _NLA.unpack_from(message, at)
        if nla_len < 4 or at + nla_len > end:
            raise ValueError("bad NFQUEUE attribute")
        heads.append((at, _U32.unpack_from(message, at)[0]))
        kind &= NLA_TYPE_MASK
        if kind == NFQA_PAYLOAD:
            payload_at, payload_len = at + 4, nla_len - 4
        elif kind == NFQA_PACKET_HDR and nla_len >= 4 + _PACKET_HDR.size:
            packet_id, _, hook = _PACKET_HDR.unpack_from(message, at + 4)
        elif kind in values and nla_len >= 8:
            values[kind] = at + 4
            value = _BE32.unpack_from(message, at + 4)[0]
            if kind == NFQA_MARK:
                mark = value
            elif kind == NFQA_SKB_INFO:
                skb_info = value
            else:
                cap_len = value
        at += (nla_len + 3) & ~3
    if packet_id < 0:
        raise ValueError("NFQUEUE message without a packet header")
    layout = None
    first = _NLA.unpack_from(message, _HEAD)[1] & NLA_TYPE_MASK
    if payload_at >= 0 and heads[-1][0] == payload_at - 4 and first == NFQA_PACKET_HDR:
        layout = _Layout.learn(heads[:-1], payload_at - 4, values)
    if payload_at < 0:
        payload_at, payload_len = end, 0
    queued = (packet_id, hook, mark, skb_info, payload_at, payload_len, cap_len or payload_len)
    return queued, layout


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the attributes of one kind of message are: the header word (nla_len and
    nla_type as one host-order u32) at each offset before the payload, read by one
    Struct; where the payload's header, the packet header and the values are."""

    heads: struct.Struct
    words: tuple[int, ...]
    payload_head: int
    mark_at: int
    skb_info_at: int
    cap_len_at: int

    @classmethod
    def learn(cls, heads: list[tuple[int, int]], payload_head: int,
              values: dict[int, int]) -> _Layout:  # fmt: skip
        fmt, last = ["="], 0
        for offset, _ in heads:
            fmt.append(f"{offset - last}xI")
            last = offset + 4
        return cls(struct.Struct("".join(fmt)), tuple(w for _, w in heads), payload_head,
                   values[NFQA_MARK], values[NFQA_SKB_INFO], values[NFQA_CAP_LEN])  # fmt: skip


class PacketParser:
    """``parse_packet``, fast for the messages the kernel keeps sending alike.

    nfqnl_build_packet_message puts the same attributes, of the same lengths, in the
    same order into every message of one kind (a queue's packets from one device pair:
    packet header, devices, mark, hardware address, timestamp, ..., the payload last);
    only their values differ.  The parser keeps the last few layouts it met: when every
    attribute header of a message is the one a layout has at that offset, the walk
    would find exactly those attributes, so the values are read where they are in a
    few struct calls instead of one Python turn per attribute.  Any other message is
    walked, and its layout learned.
    """

    KEEP = 4  # layouts remembered, the last used first

    def __init__(self) -> None:
        self._layouts: list[_Layout] = []

    def parse(self, message: bytes | bytearray | memoryview, size: int) -> Queued:
        if size >= _HEAD:
            length, kind = _LEN_TYPE.unpack_from(message)
            end = min(length, size)
            for layout in self._layouts if kind == PACKET_TYPE else ():
                payload_head = layout.payload_head
                if end < payload_head + 4 or layout.heads.unpack_from(message) != layout.words:
                    continue
                nla_len, kind = _NLA.unpack_from(message, payload_head)
                if (kind & NLA_TYPE_MASK != NFQA_PAYLOAD or nla_len < 4
                        or payload_head + ((nla_len + 3) & ~3) < end
                        or payload_head + nla_len > end):  # fmt: skip
                    continue
                packet_id, _, hook = _PACKET_HDR.unpack_from(message, _HEAD + 4)
                mark = _BE32.unpack_from(message, layout.mark_at)[0] if layout.mark_at >= 0 else 0
                skb_info = (_BE32.unpack_from(message, layout.skb_info_at)[0]
                            if layout.skb_info_at >= 0 else 0)  # fmt: skip
                payload_len = nla_len - 4
                cap_len = (_BE32.unpack_from(message, layout.cap_len_at)[0]
                           if layout.cap_len_at >= 0 else 0)  # fmt: skip
                return (packet_id, hook, mark, skb_info, payload_head + 4, payload_len,
                        cap_len or payload_len)  # fmt: skip
        queued, learned = _walk(message, size)
        if learned is not None:
            others = [k for k in self._layouts if k.words != learned.words]
            self._layouts = [learned, *others][: self.KEEP]
        return queued


class VerdictHeads:
    """The heads of one queue's verdict messages: nlmsghdr, nfgenmsg, NFQA_VERDICT_HDR
    and, for a rewritten packet, the header of its NFQA_PAYLOAD; the packet and its
    padding to 4 bytes follow the head in the same send.  Each head is one struct call
    (the verdict header's network-order fields swapped beforehand)."""

    _PLAIN = struct.Struct("=IHHII4sHHII")  # nlmsghdr, nfgenmsg, nla, verdict, id
    _REWRITTEN = struct.Struct("=IHHII4sHHIIHH")  # the same, then the payload's nla
    _MARKED = struct.Struct("=IHHII4sHHIIHHI")  # the same as plain, then NFQA_MARK

    def __init__(self, queue: int) -> None:
        self._nfgen = _nfgen(queue)
        self._size = _HEAD + 4 + _VERDICT_HDR.size

    def batch(self, packet_id: int, verdict: int) -> bytes:
        """An NFQNL_MSG_VERDICT_BATCH: nfqnl_recv_verdict_batch gives ``verdict`` to
        every packet of the queue's list (in id order, only packets the socket took:
        __nfqnl_enqueue_packet lists an entry after nfnetlink_unicast succeeded) whose
        id is not after ``packet_id`` (nfq_id_after: modulo 2**32); the same layout
        as a plain verdict."""
        return self._PLAIN.pack(self._size, VERDICT_BATCH_TYPE, NLM_F_REQUEST, 0, 0,
                                self._nfgen, 4 + _VERDICT_HDR.size, NFQA_VERDICT_HDR,
                                socket.htonl(verdict), socket.htonl(packet_id))  # fmt: skip

    def head(self, packet_id: int, verdict: int, payload_len: int = 0, mark: int = 0) -> bytes:
        """The head of a verdict; with ``mark``, the packet goes on with that firewall
        mark (NFQA_MARK, which nfqnl_recv_verdict sets as skb->mark), unchanged."""
        if mark:
            return self._MARKED.pack(self._size + 8, VERDICT_TYPE, NLM_F_REQUEST, 0, 0,
                                     self._nfgen, 4 + _VERDICT_HDR.size, NFQA_VERDICT_HDR,
                                     socket.htonl(verdict), socket.htonl(packet_id), 8,
                                     NFQA_MARK, socket.htonl(mark))  # fmt: skip
        if not payload_len:
            return self._PLAIN.pack(self._size, VERDICT_TYPE, NLM_F_REQUEST, 0, 0, self._nfgen,
                                    4 + _VERDICT_HDR.size, NFQA_VERDICT_HDR,
                                    socket.htonl(verdict), socket.htonl(packet_id))  # fmt: skip
        size = self._size + 4 + payload_len + (-payload_len % 4)
        return self._REWRITTEN.pack(size, VERDICT_TYPE, NLM_F_REQUEST, 0, 0, self._nfgen,
                                    4 + _VERDICT_HDR.size, NFQA_VERDICT_HDR,
                                    socket.htonl(verdict), socket.htonl(packet_id),
                                    4 + payload_len, NFQA_PAYLOAD)  # fmt: skip


# The head of a rewritten packet's verdict, the only one of its length (36 bytes; 32
# plain or batch, 40 with a mark): the packet and its padding follow it.
REWRITTEN_HEAD = VerdictHeads._REWRITTEN.size
PADS = (b"", b"\0\0\0", b"\0\0", b"\0")  # by size & 3


def pad(size: int) -> bytes:
    """The zero bytes that align an attribute of ``size`` bytes of data to 4."""
    return PADS[size % 4]


@dataclass(frozen=True, slots=True)
class KernelQueue:
    """One line of /proc/net/netfilter/nfnetlink_queue (nfnetlink_queue.c seq_show)."""

    queue: int
    portid: int
    waiting: int  # queue_total: packets queued, no verdict yet
    copy_mode: int
    copy_range: int
    dropped: int  # queue_dropped: the queue was full (or the packet map refused it)
    user_dropped: int  # queue_user_dropped: the message did not fit the socket
    id_sequence: int  # the last packet id: packets queued so far, modulo 2**32


PROC_QUEUES = "/proc/net/netfilter/nfnetlink_queue"


def queue_table(text: str) -> dict[int, KernelQueue]:
    """The kernel's queues by number, from the text of ``PROC_QUEUES``."""
    table: dict[int, KernelQueue] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            values = [int(f) for f in fields[:8]]
        except ValueError:
            continue
        table[values[0]] = KernelQueue(*values)
    return table


def read_queue_table(path: str = PROC_QUEUES) -> dict[int, KernelQueue]:
    """``queue_table`` of this network namespace's file (empty if it cannot be read)."""
    try:
        with open(path) as f:
            return queue_table(f.read())
    except OSError:
        return {}
