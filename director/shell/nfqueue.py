"""The NFQUEUE netlink messages the worker reads and writes itself, byte for byte as
the kernel's headers define them (linux/netlink.h, linux/netfilter/nfnetlink.h,
linux/netfilter/nfnetlink_queue.h) and net/netfilter/nfnetlink_queue.c reads them.

- ``config_message``: NFQNL_MSG_CONFIG with the copy range (NFQA_CFG_PARAMS) and queue
  flags (NFQA_CFG_MASK / NFQA_CFG_FLAGS, e.g. NFQA_CFG_F_GSO), read by nfqnl_recv_config;
- ``parse_packet``: the NFQNL_MSG_PACKET nfqnl_build_packet_message sends: packet id
  and hook (NFQA_PACKET_HDR), mark (NFQA_MARK), NFQA_SKB_INFO, the packet (NFQA_PAYLOAD);
- ``verdict_head``: the head of an NFQNL_MSG_VERDICT (NFQA_VERDICT_HDR, then the header
  of an NFQA_PAYLOAD when the packet was rewritten), read by nfqnl_recv_verdict.  The
  kernel takes several such messages in one send (netlink_rcv_skb walks them all);
  NFQNL_MSG_VERDICT_BATCH would carry no payload.
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
PACKET_TYPE = NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET
VERDICT_TYPE = NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_VERDICT
CONFIG_TYPE = NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_CONFIG

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
    if size < _HEAD:
        raise ValueError("short NFQUEUE message")
    length = NLMSGHDR.unpack_from(message)[0]
    end = min(length, size)
    at = _HEAD
    packet_id = hook = payload_at = -1
    payload_len = mark = skb_info = cap_len = 0
    while at + 4 <= end:
        nla_len, kind = _NLA.unpack_from(message, at)
        if nla_len < 4 or at + nla_len > end:
            raise ValueError("bad NFQUEUE attribute")
        kind &= NLA_TYPE_MASK
        if kind == NFQA_PAYLOAD:
            payload_at, payload_len = at + 4, nla_len - 4
        elif kind == NFQA_PACKET_HDR:
            packet_id, _, hook = _PACKET_HDR.unpack_from(message, at + 4)
        elif kind == NFQA_MARK:
            mark = _BE32.unpack_from(message, at + 4)[0]
        elif kind == NFQA_SKB_INFO:
            skb_info = _BE32.unpack_from(message, at + 4)[0]
        elif kind == NFQA_CAP_LEN:
            cap_len = _BE32.unpack_from(message, at + 4)[0]
        at += (nla_len + 3) & ~3
    if packet_id < 0:
        raise ValueError("NFQUEUE message without a packet header")
    if payload_at < 0:
        payload_at, payload_len = end, 0
    return (packet_id, hook, mark, skb_info, payload_at, payload_len, cap_len or payload_len)


class VerdictHeads:
    """The heads of one queue's verdict messages: nlmsghdr, nfgenmsg, NFQA_VERDICT_HDR
    and, for a rewritten packet, the header of its NFQA_PAYLOAD; the packet and its
    padding to 4 bytes follow the head in the same send."""

    def __init__(self, queue: int) -> None:
        self._fixed = _nfgen(queue) + _NLA.pack(4 + _VERDICT_HDR.size, NFQA_VERDICT_HDR)

    def head(self, packet_id: int, verdict: int, payload_len: int = 0) -> bytes:
        size = _HEAD + 4 + _VERDICT_HDR.size
        if not payload_len:
            return (
                NLMSGHDR.pack(size, VERDICT_TYPE, NLM_F_REQUEST, 0, 0)
                + self._fixed
                + _VERDICT_HDR.pack(verdict, packet_id)
            )
        size += 4 + payload_len + (-payload_len % 4)
        return (
            NLMSGHDR.pack(size, VERDICT_TYPE, NLM_F_REQUEST, 0, 0)
            + self._fixed
            + _VERDICT_HDR.pack(verdict, packet_id)
            + _NLA.pack(4 + payload_len, NFQA_PAYLOAD)
        )


_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")


def pad(size: int) -> bytes:
    """The zero bytes that align an attribute of ``size`` bytes of data to 4."""
    return _PADS[size % 4]


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
