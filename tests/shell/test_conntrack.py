"""The ctnetlink messages director/shell/conntrack.py reads and writes, against netlink
bytes built by hand from the kernel's headers and by pyroute2's nfct_msg (an encoder
and decoder of its own, not ours).

From linux/netfilter/nfnetlink_conntrack.h: IPCTNL_MSG_CT_NEW = 0, IPCTNL_MSG_CT_GET = 1,
IPCTNL_MSG_CT_DELETE = 2 under NFNL_SUBSYS_CTNETLINK = 1 (type 0x100, 0x101, 0x102);
enum ctattr_type: CTA_TUPLE_ORIG 1, CTA_TUPLE_REPLY 2, CTA_STATUS 3, CTA_PROTOINFO 4,
CTA_TIMEOUT 7, CTA_MARK 8, CTA_COUNTERS_ORIG 9, CTA_COUNTERS_REPLY 10, CTA_USE 11,
CTA_ID 12, CTA_MARK_MASK 21; ctattr_tuple: CTA_TUPLE_IP 1, CTA_TUPLE_PROTO 2; ctattr_ip:
CTA_IP_V4_SRC 1, CTA_IP_V4_DST 2, CTA_IP_V6_SRC 3, CTA_IP_V6_DST 4; ctattr_l4proto:
CTA_PROTO_NUM 1 (u8), CTA_PROTO_SRC_PORT 2, CTA_PROTO_DST_PORT 3 (be16);
CTA_PROTOINFO_TCP 1 / CTA_PROTOINFO_TCP_STATE 1 (u8); ctattr_counters:
CTA_COUNTERS_PACKETS 1, CTA_COUNTERS_BYTES 2 (be64).  The state numbers are enum
tcp_conntrack (linux/netfilter/nf_conntrack_tcp.h), their names tcp_conntrack_names[]
(net/netfilter/nf_conntrack_proto_tcp.c): 3 ESTABLISHED, 7 TIME_WAIT, 9 SYN_SENT2.
The kernel nests with nla_nest_start, which sets NLA_F_NESTED (0x8000).
"""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple, nfct_msg

from director.shell import conntrack
from director.shell.conntrack import (
    NO_COUNTERS,
    CtCounters,
    CtEvent,
    CtTuple,
    event_kind,
    mark_attrs,
    parse_entry,
    take_events,
    tuple_attr,
)

TAG, MASK = 0x4C << 24, 0xFF000000  # the fast path's tag (issue 12)
NESTED = 0x8000
CLIENT = socket.inet_aton("203.0.113.10")
VIP = socket.inet_aton("203.0.113.5")
RS = socket.inet_aton("198.18.0.2")


def nla(kind: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def nest(kind: int, *parts: bytes) -> bytes:
    return nla(kind | NESTED, b"".join(parts))


def message(msg_type: int, flags: int, attrs: bytes, family: int = socket.AF_INET) -> bytes:
    body = bytes([family, 0, 0, 0]) + attrs  # struct nfgenmsg: family, NFNETLINK_V0, res_id
    return struct.pack("=IHHII", 16 + len(body), msg_type, flags, 0, 0) + body


def tup(kind: int, src: bytes, sport: int, dst: bytes, dport: int, proto: int = 6) -> bytes:
    v6 = len(src) == 16
    return nest(
        kind,
        nest(1, nla(3 if v6 else 1, src), nla(4 if v6 else 2, dst)),
        nest(2, nla(1, bytes([proto])), nla(2, struct.pack("!H", sport)),
             nla(3, struct.pack("!H", dport))),
    )  # fmt: skip


def counters(kind: int, packets: int, octets: int) -> bytes:
    return nest(kind, nla(1, struct.pack("!Q", packets)), nla(2, struct.pack("!Q", octets)))


def tcp_state(state: int) -> bytes:
    return nest(4, nest(1, nla(1, bytes([state])), nla(2, b"\x07")))  # and WSCALE_ORIGINAL


def be32(kind: int, value: int) -> bytes:
    return nla(kind, struct.pack("!I", value))


DESTROY = message(
    0x102,
    0,
    tup(1, CLIENT, 40000, VIP, 80)
    + tup(2, RS, 8080, CLIENT, 40000)
    + be32(3, 0x18E)  # CTA_STATUS: skipped
    + counters(9, 7, 1234)
    + counters(10, 5, 5678)
    + be32(12, 0xDEADBEEF)
    + tcp_state(7)
    + be32(8, TAG | 5)
    + be32(11, 1),  # CTA_USE: skipped
)


def test_a_destroy_event_with_every_field() -> None:
    (event,) = parse_all(DESTROY)
    assert event == CtEvent(
        kind="destroy",
        protocol=6,
        orig=CtTuple(CLIENT, 40000, VIP, 80),
        reply=CtTuple(RS, 8080, CLIENT, 40000),
        state="TIME_WAIT",
        mark=TAG | 5,
        timeout=None,
        counters=CtCounters(7, 1234, 5, 5678),
        ct_id=0xDEADBEEF,
    )


@pytest.mark.parametrize(
    ("msg_type", "flags", "kind"),
    [
        (0x100, 0x400 | 0x200, "new"),  # NLM_F_CREATE | NLM_F_EXCL: NFNLGRP_CONNTRACK_NEW
        (0x100, 0, "update"),  # NFNLGRP_CONNTRACK_UPDATE
        (0x102, 0, "destroy"),  # NFNLGRP_CONNTRACK_DESTROY
        (0x101, 0, None),
        (0x3, 0, None),  # NLMSG_DONE
        (0x200, 0, None),  # another subsystem (expectations)
    ],
)
def test_event_kinds_as_ctnetlink_conntrack_event_sends_them(
    msg_type: int, flags: int, kind: str | None
) -> None:
    assert event_kind(msg_type, flags) == kind


def test_an_ipv6_udp_event_has_no_state_and_no_counters() -> None:
    client, vip = (
        socket.inet_pton(socket.AF_INET6, "2001:db8:1::10"),
        socket.inet_pton(socket.AF_INET6, "2001:db8:1::100"),
    )
    rs = socket.inet_pton(socket.AF_INET6, "2001:db8:2::2")
    msg = message(
        0x100,
        0x600,
        tup(1, client, 5353, vip, 53, proto=17) + tup(2, rs, 53, client, 5353, proto=17)
        + be32(7, 30) + be32(8, TAG | 9) + be32(12, 4),
        family=socket.AF_INET6,
    )  # fmt: skip
    (event,) = parse_all(msg)
    assert (event.kind, event.protocol, event.state, event.timeout) == ("new", 17, None, 30)
    assert event.orig == CtTuple(client, 5353, vip, 53)
    assert event.reply == CtTuple(rs, 53, client, 5353)
    assert event.counters is NO_COUNTERS and event.mark == TAG | 9 and event.ct_id == 4


def test_a_tcp_update_without_protoinfo_says_no_state() -> None:
    """An update sent for a mark change carries no CTA_PROTOINFO (ctnetlink_conntrack_event
    dumps it only with IPCT_PROTOINFO)."""
    msg = message(0x100, 0, tup(1, CLIENT, 1, VIP, 80) + tup(2, RS, 80, CLIENT, 1) + be32(8, TAG))
    (event,) = parse_all(msg)
    assert (event.kind, event.state, event.timeout, event.ct_id) == ("update", None, None, None)


def test_pyroute2s_encoding_reads_the_same() -> None:
    """nfct_msg (pyroute2) builds the message, without NLA_F_NESTED on its nests."""
    made = nfct_msg.create_from(
        tuple_orig=NFCTAttrTuple(saddr="203.0.113.10", daddr="203.0.113.5", proto=6,
                                 sport=40000, dport=80),
        tuple_reply=NFCTAttrTuple(saddr="198.18.0.2", daddr="203.0.113.10", proto=6,
                                  sport=8080, dport=40000),
        timeout=431999, mark=TAG | 0x1234, id=77,
        protoinfo={"attrs": [["CTA_PROTOINFO_TCP", {"attrs": [["CTA_PROTOINFO_TCP_STATE", 3]]}]]},
        counters_orig={"attrs": [["CTA_COUNTERS_PACKETS", 3], ["CTA_COUNTERS_BYTES", 180]]},
    )  # fmt: skip
    made["header"]["type"] = 0x100
    made["header"]["flags"] = 0x2  # NLM_F_MULTI, as in a dump
    made["nfgen_family"] = socket.AF_INET
    made.encode()
    data = bytes(made.data)
    event = parse_entry(data, 0, len(data), "dump")
    assert event == CtEvent(
        kind="dump",
        protocol=6,
        orig=CtTuple(CLIENT, 40000, VIP, 80),
        reply=CtTuple(RS, 8080, CLIENT, 40000),
        state="ESTABLISHED",
        mark=TAG | 0x1234,
        timeout=431999,
        counters=CtCounters(3, 180, 0, 0),
        ct_id=77,
    )


def test_the_tuple_of_a_delete_as_pyroute2_reads_it() -> None:
    """tuple_attr and mark_attrs decoded by nfct_msg: the attributes ctnetlink_parse_tuple
    and ctnetlink_alloc_filter take."""
    attrs = tuple_attr(1, 6, CtTuple(CLIENT, 40000, VIP, 80)) + mark_attrs(TAG, MASK)
    decoded = nfct_msg(message(0x102, 0x5, attrs))
    decoded.decode()
    orig = decoded.get_attr("CTA_TUPLE_ORIG")
    ip, proto = orig.get_attr("CTA_TUPLE_IP"), orig.get_attr("CTA_TUPLE_PROTO")
    assert (ip.get_attr("CTA_IP_V4_SRC"), ip.get_attr("CTA_IP_V4_DST")) == (
        "203.0.113.10",
        "203.0.113.5",
    )
    assert [proto.get_attr(f"CTA_PROTO_{n}") for n in ("NUM", "SRC_PORT", "DST_PORT")] == [
        6,
        40000,
        80,
    ]
    assert (decoded.get_attr("CTA_MARK"), decoded.get_attr("CTA_MARK_MASK")) == (TAG, MASK)


def test_events_with_another_mark_are_ignored_and_counted() -> None:
    other = DESTROY.replace(struct.pack("!I", TAG | 5), struct.pack("!I", 0x4D000005))
    unmarked = message(0x100, 0, tup(1, CLIENT, 1, VIP, 80) + tup(2, RS, 80, CLIENT, 1))
    data = other + unmarked + DESTROY
    got: list[CtEvent] = []
    assert take_events(data, len(data), TAG, MASK, got) == (0, 2)
    assert [e.mark for e in got] == [TAG | 5]


@pytest.mark.parametrize(
    "msg",
    [
        message(0x102, 0, tup(2, RS, 80, CLIENT, 1)),  # no original tuple
        message(0x102, 0, nest(1, nest(2, nla(1, b"\x06")))),  # a tuple without addresses
        message(0x102, 0, nest(1, nest(1, nla(1, b"\1\2\3")), nest(2, nla(1, b"\x06")))),
        message(0x102, 0, tup(1, CLIENT, 1, VIP, 80) + tup(2, RS, 80, CLIENT, 1)
                + nla(8, b"\1")),  # a mark of one byte
        message(0x102, 0, struct.pack("=HH", 200, 1)),  # an attribute past the end
    ],
)  # fmt: skip
def test_malformed_messages_are_counted_not_raised(msg: bytes) -> None:
    data = msg + DESTROY
    got: list[CtEvent] = []
    assert take_events(data, len(data), TAG, MASK, got) == (1, 0)
    assert len(got) == 1  # the good one after it is read


def test_a_broken_datagram_counts_once_and_keeps_what_came_before() -> None:
    data = DESTROY + struct.pack("=IHHII", 400, 0x102, 0, 0, 0)
    got: list[CtEvent] = []
    assert take_events(data, len(data), TAG, MASK, got) == (1, 0)
    assert len(got) == 1


def parse_all(data: bytes) -> list[CtEvent]:
    got: list[CtEvent] = []
    assert take_events(data, len(data), 0, 0, got) == (0, 0)
    return got


@given(st.integers(min_value=0, max_value=len(DESTROY)), st.binary(max_size=64))
def test_any_cut_or_garbage_never_raises(cut: int, junk: bytes) -> None:
    data = DESTROY[:cut] + junk
    got: list[CtEvent] = []
    malformed, ignored = take_events(data, len(data), TAG, MASK, got)
    assert malformed + ignored + len(got) <= 1 + len(data) // 16


@given(st.integers(min_value=16, max_value=len(DESTROY) - 1))
def test_a_message_cut_short_is_malformed(size: int) -> None:
    """The nlmsghdr still says the whole length: the datagram's framing breaks."""
    got: list[CtEvent] = []
    assert take_events(DESTROY, size, TAG, MASK, got) == (1, 0) and got == []


def test_messages_of_one_length_and_another_shape_are_read_as_they_are() -> None:
    """The parser keeps a layout per message length: a message of the same length with
    its attributes in another order, or other attributes in the same room, is read
    from its own bytes (each checked against a parse with no layout kept)."""
    body = [tup(1, CLIENT, 40000, VIP, 80), tup(2, RS, 8080, CLIENT, 40000),
            be32(8, TAG | 5), be32(12, 7), tcp_state(3)]  # fmt: skip
    shapes = [
        body,
        [body[1], body[0], *body[2:]],  # the tuples swapped: orig is still orig
        [*body[:2], be32(12, 9), be32(8, TAG | 6), body[4]],  # id and mark swapped
        [*body[:2], be32(3, 1), be32(12, 7), body[4]],  # a status instead of the mark
        [*body[:4], nest(4, nest(1, nla(3, b"\3"), nla(2, b"\7")))],  # no TCP state there
    ]
    msgs = [message(0x100, 0, b"".join(parts)) for parts in shapes]
    assert len({len(m) for m in msgs}) == 1
    cold = []
    for m in msgs:
        conntrack._LAYOUTS.clear()
        cold.append(parse_entry(m, 0, len(m), "update"))
    assert len(set(cold)) == 4  # the swapped tuples say the same
    assert cold[4].state is None
    for first in msgs:
        for m, expected in zip(msgs, cold, strict=True):
            conntrack._LAYOUTS.clear()
            parse_entry(first, 0, len(first), "update")
            assert parse_entry(m, 0, len(m), "update") == expected
