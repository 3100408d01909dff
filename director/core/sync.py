"""The connection sync protocol (net/netfilter/ipvs/ip_vs_sync.c), pure.

A master director multicasts what its connection table learns, and backups put the
same entries in theirs, so that a backup that takes over the VIP carries on the
connections it never saw open.  This module is the wire and the two ends' logic,
without sockets or clock: the daemon (director.shell.sync) owns the sockets and
passes time in.

The wire, as the kernel sends and parses it:

- version 1 (``sync_version`` 1, the default): an 8-byte header (struct
  ip_vs_sync_mesg: reserved 0, syncid, size, nr_conns, version 1, spare 0), then
  entries of 36 bytes for IPv4 (struct ip_vs_sync_v4) or 72 for IPv6 (struct
  ip_vs_sync_v6), each followed by its options (SEQ data, PE data and name: type,
  length, data) and padded to 32 bits before the next;
- version 0 (received, and sent with ``sync_version`` 0): a 4-byte header (struct
  ip_vs_sync_mesg_v0: nr_conns, syncid, size) and 24-byte entries (struct
  ip_vs_sync_conn_v0), 48 with the sequence options.

``decode`` never raises: every datagram or entry the kernel's ip_vs_process_message,
ip_vs_process_message_v0 and ip_vs_proc_sync_conn refuse is counted by its reason
(``REASONS``), and what the kernel drops with it (the rest of the datagram, or only
that entry) is dropped the same way.
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from director.core import proto_tcp
from director.core.app import AppConn, new_conn
from director.core.conn import Conn
from director.core.persist import new_template
from director.core.service import IPPROTO_TCP, IPPROTO_UDP, Dest, Service
from director.core.sysctl import Sysctls
from director.core.xmit import KERNEL_NAT, bind_xmit
from director.model.config import Config

if TYPE_CHECKING:
    from director.core.engine import Director

# -- constants of ip_vs_sync.c, include/net/ip_vs.h and include/uapi/linux/ip_vs.h ------

SYNC_GROUP = "224.0.0.81"  # IP_VS_SYNC_GROUP
SYNC_PORT = 8848  # IP_VS_SYNC_PORT
SYNC_TTL = 1  # start_sync_thread's default mcast_ttl
SYNC_PROTO_VER = 1
UDP_IP_HLEN = 28  # sizeof(struct iphdr) + sizeof(struct udphdr)
MASTER_MTU = 1500  # start_sync_thread: a master's messages fit 1500 whatever the link
MAXLEN_MAX = 65535 - UDP_IP_HLEN
BACKUP_MIN_MAXLEN = 1024

IP_VS_STATE_MASTER = 1
IP_VS_STATE_BACKUP = 2
STATE_NAMES = {IP_VS_STATE_MASTER: "master", IP_VS_STATE_BACKUP: "backup"}

# IP_VS_CONN_F_*
F_FWD_MASK = 0x0007
F_MASQ = 0x0000
F_LOCALNODE = 0x0001
F_TUNNEL = 0x0002
F_DROUTE = 0x0003
F_SYNC = 0x0020
F_HASHED = 0x0040
F_NOOUTPUT = 0x0080
F_INACTIVE = 0x0100
F_OUT_SEQ = 0x0200
F_IN_SEQ = 0x0400
F_SEQ_MASK = 0x0600
F_NO_CPORT = 0x0800
F_TEMPLATE = 0x1000
F_ONE_PACKET = 0x2000
F_BACKUP_MASK = F_FWD_MASK | F_NOOUTPUT | F_INACTIVE | F_SEQ_MASK | F_NO_CPORT | F_TEMPLATE
F_BACKUP_UPD_MASK = F_INACTIVE | F_SEQ_MASK

# The forwarding method of a connection's transmitter, as its flags carry it.
FWD_FLAGS: dict[str, int] = {
    "masq": F_MASQ, KERNEL_NAT: F_MASQ, "local": F_LOCALNODE, "tunnel": F_TUNNEL,
    "droute": F_DROUTE,
}  # fmt: skip

# Entry types (STYPE_F_INET6) and version field (SVER_*).
STYPE_F_INET6 = 1
SVER_SHIFT = 12
SVER_MASK = 0x0FFF

# Options after an entry's fixed part (IPVS_OPT_*).
OPT_SEQ_DATA = 1
OPT_PE_DATA = 2
OPT_PE_NAME = 3
OPT_F_PARAM = 1 << (7 - 1)  # IPVS_OPT_PARAM: an option that may be ignored
PENAME_MAXLEN = 16  # IP_VS_PENAME_MAXLEN
PEDATA_MAXLEN = 255  # IP_VS_PEDATA_MAXLEN

# The wire structures (network order).
MESG = struct.Struct("!BBHBbH")  # struct ip_vs_sync_mesg: 8 bytes
MESG_V0 = struct.Struct("!BBH")  # struct ip_vs_sync_mesg_v0: 4 bytes
SYNC_V4 = struct.Struct("!BBHIHHHHII4s4s4s")  # struct ip_vs_sync_v4: 36 bytes
SYNC_V6 = struct.Struct("!BBHIHHHHII16s16s16s")  # struct ip_vs_sync_v6: 72 bytes
CONN_V0 = struct.Struct("!xBHHH4s4s4sHH")  # struct ip_vs_sync_conn_v0: 24 bytes
SEQ = struct.Struct("!III")  # struct ip_vs_seq: init_seq, delta, previous_delta
CONN_OPTIONS_SIZE = 2 * SEQ.size  # struct ip_vs_sync_conn_options: 24 bytes
FULL_CONN_SIZE_V0 = CONN_V0.size + CONN_OPTIONS_SIZE

# States a protocol has (pp->num_states), for ip_vs_proc_sync_conn's check; protocols
# not here (SCTP, AH, ESP: the kernel's others) are not carried by director.
NUM_STATES: dict[int, int] = {IPPROTO_TCP: len(proto_tcp.STATE_NAMES), IPPROTO_UDP: 1}
TEMPLATE_TIMEOUT_V0 = 3 * 60  # ip_vs_proc_conn: a v0 template's timeout (3*60*HZ)

# The kernel's timers in seconds (include/net/ip_vs.h).
SYNC_WAKEUP_RATE = 8  # IPVS_SYNC_WAKEUP_RATE: queued messages that wake the sender
SYNC_SEND_DELAY = 0.020  # IPVS_SYNC_SEND_DELAY: HZ / 50
SYNC_CHECK_PERIOD = 1.0  # IPVS_SYNC_CHECK_PERIOD: the idle sender looks every second
SYNC_FLUSH_TIME = 2.0  # IPVS_SYNC_FLUSH_TIME: an entry waits at most 2 s in a buffer
HZ = 1000  # the jiffies of sync_endtime: milliseconds here

# Why a datagram or an entry was refused, as ip_vs_process_message and
# ip_vs_proc_sync_conn refuse them.  "Dropped" reasons end the datagram (the kernel
# returns), the others skip one entry and go on.
REASONS: dict[str, str] = {
    "header_short": "shorter than a v0 header (4 bytes)",
    "size_mismatch": "the header's size is not the datagram's length",
    "entry_short": "the count promises an entry the datagram has no room for",
    "entry_size": "an entry's size runs past the datagram",
    "entry_version": "an entry of a version other than 0",
    "bad_type": "an entry type that is neither IPv4 nor IPv6",
    "entry_fixed": "an entry's size is smaller than its fixed part",
    "option_short": "an option header past the entry's end",
    "option_length": "an option of length 0, or running past the entry's end",
    "option_seq": "a SEQ option of the wrong length, or found twice",
    "option_pe_data": "a PE data option too long, or found twice",
    "option_pe_name": "a PE name option too long, or found twice",
    "unknown_option": "an unknown mandatory option (the entry is skipped)",
    "protocol": "a protocol director does not carry (the entry is skipped)",
    "state": "a state the protocol does not have (the entry is skipped)",
    "pe": "persistence engine data (director has no PE: the entry is skipped)",
    "v0_short": "a v0 entry past the datagram's end",
    "v0_options_short": "a v0 entry's sequence options past the datagram's end",
}
# Datagrams not taken, but not malformed: counted apart.
IGNORED = ("syncid", "own")


@dataclass(frozen=True, slots=True)
class SyncConn:
    """One entry as the wire carries it (union ip_vs_sync_conn, options included)."""

    protocol: int
    flags: int
    state: int
    caddr: bytes
    cport: int
    vaddr: bytes
    vport: int
    daddr: bytes
    dport: int
    fwmark: int = 0
    timeout: int = 0  # seconds; 0 from a v0 message (the protocol's own then)
    in_seq: tuple[int, int, int] | None = None  # the SEQ option: in and out ip_vs_seq
    out_seq: tuple[int, int, int] | None = None
    pe_data: bytes | None = None
    pe_name: bytes | None = None

    @property
    def af(self) -> int:
        return 6 if len(self.caddr) == 16 else 4


@dataclass
class Decoded:
    """What one datagram gave: its header's syncid and version, the entries taken,
    and the reasons anything was refused (``REASONS``, or ``IGNORED``'s syncid)."""

    syncid: int = 0
    version: int = 0
    conns: list[SyncConn] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


# -- encoding ----------------------------------------------------------------------


def _seq_option(conn: SyncConn) -> bytes:
    in_seq = conn.in_seq or (0, 0, 0)
    out_seq = conn.out_seq or (0, 0, 0)
    return SEQ.pack(*in_seq) + SEQ.pack(*out_seq)


def entry_size(conn: SyncConn) -> int:
    """ip_vs_sync_conn's ``len``: the fixed part, then each option with its 2-byte
    header; padding not included."""
    size = SYNC_V6.size if conn.af == 6 else SYNC_V4.size
    if conn.flags & F_SEQ_MASK:
        size += CONN_OPTIONS_SIZE + 2
    if conn.pe_data:
        size += len(conn.pe_data) + 2
        if conn.pe_name:
            size += len(conn.pe_name) + 2
    return size


def encode_entry(conn: SyncConn) -> bytes:
    """One version 1 entry (ip_vs_sync_conn), without the padding that follows it.
    The flags go out without IP_VS_CONN_F_HASHED, as the kernel sends them."""
    size = entry_size(conn)
    layout = SYNC_V6 if conn.af == 6 else SYNC_V4
    out = bytearray(
        layout.pack(
            STYPE_F_INET6 if conn.af == 6 else 0, conn.protocol, size & SVER_MASK,
            conn.flags & ~F_HASHED & 0xFFFFFFFF, conn.state, conn.cport, conn.vport,
            conn.dport, conn.fwmark, conn.timeout, conn.caddr, conn.vaddr, conn.daddr,
        )
    )  # fmt: skip
    if conn.flags & F_SEQ_MASK:
        out += bytes((OPT_SEQ_DATA, CONN_OPTIONS_SIZE)) + _seq_option(conn)
    if conn.pe_data:
        out += bytes((OPT_PE_DATA, len(conn.pe_data))) + conn.pe_data
        if conn.pe_name:
            out += bytes((OPT_PE_NAME, len(conn.pe_name))) + conn.pe_name
    return bytes(out)


def encode_entry_v0(conn: SyncConn) -> bytes:
    """One version 0 entry (ip_vs_sync_conn_v0): IPv4 only, 16-bit flags, no timeout."""
    out = CONN_V0.pack(
        conn.protocol, conn.cport, conn.vport, conn.dport, conn.caddr, conn.vaddr,
        conn.daddr, conn.flags & ~F_HASHED & 0xFFFF, conn.state,
    )  # fmt: skip
    if conn.flags & F_SEQ_MASK:
        out += _seq_option(conn)
    return out


class SyncBuff:
    """A message being filled (struct ip_vs_sync_buff): its entries, the room it
    has (``sync_maxlen``, or more for an entry larger than that) and when its first
    entry came (``firstuse``, for the 2 s flush)."""

    def __init__(self, syncid: int, version: int, room: int, firstuse: float) -> None:
        self.syncid = syncid
        self.version = version
        self.header = MESG.size if version else MESG_V0.size
        self.end = max(room + self.header, self.header)
        self.body = bytearray()
        self.nr_conns = 0
        self.firstuse = firstuse

    @property
    def head(self) -> int:
        return self.header + len(self.body)

    def pad(self) -> int:
        """The padding the next v1 entry needs to start on 32 bits."""
        return (4 - self.head) & 3 if self.version else 0

    def fits(self, size: int) -> bool:
        return self.head + size + self.pad() <= self.end

    def add(self, entry: bytes) -> None:
        self.body += bytes(self.pad()) + entry
        self.nr_conns += 1

    def message(self) -> bytes:
        if self.version:
            return MESG.pack(0, self.syncid, self.head, self.nr_conns, SYNC_PROTO_VER, 0) + bytes(
                self.body
            )
        return MESG_V0.pack(self.nr_conns, self.syncid, self.head) + bytes(self.body)


def encode(
    conns: list[SyncConn], syncid: int = 0, maxlen: int = MASTER_MTU - UDP_IP_HLEN, version: int = 1
) -> list[bytes]:
    """The messages a master would send for ``conns``, in order, each at most
    ``maxlen`` bytes (unless one entry alone is longer, as the kernel allows)."""
    out: list[bytes] = []
    buff: SyncBuff | None = None
    for conn in conns:
        entry = encode_entry(conn) if version else encode_entry_v0(conn)
        if buff is not None and not buff.fits(len(entry)):
            out.append(buff.message())
            buff = None
        if buff is None:
            buff = SyncBuff(syncid, version, max(len(entry), maxlen - _hdr(version)), 0.0)
        buff.add(entry)
    if buff is not None:
        out.append(buff.message())
    return out


def _hdr(version: int) -> int:
    return MESG.size if version else MESG_V0.size


# -- decoding ----------------------------------------------------------------------


def decode(buf: bytes, syncid: int = 0) -> Decoded:
    """ip_vs_process_message: the entries of one datagram, never raising.  A
    ``syncid`` other than 0 takes only the messages of that syncid, as a backup's
    bcfg.syncid does."""
    out = Decoded()
    errors = out.errors
    if len(buf) < MESG_V0.size:
        errors["header_short"] += 1
        return out
    reserved, msg_syncid, size = MESG_V0.unpack_from(buf)
    out.syncid = msg_syncid
    if len(buf) != size:
        errors["size_mismatch"] += 1
        return out
    if syncid and msg_syncid != syncid:
        errors["syncid"] += 1
        return out
    if len(buf) >= MESG.size:
        _, _, _, nr_conns, version, spare = MESG.unpack_from(buf)
        if version == SYNC_PROTO_VER and reserved == 0 and spare == 0:
            out.version = SYNC_PROTO_VER
            _decode_v1(buf, nr_conns, out)
            return out
    _decode_v0(buf, reserved, out)
    return out


def _decode_v1(buf: bytes, nr_conns: int, out: Decoded) -> None:
    end = len(buf)
    msg_end = MESG.size
    for _ in range(nr_conns):
        p = msg_end
        if p + SYNC_V4.size > end:
            out.errors["entry_short"] += 1
            return
        ver_size = int.from_bytes(buf[p + 2 : p + 4], "big")
        size = ver_size & SVER_MASK
        msg_end = p + size
        if msg_end > end:
            out.errors["entry_size"] += 1
            return
        if ver_size >> SVER_SHIFT:
            out.errors["entry_version"] += 1
            return
        reason, conn = _entry(buf, p, msg_end)
        if reason is not None:
            out.errors[reason] += 1
            if reason not in _SKIP_ONLY:
                return
        elif conn is not None:
            out.conns.append(conn)
        msg_end = p + ((size + 3) & ~3)


# ip_vs_proc_sync_conn's positive returns: the entry is skipped, the datagram goes on.
_SKIP_ONLY = frozenset(("unknown_option", "protocol", "state", "pe"))


def _entry(buf: bytes, p: int, msg_end: int) -> tuple[str | None, SyncConn | None]:
    """ip_vs_proc_sync_conn: one v1 entry between ``p`` and ``msg_end``."""
    kind = buf[p]
    if kind & STYPE_F_INET6:
        layout = SYNC_V6
    elif kind == 0:
        layout = SYNC_V4
    else:
        return "bad_type", None
    q = p + layout.size
    if q > msg_end:
        return "entry_fixed", None
    seq: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
    pe_data = pe_name = None
    skip = None
    while q < msg_end:
        if q + 2 > msg_end:
            return "option_short", None
        ptype, plen = buf[q], buf[q + 1]
        q += 2
        if not plen or q + plen > msg_end:
            return "option_length", None
        data = bytes(buf[q : q + plen])
        kind_ = ptype & ~OPT_F_PARAM
        if kind_ == OPT_SEQ_DATA:
            if plen != CONN_OPTIONS_SIZE or seq is not None:
                return "option_seq", None
            seq = (SEQ.unpack_from(data), SEQ.unpack_from(data, SEQ.size))
        elif kind_ == OPT_PE_DATA:
            if plen > PEDATA_MAXLEN or pe_data is not None:
                return "option_pe_data", None
            pe_data = data
        elif kind_ == OPT_PE_NAME:
            if plen > PENAME_MAXLEN or pe_name is not None:
                return "option_pe_name", None
            pe_name = data
        elif not ptype & OPT_F_PARAM and skip is None:
            skip = "unknown_option"  # the kernel's "goto out" ends the walk here
            break
        q += plen
    if skip is not None:
        return skip, None
    (_, protocol, _, flags, state, cport, vport, dport, fwmark, timeout, caddr, vaddr,
     daddr) = layout.unpack_from(buf, p)  # fmt: skip
    flags = flags & F_BACKUP_MASK | F_SYNC
    reason = _check_state(protocol, flags, state)
    if reason is not None:
        return reason, None
    if pe_data:
        return "pe", None  # no engine of that name here (or none named at all)
    return None, SyncConn(
        protocol, flags, state, caddr, cport, vaddr, vport, daddr, dport, fwmark, timeout,
        seq[0] if seq else None, seq[1] if seq else None, pe_data, pe_name,
    )  # fmt: skip


def _check_state(protocol: int, flags: int, state: int) -> str | None:
    """The protocol and state checks of ip_vs_proc_sync_conn (a template's state is
    not checked: the kernel only logs it)."""
    if flags & F_TEMPLATE:
        return None
    states = NUM_STATES.get(protocol)
    if states is None:
        return "protocol"
    if state >= states:
        return "state"
    return None


def _decode_v0(buf: bytes, nr_conns: int, out: Decoded) -> None:
    """ip_vs_process_message_v0."""
    end = len(buf)
    p = MESG_V0.size
    for _ in range(nr_conns):
        if p + CONN_V0.size > end:
            out.errors["v0_short"] += 1
            return
        protocol, cport, vport, dport, caddr, vaddr, daddr, flags, state = CONN_V0.unpack_from(
            buf, p
        )
        flags = (flags | F_SYNC) & ~F_HASHED
        seq = None
        if flags & F_SEQ_MASK:
            if p + FULL_CONN_SIZE_V0 > end:
                out.errors["v0_options_short"] += 1
                return
            opt = p + CONN_V0.size
            seq = (SEQ.unpack_from(buf, opt), SEQ.unpack_from(buf, opt + SEQ.size))
            p += FULL_CONN_SIZE_V0
        else:
            p += CONN_V0.size
        reason = _check_state(protocol, flags, state)
        if reason is not None:
            out.errors[reason] += 1
            continue
        in_seq, out_seq = seq if seq else (None, None)
        conn = SyncConn(
            protocol, flags, state, caddr, cport, vaddr, vport, daddr, dport, 0, 0, in_seq,
            out_seq,
        )  # fmt: skip
        out.conns.append(conn)


# -- a connection's sync state -------------------------------------------------------
#
# Conn keeps one slot for sync (a million entries must stay lean): the master's
# sync_endtime (in HZ ticks, its low 2 bits the retries, as the kernel keeps them),
# the state last synced (old_state) and whether the entry came by sync
# (IP_VS_CONN_F_SYNC), packed as endtime << 5 | old_state << 1 | synced.


def is_synced(conn: Conn) -> bool:
    return bool(conn.sync & 1)


def _old_state(conn: Conn) -> int:
    return conn.sync >> 1 & 0xF


def _endtime(conn: Conn) -> int:
    return conn.sync >> 5


def _set(conn: Conn, endtime: int, old_state: int) -> None:
    conn.sync = endtime << 5 | old_state << 1 | (conn.sync & 1)


def conn_flags(conn: Conn) -> int:
    """The IP_VS_CONN_F_* flags of an entry, as the kernel keeps them in cp->flags."""
    flags = FWD_FLAGS.get(conn.xmit.name, F_MASQ)
    if conn.nooutput:
        flags |= F_NOOUTPUT
    if conn.inactive and not conn.template:
        flags |= F_INACTIVE
    if conn.template:
        flags |= F_TEMPLATE
    if conn.sync & 1:
        flags |= F_SYNC
    if isinstance(conn, AppConn):
        flags |= conn.seq_flags  # IP_VS_CONN_F_IN_SEQ / OUT_SEQ
    elif not conn.cport and conn.control is not None and not conn.control.template:
        flags |= F_NO_CPORT  # a helper's data connection waiting for its client's port
    return flags


def fwmark(conn: Conn) -> int:
    """The firewall mark of a connection's service (cp->fwmark), 0 for others."""
    proto, _, mark = conn.svc.key
    return 0 if proto else mark


def from_conn(conn: Conn) -> SyncConn:
    """The wire entry of a connection or template (ip_vs_sync_conn's copy), with the
    SEQ option (IPVS_OPT_SEQ_DATA: in_seq, out_seq) of a helper's connection whose
    sequence numbers are moved."""
    seqs = (conn.in_seq, conn.out_seq) if isinstance(conn, AppConn) and conn.seq_flags else None
    return SyncConn(
        conn.protocol, conn_flags(conn), conn.state, conn.caddr, conn.cport, conn.vaddr,
        conn.vport, conn.daddr, conn.dport, fwmark(conn), int(conn.timeout),
        seqs[0] if seqs else None, seqs[1] if seqs else None,
    )  # fmt: skip


def pack_conn(conn: Conn) -> bytes:
    """encode_entry(from_conn(conn)) in one step, for the packet path: an entry of
    ours carries no options (no sequence adjustment, no persistence engine).  An IPv6
    connection is a struct ip_vs_sync_v6 of 72 bytes, type STYPE_F_INET6.  A helper's
    connection with moved sequence numbers takes encode_entry, with its SEQ option."""
    if isinstance(conn, AppConn) and conn.seq_flags:
        return encode_entry(from_conn(conn))
    caddr = conn.caddr
    if len(caddr) == 16:
        return SYNC_V6.pack(
            STYPE_F_INET6, conn.protocol, SYNC_V6.size, conn_flags(conn), conn.state,
            conn.cport, conn.vport, conn.dport, fwmark(conn), int(conn.timeout), caddr,
            conn.vaddr, conn.daddr,
        )  # fmt: skip
    return SYNC_V4.pack(
        0, conn.protocol, SYNC_V4.size, conn_flags(conn), conn.state, conn.cport, conn.vport,
        conn.dport, fwmark(conn), int(conn.timeout), caddr, conn.vaddr, conn.daddr,
    )  # fmt: skip


MIXED_FAMILY = "the sync protocol cannot carry mixed-family services"


def mixed_family(config: Config) -> str | None:
    """Why a sync daemon and ``config`` exclude each other, or None: a real server of
    another family than its service's, which no entry can say (the kernel refuses to
    start a sync daemon while any exists, ip_vs_genl_new_daemon, and to add one while
    a sync daemon runs, ip_vs_genl_set_cmd: both -EINVAL).  A firewall-mark service is
    of its own family (-f MARK -6: IPv6)."""
    for svc in config.services:
        for dest in svc.dests:
            if (":" in dest.addr) != (svc.family == 6):
                where = f"FWM {svc.fwmark}" if svc.protocol == "fwm" else (
                    f"{svc.protocol.upper()} {svc.addr}")  # fmt: skip
                return f"{MIXED_FAMILY} ({dest.addr} in {where})"
    return None


def syncable(conn: Conn, version: int) -> bool:
    """Whether the wire can carry ``conn``: version 0 only IPv4 connections
    (ip_vs_sync_conn_v0: ``if (unlikely(cp->af != AF_INET)) return``, before its
    template too), neither version one whose real server is of the other family (an
    entry has one family for its three addresses; the kernel refuses sync daemons
    and mixed-family pools together, ip_vs_genl_new_daemon and ip_vs_genl_set_cmd)."""
    size = len(conn.caddr)
    return len(conn.daddr) == size and (version != 0 or size == 4)


# -- the master --------------------------------------------------------------------


def _one_packet(conn: Conn) -> bool:
    """IP_VS_CONN_F_ONE_PACKET: a UDP datagram of a one-packet (-o) service."""
    return conn.svc.conf.ops and conn.protocol == IPPROTO_UDP and not conn.template


# TCP states worth a sync (ip_vs_sync_conn_needed).
_TCP_SYNC_STATES = frozenset(
    (proto_tcp.ESTABLISHED, proto_tcp.FIN_WAIT, proto_tcp.CLOSE, proto_tcp.CLOSE_WAIT,
     proto_tcp.TIME_WAIT)
)  # fmt: skip


def conn_needed(conn: Conn, pkts: int, now: float, sysctls: Sysctls) -> bool:
    """ip_vs_sync_conn_needed: is this packet (the connection's ``pkts``-th) the one
    to sync it on?  Records what it decided in the entry, as the kernel does."""
    orig = _endtime(conn)
    jnow = int(now * HZ)
    timeout = int(conn.timeout * HZ)
    n = (jnow + timeout) & ~3
    force = False
    if conn.template:
        pass
    elif sysctls.sync_persist_mode and conn.control is not None:
        return False
    elif conn.protocol == IPPROTO_TCP:
        if conn.state not in _TCP_SYNC_STATES:
            return False
        force = conn.state != _old_state(conn)
        if force and conn.state != proto_tcp.ESTABLISHED:
            _set(conn, n, conn.state)
            return True
    refresh = sysctls.sync_refresh_period * HZ
    if refresh > 0:
        diff = n - orig
        min_diff = max(timeout >> 1, 10 * HZ)
        if abs(diff) < min(refresh, min_diff):
            retries = orig & 3
            if retries >= sysctls.sync_retries:
                return False
            if jnow < orig - timeout + (refresh >> 3):
                return False
            n |= retries + 1
    period = sysctls.sync_period
    if period > 0:
        if not conn.template and pkts % period != sysctls.sync_threshold:
            return False
    elif not refresh and pkts != sysctls.sync_threshold:
        return False
    _set(conn, n, conn.state)
    return True


class Master:
    """The master's side (ip_vs_sync_conn, sb_queue_tail and sync_thread_master):
    entries are added to the current buffer; a full buffer joins the queue, which
    is sent 20 ms after its first message came (IPVS_SYNC_SEND_DELAY), or at once
    when 8 wait (IPVS_SYNC_WAKEUP_RATE); a buffer not full goes out 2 s after its
    first entry (IPVS_SYNC_FLUSH_TIME).  The queue holds at most ``sync_qlen_max``
    messages; more are dropped (and counted).  The kernel's idle thread looks at
    the buffer once a second, so its flush comes 2 to 3 s after; ours at 2 s."""

    def __init__(self, syncid: int, maxlen: int, sysctls: Sysctls) -> None:
        self.syncid = syncid
        self.maxlen = maxlen  # the datagram's size without IP and UDP headers
        self.sysctls = sysctls
        self.buff: SyncBuff | None = None
        self.queue: deque[bytes] = deque()
        self.queue_delay = 0  # ms->sync_queue_delay
        self.wakeup: float | None = None  # master_wakeup_work, scheduled
        self.entries = 0  # entries added to messages
        self.dropped = 0  # messages dropped with the queue at sync_qlen_max

    def sync_conn(self, conn: Conn, now: float) -> None:
        """ip_vs_sync_conn, from the packet path after a client's packet: the entry
        and, up its chain of control, its template."""
        sysctls = self.sysctls
        version = sysctls.sync_version
        if not syncable(conn, version):
            return
        pkts = conn.in_pkts
        cp: Conn | None = conn
        first = True
        while cp is not None:
            if first and _one_packet(cp):
                if not version:
                    return
            elif conn_needed(cp, pkts, now, sysctls):
                self._add(cp, version, now)
            first = False
            control = cp.control
            if control is None:
                return
            if control.template:
                control.in_pkts += 1
                pkts = control.in_pkts
            else:
                pkts = sysctls.sync_threshold
            cp = control

    def _add(self, conn: Conn, version: int, now: float) -> None:
        data = pack_conn(conn) if version else encode_entry_v0(from_conn(conn))
        buff = self.buff
        if buff is not None and (buff.version != version or not buff.fits(len(data))):
            self._queue_tail(now)
            buff = None
        if buff is None:
            buff = self.buff = SyncBuff(
                self.syncid, version, max(len(data), self.maxlen - _hdr(version)), now
            )
        buff.add(data)
        self.entries += 1

    def _queue_tail(self, now: float) -> None:
        """sb_queue_tail: the current buffer joins the queue (or is dropped)."""
        buff = self.buff
        self.buff = None
        if buff is None:
            return
        if len(self.queue) >= self.sysctls.sync_qlen_max:
            self.dropped += 1
            return
        if not self.queue:
            self.wakeup = now + SYNC_SEND_DELAY
        self.queue.append(buff.message())
        self.queue_delay += 1

    def take(self, now: float) -> list[bytes]:
        """What the sending thread sends now: the queue, once woken (8 waiting, or
        20 ms after the first), and a buffer 2 s old."""
        out: list[bytes] = []
        if self.queue and (
            self.queue_delay >= SYNC_WAKEUP_RATE or (self.wakeup is not None and now >= self.wakeup)
        ):
            out.extend(self.queue)
            self.queue.clear()
        if not self.queue:
            self.queue_delay = 0
            self.wakeup = None
            buff = self.buff
            if buff is not None and now - buff.firstuse >= SYNC_FLUSH_TIME:
                self.buff = None
                out.append(buff.message())
        return out

    def next_wakeup(self) -> float | None:
        """When ``take`` has something next (None: nothing waits)."""
        times = []
        if self.queue:
            times.append(0.0 if self.queue_delay >= SYNC_WAKEUP_RATE else self.wakeup or 0.0)
        if self.buff is not None:
            times.append(self.buff.firstuse + SYNC_FLUSH_TIME)
        return min(times) if times else None


# -- the backup --------------------------------------------------------------------


def find_dest(director: Director, conn: SyncConn) -> tuple[Service, Dest] | None:
    """ip_vs_find_dest: the service by fwmark, (protocol, VIP, port) or port zero, and
    in it the real server by address and port (a fwmark service's DR and TUN real
    servers by address alone: their port is 0 or the client's)."""
    svc = director.services.lookup(conn.protocol, conn.vaddr, conn.vport, conn.fwmark)
    if svc is None:
        return None
    port = conn.dport
    if conn.fwmark and conn.flags & F_FWD_MASK != F_MASQ:
        port = 0
    dest = svc.find_dest(conn.daddr, port) or svc.find_dest(conn.daddr, port ^ conn.dport)
    return None if dest is None else (svc, dest)


def proc_conn(director: Director, conn: SyncConn, now: float) -> str:
    """ip_vs_proc_conn: a synced entry added to the table or updated in it, bound to
    this director's own real server (found by address, port and service).  Returns
    what was done: "new", "update", "replaced" (a new real server for the client),
    "stale" (the end of an entry already replaced), "no_dest" (no such service or
    real server here: the kernel keeps it unbound, director has no unbound entries).
    IPv4 and IPv6 entries alike (struct ip_vs_sync_v4, ip_vs_sync_v6)."""
    table = director.conns
    sysctls = director.sysctls
    template = bool(conn.flags & F_TEMPLATE)
    outcome = "update"
    cp: Conn | None
    if not template:
        cp = table.find_in(conn.protocol, conn.caddr, conn.cport, conn.vaddr, conn.vport)
        if cp is not None and (cp.dport != conn.dport or cp.daddr != conn.daddr):
            if conn.flags & F_INACTIVE:
                return "stale"
            table.remove(cp)  # ip_vs_conn_expire_now
            cp = None
            outcome = "replaced"
    else:
        cp = table.templates.get((conn.protocol, conn.caddr, conn.cport, conn.vaddr, conn.vport))
    timeout = conn.timeout
    if cp is not None:
        if not template:
            inactive = bool(conn.flags & F_INACTIVE)
            if conn.protocol == IPPROTO_TCP and conn.state < len(proto_tcp.STATE_NAMES):
                proto_tcp.move(cp, conn.state)  # the counters follow the state
            elif inactive != cp.inactive:
                _activity(cp, inactive)
        cp.state = conn.state
        _seqs(cp, conn)
    else:
        found = find_dest(director, conn)
        if found is None:
            return "no_dest"
        svc, dest = found
        if outcome != "replaced":
            outcome = "new"
        if template:
            proto = director.protocols.get(conn.protocol, director.tcp)
            key = (conn.protocol, conn.caddr, conn.cport, conn.vaddr, conn.vport)
            cp = new_template(proto, key, svc, dest, bind_xmit(dest), now)
            cp.state = conn.state
            table.add(cp)
        else:
            cp = new_conn(
                director, director.protocols[conn.protocol], conn.protocol, conn.caddr,
                conn.cport, conn.vaddr, conn.vport, svc, dest, bind_xmit(dest),
                dport=conn.dport,
            )  # fmt: skip
            cp.state = conn.state
            _seqs(cp, conn)
            table.add(cp, no_cport=bool(conn.flags & F_NO_CPORT))  # counted inactive
            active = (
                proto_tcp.STATE_ACTIVE[conn.state]
                if conn.protocol == IPPROTO_TCP
                else not conn.flags & F_INACTIVE
            )
            if active:
                _activity(cp, False)
        cp.sync |= 1  # IP_VS_CONN_F_SYNC
    cp.in_pkts = sysctls.sync_threshold
    if not timeout:
        if template:
            timeout = TEMPLATE_TIMEOUT_V0
        else:
            proto = director.tcp if conn.protocol == IPPROTO_TCP else director.udp
            timeout = proto.timeouts[min(conn.state, len(proto.timeouts) - 1)]
    cp.timeout = timeout
    cp.expires = now + timeout
    _set(cp, _endtime(cp), conn.state)
    return outcome


def _seqs(cp: Conn, conn: SyncConn) -> None:
    """ip_vs_proc_conn's "if (opt) cp->in_seq = opt->in_seq..." with the SEQ flags of
    the entry (F_BACKUP_UPD_MASK), on a connection bound to a helper here."""
    if not isinstance(cp, AppConn):
        return
    cp.seq_flags = conn.flags & F_SEQ_MASK
    if conn.in_seq is not None and conn.out_seq is not None:
        cp.in_seq = conn.in_seq
        cp.out_seq = conn.out_seq


def _activity(conn: Conn, inactive: bool) -> None:
    """ip_vs_proc_conn's counter move when IP_VS_CONN_F_INACTIVE changes."""
    dest = conn.dest
    if inactive and not conn.inactive:
        dest.activeconns -= 1
        dest.inactconns += 1
    elif not inactive and conn.inactive:
        dest.activeconns += 1
        dest.inactconns -= 1
    conn.inactive = inactive
