"""The kernel's connection tracking seen from userspace, over ctnetlink: what the fast
path (``--fast-path kernel``) needs to keep IPVS's counts and statistics for the
connections conntrack carries after the worker scheduled their first packet.

- ``CtEvents``: a subscription to the conntrack event groups NFNLGRP_CONNTRACK_NEW (1),
  NFNLGRP_CONNTRACK_UPDATE (2) and NFNLGRP_CONNTRACK_DESTROY (3)
  (linux/netfilter/nfnetlink.h), read without blocking from a selectors loop.  The
  kernel sends them from ctnetlink_conntrack_event (net/netfilter/nf_conntrack_netlink.c):
  IPCTNL_MSG_CT_NEW with NLM_F_CREATE|NLM_F_EXCL for a new connection (sent when it is
  confirmed, after the first packet's POSTROUTING), IPCTNL_MSG_CT_NEW without them for
  an update (a TCP state change, a mark change, ...), IPCTNL_MSG_CT_DELETE when it is
  destroyed.  Only a destroy event carries the counters; an update carries
  CTA_PROTOINFO only when the TCP state changed.  The kernel adds the event extension
  only to connections made while someone listens (nf_conntrack_events = 2, the
  default), so subscribe before the connections come.
- ``CtTable``: a dump of the table filtered by connmark (IPCTNL_MSG_CT_GET with
  NLM_F_DUMP, CTA_MARK and CTA_MARK_MASK: the kernel filters, ctnetlink_alloc_filter),
  the deletion of one entry by its original tuple (IPCTNL_MSG_CT_DELETE with
  CTA_TUPLE_ORIG, and CTA_ID so that a newer connection on the same tuple stays), and
  of every entry under a mark (IPCTNL_MSG_CT_DELETE with CTA_MARK and CTA_MARK_MASK
  and no tuple: ctnetlink_flush_conntrack).

Of each message the parser reads (linux/netfilter/nfnetlink_conntrack.h):
CTA_TUPLE_ORIG and CTA_TUPLE_REPLY (CTA_TUPLE_IP: CTA_IP_V4_SRC/DST or
CTA_IP_V6_SRC/DST; CTA_TUPLE_PROTO: CTA_PROTO_NUM, CTA_PROTO_SRC_PORT,
CTA_PROTO_DST_PORT), CTA_PROTOINFO / CTA_PROTOINFO_TCP / CTA_PROTOINFO_TCP_STATE,
CTA_MARK, CTA_TIMEOUT (seconds), CTA_COUNTERS_ORIG and CTA_COUNTERS_REPLY
(CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES, be64), CTA_ID; the rest is skipped.

The messages are read by hand, as nfqueue.py reads NFQUEUE's, not by pyroute2's
nfct_msg: its decoder takes about 100 us a message on the lab machine, this one a
small fraction of it, and the events come several per connection.  Netlink headers
are in host order, the ctnetlink attributes in network order.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from director.shell import bpf

# linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
CT_NEW_TYPE = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW
CT_GET_TYPE = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
CT_DELETE_TYPE = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_UPDATE = 2
NFNLGRP_CONNTRACK_DESTROY = 3
EVENT_GROUPS = sum(
    1 << (group - 1)
    for group in (NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY)
)

# enum ctattr_type and its nested enums
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_PROTOINFO = 4
CTA_TIMEOUT = 7
CTA_MARK = 8
CTA_COUNTERS_ORIG = 9
CTA_COUNTERS_REPLY = 10
CTA_ID = 12
CTA_MARK_MASK = 21
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2

# net/netfilter/nf_conntrack_proto_tcp.c tcp_conntrack_names[], by enum tcp_conntrack
TCP_CONNTRACK_NAMES = (
    "NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
    "TIME_WAIT", "CLOSE", "SYN_SENT2",
)  # fmt: skip

# linux/netlink.h
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
NFNETLINK_V0 = 0
NETLINK_NETFILTER = 12  # linux/netlink.h (not in Python's socket module)
SO_RCVBUFFORCE = 33  # asm-generic/socket.h

EVENTS_RCVBUF = 1 << 24  # bytes asked for (SO_RCVBUFFORCE; the kernel doubles it)
READ_BUDGET = 4096  # datagrams per read(): the loop gets its turn back under a flood
RECV_SIZE = 1 << 16  # one event is one datagram of a few hundred bytes
DUMP_RECV_SIZE = 1 << 18  # a dump's datagrams hold many entries
REQUEST_TIMEOUT = 10.0

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, portid
_NLA = struct.Struct("=HH")  # nla_len, nla_type
_HEAD = _NLMSGHDR.size + 4  # nlmsghdr + struct nfgenmsg
_U8 = struct.Struct("!B")
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")
_BE64 = struct.Struct("!Q")

Buffer = bytes | bytearray | memoryview


class CtTuple(NamedTuple):
    """One direction of a connection as conntrack keys it (struct nf_conntrack_tuple):
    addresses packed (4 or 16 bytes), ports (0 for a protocol without them)."""

    src: bytes
    sport: int
    dst: bytes
    dport: int


class CtCounters(NamedTuple):
    """struct nf_conn_counter of each direction (zeros when accounting is off)."""

    orig_packets: int = 0
    orig_bytes: int = 0
    reply_packets: int = 0
    reply_bytes: int = 0


NO_COUNTERS = CtCounters()


class CtEvent(NamedTuple):
    """One conntrack entry as a ctnetlink message gave it.

    ``kind``: "new", "update", "destroy" (events) or "dump".  ``state``: the TCP state
    by conntrack's name (tcp_conntrack_names: "ESTABLISHED", "TIME_WAIT", "SYN_SENT2",
    ...), None for other protocols and for an update that did not change it.  ``mark``:
    the connmark (0 when the message has none).  ``timeout``: seconds left, when the
    message says (a destroy event says it only when some was left: an entry deleted
    before it expired; ctnetlink_dump_timeout with skip_zero).  ``ct_id``: the entry's CTA_ID."""

    kind: str
    protocol: int
    orig: CtTuple
    reply: CtTuple
    state: str | None
    mark: int
    timeout: int | None
    counters: CtCounters
    ct_id: int | None


def _attrs(
    buf: Buffer,
    at: int,
    end: int,
    headers: list[tuple[int, int, int]] | None = None,
    base: int = 0,
) -> dict[int, tuple[int, int]]:
    """The attributes between ``at`` and ``end``: type -> (start, end) of the payload
    (the last one of a type); ValueError if one runs past the end.  With ``headers``,
    each header passed is appended to it as (offset from ``base``, nla_len, nla_type)."""
    found: dict[int, tuple[int, int]] = {}
    while at + 4 <= end:
        nla_len, kind = _NLA.unpack_from(buf, at)
        if nla_len < 4 or at + nla_len > end:
            raise ValueError("bad ctnetlink attribute")
        if headers is not None:
            headers.append((at - base, nla_len, kind))
        found[kind & NLA_TYPE_MASK] = (at + 4, at + nla_len)
        at += (nla_len + 3) & ~3
    return found


class _Plan:
    """What a walk of one message found: every attribute header it passed (offset from
    the message's start, nla_len, nla_type) and where each value it reads lies
    (name -> offset, struct code)."""

    def __init__(self) -> None:
        self.headers: list[tuple[int, int, int]] = []
        self.fields: dict[str, tuple[int, str]] = {}
        self.protocol = 0

    def attrs(self, buf: Buffer, base: int, at: int, end: int) -> dict[int, tuple[int, int]]:
        return _attrs(buf, at, end, self.headers, base)

    def field(self, name: str, base: int, span: tuple[int, int] | None, code: str) -> None:
        """The value ``name`` is the attribute at ``span`` (when there is one), read as
        the struct ``code`` (network order); ValueError if the payload is shorter."""
        if span is None:
            return
        if span[1] - span[0] < struct.calcsize("!" + code):
            raise ValueError("short ctnetlink attribute")
        self.fields[name] = (span[0] - base, code)

    def ends(self, buf: Buffer, base: int, span: tuple[int, int] | None, prefix: str) -> int:
        """CTA_TUPLE_ORIG or CTA_TUPLE_REPLY: its fields as ``prefix`` + src, sport,
        dst, dport; the protocol number."""
        if span is None:
            raise ValueError("ctnetlink message without a tuple")
        parts = self.attrs(buf, base, *span)
        ip, proto = parts.get(CTA_TUPLE_IP), parts.get(CTA_TUPLE_PROTO)
        if ip is None or proto is None:
            raise ValueError("ctnetlink tuple without addresses or protocol")
        addrs = self.attrs(buf, base, *ip)
        size = 4 if CTA_IP_V4_SRC in addrs else 16
        src = addrs.get(CTA_IP_V4_SRC if size == 4 else CTA_IP_V6_SRC)
        dst = addrs.get(CTA_IP_V4_DST if size == 4 else CTA_IP_V6_DST)
        if src is None or dst is None or src[1] - src[0] != size or dst[1] - dst[0] != size:
            raise ValueError("ctnetlink tuple with bad addresses")
        self.field(prefix + "src", base, src, f"{size}s")
        self.field(prefix + "dst", base, dst, f"{size}s")
        fields = self.attrs(buf, base, *proto)
        number = fields.get(CTA_PROTO_NUM)
        if number is None:
            raise ValueError("ctnetlink tuple without a protocol number")
        self.field(prefix + "proto", base, number, "B")
        self.field(prefix + "sport", base, fields.get(CTA_PROTO_SRC_PORT), "H")
        self.field(prefix + "dport", base, fields.get(CTA_PROTO_DST_PORT), "H")
        value: int = _U8.unpack_from(buf, number[0])[0]
        return value

    def counter(self, buf: Buffer, base: int, span: tuple[int, int] | None, prefix: str) -> None:
        if span is not None:
            fields = self.attrs(buf, base, *span)
            self.field(prefix + "packets", base, fields.get(CTA_COUNTERS_PACKETS), "Q")
            self.field(prefix + "bytes", base, fields.get(CTA_COUNTERS_BYTES), "Q")

    def state(self, buf: Buffer, base: int, span: tuple[int, int] | None) -> None:
        if span is not None and (tcp := self.attrs(buf, base, *span).get(CTA_PROTOINFO_TCP)):
            self.field("state", base, self.attrs(buf, base, *tcp).get(CTA_PROTOINFO_TCP_STATE),
                       "B")  # fmt: skip


class _Layout:
    """How to read every message of one shape: the headers a walk passed, checked in
    one unpack, and the values read in another.  A message whose headers are the same
    is walked the same way, so reading it by the layout gives what the walk would."""

    def __init__(self, plan: _Plan) -> None:
        self.protocol = plan.protocol
        headers = sorted(plan.headers)
        self.headers = _packed("=", [(at, "HH") for at, _, _ in headers])
        self.expected = tuple(n for _, nla_len, kind in headers for n in (nla_len, kind))
        self.values = _packed("!", list(plan.fields.values()))
        order = sorted(plan.fields, key=lambda name: plan.fields[name][0])
        self.names = tuple(order)

    def read(self, buf: Buffer, at: int, kind: str) -> CtEvent | None:
        """The message at ``at`` as a CtEvent, or None when it has another shape."""
        if self.headers.unpack_from(buf, at) != self.expected:
            return None
        v = dict(zip(self.names, self.values.unpack_from(buf, at), strict=True))
        if v["proto"] != self.protocol:
            return None
        counters = CtCounters(v.get("opackets", 0), v.get("obytes", 0), v.get("rpackets", 0),
                              v.get("rbytes", 0))  # fmt: skip
        if not any(counters):
            counters = NO_COUNTERS
        state = v.get("state")
        return CtEvent(
            kind=kind,
            protocol=self.protocol,
            orig=CtTuple(v["src"], v.get("sport", 0), v["dst"], v.get("dport", 0)),
            reply=CtTuple(v["rsrc"], v.get("rsport", 0), v["rdst"], v.get("rdport", 0)),
            state=None if state is None else (
                TCP_CONNTRACK_NAMES[state] if state < len(TCP_CONNTRACK_NAMES) else str(state)),
            mark=v.get("mark", 0),
            timeout=v.get("timeout"),
            counters=counters,
            ct_id=v.get("ct_id"),
        )  # fmt: skip


def _packed(order: str, where: list[tuple[int, str]]) -> struct.Struct:
    """A struct reading the codes at their offsets (in offset order), skipping the rest."""
    fmt, at = order, 0
    for offset, code in sorted(where):
        fmt += "x" * (offset - at) + code
        at = offset + struct.calcsize("!" + code)
    return struct.Struct(fmt)


def _plan(buf: Buffer, at: int, end: int) -> _Plan:
    """Walk the ctnetlink conntrack message between ``at`` and ``end``: ValueError if
    it is malformed."""
    if end - at < _HEAD:
        raise ValueError("short ctnetlink message")
    plan = _Plan()
    top = plan.attrs(buf, at, at + _HEAD, end)
    plan.protocol = plan.ends(buf, at, top.get(CTA_TUPLE_ORIG), "")
    plan.ends(buf, at, top.get(CTA_TUPLE_REPLY), "r")
    plan.counter(buf, at, top.get(CTA_COUNTERS_ORIG), "o")
    plan.counter(buf, at, top.get(CTA_COUNTERS_REPLY), "r")
    if plan.protocol == socket.IPPROTO_TCP:
        plan.state(buf, at, top.get(CTA_PROTOINFO))
    plan.field("mark", at, top.get(CTA_MARK), "I")
    plan.field("timeout", at, top.get(CTA_TIMEOUT), "I")
    plan.field("ct_id", at, top.get(CTA_ID), "I")
    return plan


def event_kind(msg_type: int, flags: int) -> str | None:
    """What ctnetlink_conntrack_event meant by a message: "destroy" for
    IPCTNL_MSG_CT_DELETE, "new" for IPCTNL_MSG_CT_NEW with NLM_F_CREATE, "update" for
    IPCTNL_MSG_CT_NEW without; None for any other message."""
    if msg_type == CT_DELETE_TYPE:
        return "destroy"
    if msg_type == CT_NEW_TYPE:
        return "new" if flags & NLM_F_CREATE else "update"
    return None


# The layouts of the message shapes seen, by message length (events of one kind of
# connection all have one or two shapes): a message of a known shape is read in two
# unpacks instead of a walk of its attributes.
_LAYOUTS: dict[int, _Layout] = {}
MAX_LAYOUTS = 64


def parse_entry(buf: Buffer, at: int, end: int, kind: str) -> CtEvent:
    """The ctnetlink conntrack message between ``at`` (its nlmsghdr) and ``end``, as a
    CtEvent of ``kind``; ValueError if it is malformed."""
    layout = _LAYOUTS.get(end - at)
    if layout is not None and end - at >= _HEAD:
        event = layout.read(buf, at, kind)
        if event is not None:
            return event
    layout = _Layout(_plan(buf, at, end))
    if len(_LAYOUTS) >= MAX_LAYOUTS:
        _LAYOUTS.clear()
    _LAYOUTS[end - at] = layout
    event = layout.read(buf, at, kind)
    if event is None:  # the walk and its layout disagree: cannot be
        raise ValueError("ctnetlink message read two ways")
    return event


def messages(buf: Buffer, size: int) -> Iterator[tuple[int, int, int, int, int]]:
    """The netlink messages in the first ``size`` bytes of a datagram: (type, flags,
    seq, start, end); ValueError at one whose length is impossible."""
    at = 0
    while at + _NLMSGHDR.size <= size:
        length, kind, flags, seq, _ = _NLMSGHDR.unpack_from(buf, at)
        if length < _NLMSGHDR.size or at + length > size:
            raise ValueError("bad netlink message length")
        yield kind, flags, seq, at, at + length
        at += (length + 3) & ~3


def _attr(kind: int, data: bytes) -> bytes:
    raw = _NLA.pack(4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def _request(msg_type: int, flags: int, seq: int, family: int, attrs: bytes) -> bytes:
    body = struct.pack("!BBH", family, NFNETLINK_V0, 0) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def mark_attrs(value: int, mask: int) -> bytes:
    """CTA_MARK and CTA_MARK_MASK: the entries whose connmark & mask == value."""
    return _attr(CTA_MARK, _BE32.pack(value)) + _attr(CTA_MARK_MASK, _BE32.pack(mask))


def tuple_attr(kind: int, protocol: int, tup: CtTuple) -> bytes:
    """CTA_TUPLE_ORIG (or _REPLY) as ctnetlink_parse_tuple reads it."""
    v4 = len(tup.src) == 4
    ip = _attr(CTA_IP_V4_SRC if v4 else CTA_IP_V6_SRC, tup.src) + _attr(
        CTA_IP_V4_DST if v4 else CTA_IP_V6_DST, tup.dst
    )
    proto = (
        _attr(CTA_PROTO_NUM, _U8.pack(protocol))
        + _attr(CTA_PROTO_SRC_PORT, _BE16.pack(tup.sport))
        + _attr(CTA_PROTO_DST_PORT, _BE16.pack(tup.dport))
    )
    inner = _attr(CTA_TUPLE_IP | NLA_F_NESTED, ip) + _attr(CTA_TUPLE_PROTO | NLA_F_NESTED, proto)
    return _attr(kind | NLA_F_NESTED, inner)


# The byte of nlmsg_type (host order) that holds the message (the other: the subsystem).
_MSG_TYPE_BYTE = 4 if sys.byteorder == "little" else 5


class Clients(NamedTuple):
    """The clients a worker follows: IPv4 sources whose address & ``mask`` is one of
    ``values`` (integers), and IPv6 ones or not."""

    mask: int
    values: tuple[int, ...]
    ipv6: bool


def event_filter(tag: int, mask: int, tcp_states: Iterable[str] | None = None,
                 clients: Clients | None = None) -> list[bpf.Insn | bpf.Label]:  # fmt: skip
    """The kernel-side filter of a CtEvents socket (classic BPF over the attributes):
    only the messages whose CTA_MARK & ``mask`` == ``tag``; with ``clients``, only
    those whose original source (CTA_TUPLE_ORIG / CTA_TUPLE_IP / CTA_IP_V4_SRC, or an
    IPv6 one) is among them; with ``tcp_states``, of the updates that carry a TCP state
    (CTA_PROTOINFO / CTA_PROTOINFO_TCP / CTA_PROTOINFO_TCP_STATE) only those in one of
    the states named.  Destroy messages and updates without a TCP state pass.  A
    message without a mark does not."""
    top = _HEAD  # the first attribute, after nlmsghdr and struct nfgenmsg
    program: list[bpf.Insn | bpf.Label] = [
        bpf.ld_imm(top), bpf.ldx_imm(CTA_MARK), bpf.nlattr(), bpf.jeq(0, "drop", 0),
        bpf.tax(), bpf.ldw_ind(4), bpf.and_k(mask), bpf.jeq(tag & mask, 0, "drop"),
    ]  # fmt: skip
    if clients is not None:
        program += [
            bpf.ld_imm(top), bpf.ldx_imm(CTA_TUPLE_ORIG), bpf.nlattr(), bpf.jeq(0, "drop", 0),
            bpf.ldx_imm(CTA_TUPLE_IP), bpf.nlattr_nest(), bpf.jeq(0, "drop", 0),
            bpf.ldx_imm(CTA_IP_V4_SRC), bpf.nlattr_nest(),
            bpf.jeq(0, "clients" if clients.ipv6 else "drop", 0),
            bpf.tax(), bpf.ldw_ind(4), bpf.and_k(clients.mask),
            *(bpf.jeq(value & clients.mask, "clients", 0) for value in clients.values),
            bpf.ret(bpf.DROP),
            bpf.Label("clients"),
        ]  # fmt: skip
    if tcp_states is not None:
        numbers = sorted({TCP_CONNTRACK_NAMES.index(name) for name in tcp_states})
        program += [
            bpf.ldb_abs(_MSG_TYPE_BYTE), bpf.jeq(IPCTNL_MSG_CT_DELETE, "accept", 0),
            bpf.ld_imm(top), bpf.ldx_imm(CTA_PROTOINFO), bpf.nlattr(),
            bpf.jeq(0, "accept", 0),
            bpf.ldx_imm(CTA_PROTOINFO_TCP), bpf.nlattr_nest(), bpf.jeq(0, "accept", 0),
            bpf.ldx_imm(CTA_PROTOINFO_TCP_STATE), bpf.nlattr_nest(), bpf.jeq(0, "accept", 0),
            bpf.tax(), bpf.ldb_ind(4),
            *(bpf.jeq(number, "accept", 0) for number in numbers),
            bpf.ret(bpf.DROP),
        ]  # fmt: skip
    program += [bpf.Label("accept"), bpf.ret(bpf.ACCEPT_ALL), bpf.Label("drop"),
                bpf.ret(bpf.DROP)]  # fmt: skip
    return program


def _socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_NETFILTER)  # fmt: skip


class CtEvents:
    """Conntrack's events for the entries whose connmark & ``mask`` == ``tag``, in the
    network namespace of the thread that makes it.

    ``read()`` drains what is waiting (up to READ_BUDGET datagrams).  When the kernel
    could not deliver some (ENOBUFS: the receive buffer was full), ``lost`` is set and
    ``enobufs`` counted: the owner reads the table again (``CtTable.dump``) and clears
    ``lost``.  A message that cannot be read is counted in ``malformed`` and skipped;
    one with another mark in ``ignored``.  Nothing here raises on what the kernel sends.
    """

    def __init__(
        self,
        tag: int,
        mask: int,
        rcvbuf: int = EVENTS_RCVBUF,
        groups: int = EVENT_GROUPS,
        tcp_states: Iterable[str] | None = None,
    ) -> None:
        """``groups``: the event groups as a bit mask (1 << (group - 1) each).  The
        kernel itself drops the messages of other marks and, with ``tcp_states``, the
        TCP updates to other states (``event_filter``)."""
        self.tag, self.mask = tag & mask, mask
        self.lost = False
        self.enobufs = self.malformed = self.ignored = 0
        self.sock = _socket()
        try:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:  # without CAP_NET_ADMIN: up to rmem_max
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.tcp_states = None if tcp_states is None else tuple(tcp_states)
            self.select(None)
            self.sock.bind((0, groups))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self._buf = bytearray(RECV_SIZE)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def select(self, clients: Clients | None) -> None:
        """From now on only the events of ``clients`` (None: of every client) reach
        this socket: the kernel's filter is replaced."""
        bpf.attach(self.sock, event_filter(self.tag, self.mask, self.tcp_states, clients))

    def read(self) -> list[CtEvent]:
        """The events waiting, in the kernel's order; an empty list when none is.  An
        error of the socket other than ENOBUFS (it was closed, ...) raises OSError."""
        got: list[CtEvent] = []
        buf, view = self._buf, memoryview(self._buf)
        for _ in range(READ_BUDGET):
            try:
                size = self.sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                self.lost = True
                self.enobufs += 1
                continue
            malformed, ignored = take_events(view, size, self.tag, self.mask, got)
            self.malformed += malformed
            self.ignored += ignored
        return got


def take_events(view: Buffer, size: int, tag: int, mask: int,
                got: list[CtEvent]) -> tuple[int, int]:  # fmt: skip
    """The conntrack events of one datagram whose connmark & ``mask`` == ``tag``,
    appended to ``got``; how many messages were malformed and how many had another
    mark.  Never raises: a datagram whose framing breaks counts once as malformed
    (after the events before the break)."""
    malformed = ignored = 0
    try:
        for msg_type, flags, _, start, end in messages(view, size):
            kind = event_kind(msg_type, flags)
            if kind is None:
                continue
            try:
                event = parse_entry(view, start, end, kind)
            except (ValueError, struct.error):
                malformed += 1
                continue
            if event.mark & mask == tag:
                got.append(event)
            else:
                ignored += 1
    except (ValueError, struct.error):
        malformed += 1
    return malformed, ignored


class CtTable:
    """Requests to the conntrack table of the network namespace of the thread that
    makes it, answered in turn (a blocking socket with a timeout)."""

    def __init__(self, timeout: float = REQUEST_TIMEOUT) -> None:
        self.sock = _socket()
        try:
            self.sock.settimeout(timeout)
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise
        self.seq = 0
        self.malformed = 0
        self._buf = bytearray(DUMP_RECV_SIZE)

    def close(self) -> None:
        self.sock.close()

    def dump(self, tag: int, mask: int) -> list[CtEvent]:
        """The entries whose connmark & ``mask`` == ``tag`` (kind "dump"), of both
        families (AF_UNSPEC).  The kernel filters by CTA_MARK/CTA_MARK_MASK; the
        answer is checked here again.  A message that cannot be read is counted in
        ``malformed`` and skipped; the kernel's refusal or no answer within the
        timeout raises OSError."""
        tag &= mask
        seq = self._send(CT_GET_TYPE, NLM_F_REQUEST | NLM_F_DUMP, socket.AF_UNSPEC,
                         mark_attrs(tag, mask))  # fmt: skip
        got: list[CtEvent] = []
        view = memoryview(self._buf)
        while True:
            size = self.sock.recv_into(self._buf)
            for msg_type, _, msg_seq, start, end in messages(view, size):
                if msg_seq != seq:
                    continue
                if msg_type == NLMSG_DONE:  # its payload: the dump's error, if any
                    if end - start >= _NLMSGHDR.size + 4:
                        _raise(view, start, end, "dump")
                    return got
                if msg_type == NLMSG_ERROR:
                    _raise(view, start, end, "dump")
                    continue
                if msg_type != CT_NEW_TYPE:
                    continue
                try:
                    event = parse_entry(view, start, end, "dump")
                except (ValueError, struct.error):
                    self.malformed += 1
                    continue
                if event.mark & mask == tag:
                    got.append(event)

    def delete(self, event: CtEvent) -> bool:
        """Delete the entry of ``event`` by its original tuple (and its CTA_ID when
        known, so a newer entry on the same tuple stays); False if it was gone (ENOENT).
        For protocols with ports (TCP, UDP, SCTP): an ICMP entry's tuple has no ports."""
        family = socket.AF_INET if len(event.orig.src) == 4 else socket.AF_INET6
        attrs = tuple_attr(CTA_TUPLE_ORIG, event.protocol, event.orig)
        if event.ct_id is not None:
            attrs += _attr(CTA_ID, _BE32.pack(event.ct_id))
        try:
            self._ack(CT_DELETE_TYPE, family, attrs)
        except FileNotFoundError:
            return False
        return True

    def delete_marked(self, value: int, mask: int) -> None:
        """Delete every entry whose connmark & ``mask`` == ``value``, of both families
        (IPCTNL_MSG_CT_DELETE with CTA_MARK/CTA_MARK_MASK and no tuple)."""
        self._ack(CT_DELETE_TYPE, socket.AF_UNSPEC, mark_attrs(value & mask, mask))

    def _send(self, msg_type: int, flags: int, family: int, attrs: bytes) -> int:
        self.seq = self.seq % 0xFFFFFFFF + 1
        self.sock.send(_request(msg_type, flags, self.seq, family, attrs))
        return self.seq

    def _ack(self, msg_type: int, family: int, attrs: bytes) -> None:
        seq = self._send(msg_type, NLM_F_REQUEST | NLM_F_ACK, family, attrs)
        view = memoryview(self._buf)
        while True:
            size = self.sock.recv_into(self._buf)
            for kind, _, msg_seq, start, end in messages(view, size):
                if kind == NLMSG_ERROR and msg_seq == seq:
                    _raise(view, start, end, "delete")
                    return


def _raise(view: memoryview, start: int, end: int, what: str) -> None:
    """An NLMSG_ERROR's errno as OSError (nothing for an acknowledgement)."""
    if end - start < _NLMSGHDR.size + 4:
        raise OSError(errno.EPROTO, f"conntrack {what}: short netlink error")
    code = -struct.unpack_from("=i", view, start + _NLMSGHDR.size)[0]
    if code:
        raise OSError(code, f"conntrack {what}: {errno.errorcode.get(code, code)}")
