"""The NFQUEUE messages the worker parses and builds, against hand-built netlink bytes.

Layouts from the kernel's headers: struct nlmsghdr (linux/netlink.h, host order),
struct nfgenmsg (linux/netfilter/nfnetlink.h: family, version, be16 res_id), struct
nlattr (u16 nla_len, u16 nla_type, data padded to 4: NLA_ALIGN), and from
linux/netfilter/nfnetlink_queue.h: NFQNL_MSG_PACKET = 0, NFQNL_MSG_VERDICT = 1,
NFQNL_MSG_CONFIG = 2 under NFNL_SUBSYS_QUEUE = 3; NFQA_PACKET_HDR = 1 (packed struct
nfqnl_msg_packet_hdr { __be32 packet_id; __be16 hw_protocol; __u8 hook; }),
NFQA_VERDICT_HDR = 2 (struct nfqnl_msg_verdict_hdr { __be32 verdict; __be32 id; }),
NFQA_MARK = 3, NFQA_IFINDEX_INDEV = 5, NFQA_PAYLOAD = 10, NFQA_CAP_LEN = 13,
NFQA_SKB_INFO = 14 (NFQA_SKB_CSUMNOTREADY 1, NFQA_SKB_GSO 2), NFQA_CFG_MASK = 4,
NFQA_CFG_FLAGS = 5, NFQA_CFG_F_GSO = 1 << 2.  The /proc line is seq_show's format in
net/netfilter/nfnetlink_queue.c.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from director.shell.nfqueue import (
    PacketParser,
    VerdictHeads,
    config_message,
    error_code,
    pad,
    parse_packet,
    queue_table,
)


def nla(kind: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def packet_message(attrs: bytes) -> bytes:
    body = bytes([2, 0, 0, 1]) + attrs  # AF_INET, NFNETLINK_V0, res_id 1
    return struct.pack("=IHHII", 16 + len(body), 0x0300, 0, 0, 0) + body


def test_packet_message_fields() -> None:
    payload = b"\x45" + bytes(range(1, 22))  # 22 bytes: padded to 24 in the message
    attrs = (
        nla(1, struct.pack("!IHB", 0x01020304, 0x0800, 2))  # 7 bytes, nla_len 11
        + nla(5, struct.pack("!I", 3))  # an interface: skipped
        + nla(3, struct.pack("!I", 0xCAFE))
        + nla(13, struct.pack("!I", 70000))
        + nla(14, struct.pack("!I", 3))
        + nla(10, payload)
    )
    msg = packet_message(attrs)
    assert struct.unpack_from("=H", msg, 20) == (11,)
    packet_id, hook, mark, skb_info, at, length, cap = parse_packet(msg, len(msg))
    assert (packet_id, hook, mark, skb_info, cap) == (0x01020304, 2, 0xCAFE, 3, 70000)
    assert msg[at : at + length] == payload


def test_packet_message_without_mark_info_or_cap_len() -> None:
    msg = packet_message(nla(1, struct.pack("!IHB", 9, 0x0800, 1)) + nla(10, b"abcd"))
    packet_id, hook, mark, skb_info, at, length, cap = parse_packet(msg, len(msg))
    assert (packet_id, hook, mark, skb_info, length, cap) == (9, 1, 0, 0, 4, 4)
    assert msg[at : at + length] == b"abcd"


def test_nested_or_byte_order_bits_do_not_hide_the_type() -> None:
    hdr = struct.pack("=HH", 11, 1 | 0x4000) + struct.pack("!IHB", 5, 0x0800, 2) + b"\0"
    msg = packet_message(hdr)
    assert parse_packet(msg, len(msg))[:2] == (5, 2)


@pytest.mark.parametrize(
    "msg",
    [
        packet_message(nla(10, b"x")),  # no packet header
        packet_message(struct.pack("=HH", 200, 10)),  # attribute runs past the message
        packet_message(struct.pack("=HH", 2, 10)),  # nla_len below its own header
        b"\0" * 12,
    ],
)
def test_malformed_messages_are_refused(msg: bytes) -> None:
    with pytest.raises(ValueError):
        parse_packet(msg, len(msg))


def test_verdict_without_payload() -> None:
    head = VerdictHeads(queue=7).head(packet_id=0x0A0B0C0D, verdict=1)
    assert head == (
        struct.pack("=IHHII", 32, 0x0301, 0x1, 0, 0)  # NLM_F_REQUEST, no ack asked
        + bytes([0, 0, 0, 7])  # AF_UNSPEC, NFNETLINK_V0, res_id 7
        + struct.pack("=HH", 12, 2)
        + struct.pack("!II", 1, 0x0A0B0C0D)  # NF_ACCEPT
    )


def test_verdict_with_payload_counts_its_padding() -> None:
    payload = bytes(range(41))
    head = VerdictHeads(queue=1).head(packet_id=3, verdict=1, payload_len=len(payload))
    msg = head + payload + pad(len(payload))
    assert len(msg) % 4 == 0  # NLMSG_ALIGN: the next message starts aligned
    assert struct.unpack_from("=I", msg) == (len(msg),)  # 32 + 4 + 41 + 3
    assert len(msg) == 80
    assert struct.unpack_from("=HH", msg, 32) == (45, 10)  # nla_len 4 + 41, NFQA_PAYLOAD
    assert msg[36:77] == payload and msg[77:] == b"\0\0\0"
    assert [pad(n) for n in range(4)] == [b"", b"\0\0\0", b"\0\0", b"\0"]


def test_config_message_with_the_gso_flag() -> None:
    msg = config_message(queue=1, copy_range=0xFFFF, flags=4, mask=4)
    assert struct.unpack_from("=IH", msg) == (48, 0x0302)
    assert msg[32:] == (
        struct.pack("=HH", 8, 4) + struct.pack("!I", 4)  # NFQA_CFG_MASK: F_GSO
        + struct.pack("=HH", 8, 5) + struct.pack("!I", 4)  # NFQA_CFG_FLAGS: F_GSO on
    )  # fmt: skip
    off = config_message(queue=1, copy_range=0xFFFF, flags=0, mask=4)
    assert off[32:] == struct.pack("=HH", 8, 4) + struct.pack("!I", 4) + struct.pack(
        "=HH", 8, 5
    ) + struct.pack("!I", 0)


def test_error_code_of_a_verdict_error() -> None:
    request = VerdictHeads(queue=0).head(1, 1)[:16]
    nack = struct.pack("=IHHII", 36, 2, 0, 0, 0) + struct.pack("=i", -2) + request
    assert error_code(nack) == 2  # ENOENT: no such packet id
    assert error_code(packet_message(b"")) is None


def test_proc_queue_table() -> None:
    # "%5u %6u %5u %1u %5u %5u %5u %8u %2d\n": queue_num, peer_portid, queue_total,
    # copy_mode, copy_range, queue_dropped, queue_user_dropped, id_sequence, 1
    text = (
        "    0  51234     0 2 65531     0     0    10071  1\n"
        "    1  51235     3 2 65531     7    12   991234  1\n"
    )
    table = queue_table(text)
    assert sorted(table) == [0, 1]
    reply = table[1]
    assert (reply.portid, reply.waiting, reply.copy_range) == (51235, 3, 65531)
    assert (reply.dropped, reply.user_dropped, reply.id_sequence) == (7, 12, 991234)
    assert queue_table("") == {}


# -- PacketParser: the walk's answers, remembered layouts or not ----------------------

# Attributes nfqnl_build_packet_message may put between the packet header and the
# payload (linux/netfilter/nfnetlink_queue.h): devices 4-7, mark 3, hardware address 9,
# timestamp 8, uid/gid 11/12, cap_len 13, skb_info 14, priority 20; with the data sizes
# the kernel gives them.
_MIDDLE = {4: 4, 5: 4, 6: 4, 7: 4, 3: 4, 9: 12, 8: 16, 11: 4, 12: 4, 13: 4, 14: 4, 20: 4}

_layouts = st.lists(st.sampled_from(sorted(_MIDDLE)), max_size=8)


@st.composite
def _messages(draw: st.DrawFn, kinds: list[int]) -> bytes:
    attrs = nla(1, struct.pack("!IHB", draw(st.integers(0, 2**32 - 1)), 0x0800,
                               draw(st.integers(0, 4))))  # fmt: skip
    for kind in kinds:
        attrs += nla(kind, draw(st.binary(min_size=_MIDDLE[kind], max_size=_MIDDLE[kind])))
    attrs += nla(10, draw(st.binary(min_size=0, max_size=64)))
    return packet_message(attrs)


def _answer(parse: Callable[[bytes, int], object], msg: bytes, size: int) -> object:
    try:
        return parse(msg, size)
    except ValueError:
        return "refused"


@given(st.lists(_layouts, min_size=1, max_size=3), st.data())
def test_the_parser_answers_as_the_walk_over_messages_alike_and_not(
    layouts: list[list[int]], data: st.DataObject
) -> None:
    """Messages of a few layouts, in any order, some cut short or with a byte changed:
    the parser (which remembers layouts) answers each as parse_packet's walk does."""
    parser = PacketParser()
    for _ in range(12):
        msg = bytearray(data.draw(_messages(data.draw(st.sampled_from(layouts)))))
        if data.draw(st.booleans()):
            where = data.draw(st.integers(0, len(msg) - 1))
            msg[where] = data.draw(st.integers(0, 255))
        size = data.draw(st.integers(0, len(msg))) if data.draw(st.booleans()) else len(msg)
        buffer = bytes(msg) + b"\xaa" * 32  # what an earlier, longer message left behind
        assert _answer(parser.parse, buffer, size) == _answer(parse_packet, buffer, size)


def test_a_remembered_layout_reads_the_new_values() -> None:
    """The second message of a layout is read from the layout, with its own values."""
    parser = PacketParser()
    for packet_id, mark in ((1, 0xA), (2, 0xB), (3, 0xC)):
        msg = packet_message(nla(1, struct.pack("!IHB", packet_id, 0x0800, 2))
                             + nla(5, struct.pack("!I", 3)) + nla(3, struct.pack("!I", mark))
                             + nla(10, bytes(packet_id)))  # fmt: skip
        assert parser.parse(msg, len(msg)) == parse_packet(msg, len(msg))
        assert parser.parse(msg, len(msg))[:3] == (packet_id, 2, mark)


def test_verdict_with_a_mark() -> None:
    """nfqnl_recv_verdict sets skb->mark from an NFQA_MARK (be32) beside the verdict."""
    head = VerdictHeads(3).head(0x11223344, 1, 0, mark=0x4C000007)
    length, kind, flags, _, _ = struct.unpack_from("=IHHII", head)
    assert (length, len(head), kind, flags) == (40, 40, 0x0301, 1)  # NLM_F_REQUEST
    assert head[16:20] == bytes([0, 0, 0, 3])
    assert struct.unpack_from("=HH", head, 20) == (12, 2)  # NFQA_VERDICT_HDR
    assert struct.unpack_from("!II", head, 24) == (1, 0x11223344)  # NF_ACCEPT, id
    assert struct.unpack_from("=HH", head, 32) == (8, 3)  # NFQA_MARK
    assert struct.unpack_from("!I", head, 36) == (0x4C000007,)


def test_batch_verdict_layout() -> None:
    """NFQNL_MSG_VERDICT_BATCH = 3 (linux/netfilter/nfnetlink_queue.h): nlmsghdr,
    nfgenmsg with the queue, then NFQA_VERDICT_HDR (verdict, the highest id: be32
    each), all nfqnl_recv_verdict_batch reads (nfqa_verdict_batch_policy)."""
    head = VerdictHeads(queue=5).batch(packet_id=0x01020304, verdict=0)
    assert head == (
        struct.pack("=IHHII", 32, 0x0303, 0x1, 0, 0)  # NLM_F_REQUEST, no ack asked
        + bytes([0, 0, 0, 5])  # AF_UNSPEC, NFNETLINK_V0, res_id 5
        + struct.pack("=HH", 12, 2)
        + struct.pack("!II", 0, 0x01020304)  # NF_DROP up to that id
    )
