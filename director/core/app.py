"""Application helpers (net/netfilter/ipvs/ip_vs_app.c): protocols that carry
addresses in their payload, under VS/NAT.

A helper (``App``) is registered by name (``register``) and made to watch ports of a
protocol (``AppTable.register_inc``: register_ip_vs_app_inc, one incarnation a port).
A connection is bound to the helper of its virtual port when it is created
(``AppTable.bind``: ip_vs_bind_app through tcp_app_conn_bind, for masquerading only):
such a connection is an ``AppConn``, which carries the helper's state and the
sequence adjustments, and is sent by the ``AppMasquerade`` transmitter.  That
transmitter declines every fused path (its ``fused_*`` answer None: every packet of
a helper's connection takes the general path), so the fused paths stay as they are
for every other connection.

When a helper changes the length of a packet's payload, the TCP sequence numbers of
everything after it are off by the difference: ``in_seq`` (packets from the client)
and ``out_seq`` (from the real server) are ``struct ip_vs_seq`` (init_seq, delta,
previous_delta), kept as vs_seq_update keeps them, and every later packet of the
connection gets its sequence number moved by vs_fix_seq and the acknowledgement of
the other direction by vs_fix_ack_seq (app_tcp_pkt_out / app_tcp_pkt_in), before the
helper sees it.  The kernel's ip_vs_ftp hands that bookkeeping to conntrack's seqadj
(nf_nat_mangle_tcp_packet, "Not setting 'diff' is intentional"); a userspace director
tracks no connection in conntrack (the hooks NOTRACK them), so here the helper
returns its ``diff`` and ip_vs_app's own deltas do the work, as they did before
conntrack.

The deltas travel with the connection: the restart dump carries them
(director.core.conn_dump) and so does sync's SEQ option (IPVS_OPT_SEQ_DATA,
director.core.sync).
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import TYPE_CHECKING, ClassVar

from director.core.checksum import internet_checksum, ipv6_pseudo_sum
from director.core.conn import Conn, ConnProtocol, Controller
from director.core.packet import IPPROTO_TCP, SKB_CSUMNOTREADY, SKB_GSO
from director.core.xmit import ACCEPT, DROP, SEND, Verdict
from director.core.xmit.nat import Masquerade

if TYPE_CHECKING:
    from director.core.engine import Director
    from director.core.packet import Packet
    from director.core.service import Dest, Service
    from director.core.xmit import Xmit

# cp->flags bits that say a direction has a sequence adjustment (IP_VS_CONN_F_*_SEQ).
F_OUT_SEQ = 0x0200
F_IN_SEQ = 0x0400

_U16 = struct.Struct("!H")
_MOD32 = 1 << 32

Seq = tuple[int, int, int]  # struct ip_vs_seq: init_seq, delta, previous_delta
NO_SEQ: Seq = (0, 0, 0)


def after(seq1: int, seq2: int) -> bool:
    """include/net/tcp.h after(): seq1 comes after seq2, modulo 2^32."""
    return 0 < (seq1 - seq2) % _MOD32 < 1 << 31


def _signed(delta: int) -> int:
    delta %= _MOD32
    return delta - _MOD32 if delta >= 1 << 31 else delta


def fix_seq(vseq: Seq, seq: int) -> int:
    """vs_fix_seq: a sequence number after the last resized packet's moves by delta,
    one at or before it by previous_delta."""
    init_seq, delta, previous = vseq
    if not (delta or previous):
        return seq
    return (seq + (delta if after(seq, init_seq) else previous)) % _MOD32


def fix_ack_seq(vseq: Seq, ack: int) -> int:
    """vs_fix_ack_seq: "since ack_seq is the number of octet that is expected to
    receive next, so compare it with init_seq+delta"."""
    init_seq, delta, previous = vseq
    if not (delta or previous):
        return ack
    return (ack - (delta if after(ack, (init_seq + delta) % _MOD32) else previous)) % _MOD32


def seq_update(vseq: Seq, have: bool, seq: int, diff: int) -> Seq:
    """vs_seq_update: a packet at ``seq`` was resized by ``diff``; only one after the
    last resized one (or the first) moves the deltas (``have``: the direction's
    IP_VS_CONN_F_*_SEQ flag is set)."""
    init_seq, delta, _previous = vseq
    if have and not after(seq, init_seq):
        return vseq
    return (seq % _MOD32, _signed(delta + diff), delta)


# What a helper's hook answers (the kernel's pkt_in/pkt_out return values): drop the
# packet, let it go on as it is, or let it go on with its payload mangled (the
# transport checksum must then be computed whole: tcp_snat_handler's "ret=2").
APP_DROP, APP_OK, APP_MANGLED = 0, 1, 2


class App:
    """One helper (``struct ip_vs_app``): what it does with a bound connection's
    packets.  ``pkt_out`` and ``pkt_in`` may change ``pkt.buf`` (and its length, as
    ``replace`` does), and return APP_DROP, APP_OK or APP_MANGLED with the change of
    the payload's length (``diff``).  ``director`` is the one whose tables it makes
    connections in (the netns the incarnation was registered in)."""

    name: ClassVar[str]
    protocol: ClassVar[int] = IPPROTO_TCP
    default_ports: ClassVar[tuple[int, ...]] = ()

    def __init__(self, director: Director) -> None:
        self.director = director

    def init_conn(self, conn: AppConn) -> None:
        """A connection was bound to the helper (init_conn)."""

    def pkt_out(self, conn: AppConn, pkt: Packet) -> tuple[int, int]:
        return APP_OK, 0

    def pkt_in(self, conn: AppConn, pkt: Packet) -> tuple[int, int]:
        return APP_OK, 0


APPS: dict[str, type[App]] = {}


def register(cls: type[App]) -> type[App]:
    """register_ip_vs_app: a helper, by name."""
    if cls.name in APPS:
        raise ValueError(f"application helper {cls.name} registered twice")
    APPS[cls.name] = cls
    return cls


class AppTable:
    """The helpers in force and the ports they watch (the per-netns app list and the
    protocol's apps table of incarnations, keyed by protocol and port), with the
    counters of what they did and refused (one name a counter)."""

    def __init__(self) -> None:
        self.incs: dict[tuple[int, int], App] = {}
        self.counters: Counter[str] = Counter()

    def register_inc(self, app: App, port: int) -> None:
        """register_ip_vs_app_inc: ``app`` watches ``port`` of its protocol (a port
        another helper watches is refused, as ip_vs_app_inc_new's -EEXIST)."""
        if not 0 < port < 65536:
            raise ValueError(f"{app.name}: port {port} out of range")
        key = (app.protocol, port)
        if key in self.incs and self.incs[key] is not app:
            raise ValueError(f"{app.name}: port {port} is another helper's")
        self.incs[key] = app

    def ports(self, name: str) -> tuple[int, ...]:
        return tuple(sorted(port for (_, port), app in self.incs.items() if app.name == name))

    def lookup(self, protocol: int, vport: int, method: str) -> App | None:
        """tcp_app_conn_bind: the helper of a new connection's virtual port, for a
        masquerading (NAT) connection only."""
        if method != "masq" or not self.incs:
            return None
        return self.incs.get((protocol, vport))


def configure(director: Director, name: str, ports: tuple[int, ...]) -> None:
    """The module loaded with ``ports=``: the helper ``name`` watches these ports
    (none: not loaded).  The ports it watched before are let go."""
    table = director.apps
    for key in [k for k, app in table.incs.items() if app.name == name]:
        del table.incs[key]
    if not ports:
        return
    app = APPS[name](director)
    for port in ports:
        table.register_inc(app, port)


class AppConn(Controller):
    """A connection bound to a helper (cp->app): the helper's per-connection word
    (cp->app_data), the sequence adjustments of each direction (cp->in_seq,
    cp->out_seq, with the IP_VS_CONN_F_IN_SEQ / OUT_SEQ flags) and the connections it
    controls (n_control: its data connections, ip_vs_control_add)."""

    __slots__ = ("app", "app_data", "in_seq", "out_seq", "seq_flags")

    def bind_app(self, app: App) -> None:
        self.app = app
        self.app_data = 0
        self.in_seq: Seq = NO_SEQ
        self.out_seq: Seq = NO_SEQ
        self.seq_flags = 0
        self.n_control = 0
        app.init_conn(self)


def _fix_header(pkt: Packet) -> None:
    """After a change of length: the IP header's length (and IPv4's checksum)."""
    buf = pkt.buf
    if len(pkt.saddr) == 16:
        _U16.pack_into(buf, 4, pkt.length - 40)
        return
    _U16.pack_into(buf, 2, pkt.length)
    ihl = pkt.l4
    buf[10:12] = b"\x00\x00"
    _U16.pack_into(buf, 10, internet_checksum(memoryview(buf)[:ihl]))


def tcp_checksum(pkt: Packet) -> None:
    """The TCP checksum computed whole over the pseudo-header, as tcp_snat_handler /
    tcp_dnat_handler do once a helper mangled the payload (payload_csum)."""
    buf = pkt.buf
    l4 = pkt.l4
    buf[l4 + 16 : l4 + 18] = b"\x00\x00"
    if len(pkt.saddr) == 16:
        csum = ipv6_pseudo_sum(buf, IPPROTO_TCP, l4, pkt.length)
    else:
        pseudo = bytes(buf[12:20]) + bytes((0, IPPROTO_TCP)) + _U16.pack(pkt.length - l4)
        csum = internet_checksum(pseudo + bytes(buf[l4 : pkt.length]))
    _U16.pack_into(buf, l4 + 16, csum)


def replace(pkt: Packet, start: int, end: int, text: bytes) -> int:
    """Put ``text`` in place of ``buf[start:end]`` (offsets in the packet), fix the IP
    header's length, and return the change of length (nf_nat_mangle_tcp_packet's
    work, less the checksum: the transmitter computes it once at the end)."""
    buf = pkt.buf
    del buf[pkt.length :]
    buf[start:end] = text
    diff = len(text) - (end - start)
    pkt.length += diff
    if diff:
        _fix_header(pkt)
    return diff


def payload(pkt: Packet) -> tuple[int, int]:
    """Where the TCP payload starts and ends in the packet (ip_vs_ftp_data_ptr)."""
    start = pkt.l4 + (pkt.buf[pkt.l4 + 12] >> 4 << 2)
    return start, pkt.length


class AppMasquerade(Masquerade):
    """The NAT transmitter of a helper's connections: the sequence fixes and the
    helper's hook (ip_vs_app_pkt_in / ip_vs_app_pkt_out, called from
    tcp_dnat_handler / tcp_snat_handler before the addresses change), then
    Masquerade's rewrite and a whole TCP checksum when anything in the segment
    changed.  Not registered: connections get it only through ``new_conn``, and its
    name stays the method's, "masq".  A GSO super-packet gets its sequence fixes only
    (the partial seed covers no sequence number; a helper's command is never one).
    Every fused path is declined (None, nothing changed): the engine then takes the
    general path, which calls ``xmit_in`` / ``xmit_out``."""

    def fused_in(self, conn: Conn, buf: bytearray, length: int) -> Verdict | None:
        return None

    def fused_out(self, conn: Conn, buf: bytearray) -> Verdict | None:
        return None

    def fused_out_partial(self, conn: Conn, buf: bytearray, skb_info: int) -> Verdict | None:
        return None

    def fused_in6(self, conn: Conn, buf: bytearray, length: int) -> Verdict | None:
        return None

    def fused_out6(self, conn: Conn, buf: bytearray, skb_info: int) -> Verdict | None:
        return None

    def xmit_in(self, conn: Conn, pkt: Packet) -> Verdict:
        assert isinstance(conn, AppConn)
        changed = _pkt(conn, pkt, inward=True)
        if changed < 0:
            return (DROP, "app_refused")
        verdict = super().xmit_in(conn, pkt)
        if changed and verdict[0] == SEND:
            _checksum(pkt)
        return verdict

    def xmit_out(self, conn: Conn, pkt: Packet) -> Verdict:
        assert isinstance(conn, AppConn)
        changed = _pkt(conn, pkt, inward=False)
        if changed < 0:
            return (DROP, "app_refused")
        verdict = super().xmit_out(conn, pkt)
        if changed and verdict[0] == ACCEPT:
            _checksum(pkt)
        return verdict


def _checksum(pkt: Packet) -> None:
    if pkt.skb_info & SKB_CSUMNOTREADY and pkt.skb_info & SKB_GSO:
        return  # the seed covers the pseudo-header only: still right
    tcp_checksum(pkt)


APP_MASQ = AppMasquerade()


def _pkt(conn: AppConn, pkt: Packet, inward: bool) -> int:
    """app_tcp_pkt_in / app_tcp_pkt_out: 1 if the segment changed, 0 if not, -1 if the
    helper refused it."""
    if pkt.protocol != IPPROTO_TCP:
        return 0
    buf = pkt.buf
    l4 = pkt.l4
    seq, ack = _SEQ_ACK.unpack_from(buf, l4 + 4)
    own, other = (conn.in_seq, conn.out_seq) if inward else (conn.out_seq, conn.in_seq)
    own_flag, other_flag = (F_IN_SEQ, F_OUT_SEQ) if inward else (F_OUT_SEQ, F_IN_SEQ)
    new_seq = fix_seq(own, seq) if conn.seq_flags & own_flag else seq
    new_ack = fix_ack_seq(other, ack) if conn.seq_flags & other_flag else ack
    changed = new_seq != seq or new_ack != ack
    if changed:
        _SEQ_ACK.pack_into(buf, l4 + 4, new_seq, new_ack)
    if pkt.skb_info & SKB_GSO:
        return int(changed)
    app = conn.app
    result, diff = (app.pkt_in if inward else app.pkt_out)(conn, pkt)
    if result == APP_DROP:
        return -1
    if diff:
        # vs_seq_update is given the sequence number the packet came with.
        vseq = seq_update(own, bool(conn.seq_flags & own_flag), seq, diff)
        if inward:
            conn.in_seq = vseq
        else:
            conn.out_seq = vseq
        conn.seq_flags |= own_flag
    return int(changed or result == APP_MANGLED)


_SEQ_ACK = struct.Struct("!II")


def new_conn(
    director: Director,
    proto: ConnProtocol,
    protocol: int,
    caddr: bytes,
    cport: int,
    vaddr: bytes,
    vport: int,
    svc: Service,
    dest: Dest,
    xmit: Xmit,
    dport: int | None = None,
) -> Conn:
    """ip_vs_conn_new's entry with ip_vs_bind_app: an AppConn bound to the helper of
    its virtual port when there is one (a NAT connection of a watched port), else a
    plain Conn."""
    apps = director.apps
    app = apps.lookup(protocol, vport, xmit.name) if apps.incs else None
    if app is None:
        return Conn(proto, protocol, caddr, cport, vaddr, vport, svc, dest, xmit, dport)
    conn = AppConn(proto, protocol, caddr, cport, vaddr, vport, svc, dest, APP_MASQ, dport)
    conn.bind_app(app)
    return conn
