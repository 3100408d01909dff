"""The copy-range message the worker sends on the queue's socket, byte for byte from
the kernel's headers: struct nlmsghdr (linux/netlink.h), struct nfgenmsg
(linux/netfilter/nfnetlink.h), NFQNL_MSG_CONFIG = 2 with NFNL_SUBSYS_QUEUE = 3 and
NFQA_CFG_PARAMS = 2 carrying the packed struct nfqnl_msg_config_params { __be32
copy_range; __u8 copy_mode; } with NFQNL_COPY_PACKET = 2
(linux/netfilter/nfnetlink_queue.h), read by nfqnl_recv_config."""

from __future__ import annotations

import struct

from director.shell.worker import config_answer, config_message


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
