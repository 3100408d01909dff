"""The packet path (net/netfilter/ipvs/ip_vs_core.c): packet in, verdict out.

``hook_in`` is ip_vs_in at LOCAL_IN: a packet from a client to a virtual service finds
its connection, or a new one is scheduled; the connection's state moves by the INPUT
table and its bound transmitter rewrites the packet.  ``hook_out`` is ip_vs_out at
FORWARD: a reply from a NAT real server finds its connection by the out key, moves it
by the OUTPUT table and gets the VIP back as its source.

Pure: no I/O, no clock.  Time comes in as ``now`` (seconds, monotonic).  Packet errors
never escape: they become a drop reason and a counter.
"""

from __future__ import annotations

import copy
import struct
from collections import Counter
from enum import Enum

from director.core import app_ftp as _app_ftp  # noqa: F401  (registers the helper)
from director.core import persist, proto_tcp
from director.core.app import AppTable, new_conn
from director.core.checksum import ipv6_pseudo_sum
from director.core.conn import V6_KEY, Conn, ConnProtocol, ConnTable, Template
from director.core.defense import Defense
from director.core.icmp import (
    ICMP_FRAG_NEEDED,
    ICMP_PORT_UNREACH,
    ICMPV6_DEST_UNREACH,
    ICMPV6_PKT_TOOBIG,
    ICMPV6_PORT_UNREACH,
    ICMPV6_TIME_EXCEED,
    IPV6_MIN_MTU,
    icmp6_error,
    port_unreachable,
    port_unreachable6,
    unreachable,
)
from director.core.packet import (
    ICMP_DEST_UNREACH,
    ICMP_TIME_EXCEEDED,
    IPPROTO_ICMPV6,
    IPV6_HLEN,
    SKB_CSUMNOTREADY,
    TH_RST,
    TH_SYN,
    IcmpError,
    Packet,
    PacketError,
    parse,
    parse_icmp_error,
    parse_plain4,
)
from director.core.proto_tcp import (
    CLOSE,
    FIN_WAIT,
    FLAG_ROWS,
    INPUT,
    INPUT_ONLY,
    OUTPUT,
    SYN_RECV,
    TIME_WAIT,
    TcpProtocol,
    move,
)
from director.core.proto_udp import UdpProtocol
from director.core.service import IPPROTO_TCP, IPPROTO_UDP, Dest, Service, ServiceTable
from director.core.stats import Stats
from director.core.sync import IP_VS_STATE_BACKUP, Master
from director.core.sysctl import Sysctls
from director.core.xmit import (
    ACCEPT,
    DROP,
    KERNEL_NAT,
    SEND,
    VERDICT_NAMES,
    Verdict,
    bind_xmit,
    named,
)
from director.core.xmit.tun import TUNNEL_HLEN
from director.model.config import Config, ConfigError

# Packets the director has no business with go on as the kernel would send them.
_PASS: Verdict = (ACCEPT, None)


class _Unseen(Enum):
    """The general path is to look the connection up itself (the fused path did not)."""

    LOOKUP = 0


_LOOKUP = _Unseen.LOOKUP

# The fused path's view of a packet: a 20-byte IPv4 header (no options), then the two
# ports: version/ihl, total length, fragment field, protocol, source, destination.
_FUSED = struct.Struct("!BxHxxHxBxxIIHH")
_FRAG = 0x3FFF  # MF and the fragment offset
# The IPv6 fused path's view: payload length, next header, source and destination (two
# 64-bit halves each), the two ports (the transport header right after 40 bytes).
_FUSED6 = struct.Struct("!4xHBxQQQQHH")
_TH_DOFF5 = 0x50  # a TCP data offset of 5 words, in the high nibble of byte 12
# The fused path's row of the TCP state table for each flags byte (tcp_state_idx:
# proto_tcp.FLAG_ROWS), -1 for what it leaves to the general path: a segment with none
# of RST, SYN, FIN and ACK (it moves the connection to CLOSE by no row) and, on the
# way in, any SYN (is_new_conn: conn_reuse_mode may schedule it afresh).  A reply's
# SYN has no such question (ip_vs_out has no is_new_conn).
_ROWS_IN: tuple[int, ...] = tuple(-1 if f & TH_SYN else FLAG_ROWS[f] for f in range(256))
_ROWS_OUT = FLAG_ROWS


# ICMP errors about a tunnelled packet of the other family than its client's, as RFC
# 7915 translates them (4.2 ICMPv4 to ICMPv6, 5.2 ICMPv6 to ICMPv4): (type, code) to
# (type, code), a code of -1 standing for the type's other codes.
_ICMP4_TO_6: dict[tuple[int, int], tuple[int, int]] = {
    (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED): (ICMPV6_PKT_TOOBIG, 0),
    (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH): (ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH),
    (ICMP_DEST_UNREACH, 9): (ICMPV6_DEST_UNREACH, 1),  # network administratively prohibited
    (ICMP_DEST_UNREACH, 10): (ICMPV6_DEST_UNREACH, 1),  # host administratively prohibited
    (ICMP_DEST_UNREACH, 13): (ICMPV6_DEST_UNREACH, 1),  # communication prohibited
    (ICMP_DEST_UNREACH, -1): (ICMPV6_DEST_UNREACH, 0),  # no route to destination
    (ICMP_TIME_EXCEEDED, 0): (ICMPV6_TIME_EXCEED, 0),
    (ICMP_TIME_EXCEEDED, 1): (ICMPV6_TIME_EXCEED, 1),
}
_ICMP6_TO_4: dict[tuple[int, int], tuple[int, int]] = {
    (ICMPV6_PKT_TOOBIG, 0): (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED),
    (ICMPV6_DEST_UNREACH, 1): (ICMP_DEST_UNREACH, 10),  # host administratively prohibited
    (ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH): (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH),
    (ICMPV6_DEST_UNREACH, -1): (ICMP_DEST_UNREACH, 1),  # host unreachable
    (ICMPV6_TIME_EXCEED, 0): (ICMP_TIME_EXCEEDED, 0),
    (ICMPV6_TIME_EXCEED, 1): (ICMP_TIME_EXCEEDED, 1),
}


def _icmp6_checksum_ok(conn: Conn, err: IcmpError) -> bool:
    """ip_vs_checksum_common_check for an ICMPv6 error about a NAT connection (the
    only one whose error is rewritten): the message sums to zero over the IPv6
    pseudo-header.  ICMP errors of IPv4 are not checked (as before)."""
    pkt = err.pkt
    if pkt.protocol != IPPROTO_ICMPV6 or conn.xmit.name != "masq":
        return True
    return ipv6_pseudo_sum(pkt.buf, IPPROTO_ICMPV6, pkt.l4, pkt.length) == 0


class Director:
    """The whole IPVS state of one director: services, connections, counters."""

    def __init__(self) -> None:
        self.services = ServiceTable()
        self.conns = ConnTable()
        self.tcp = TcpProtocol()
        self.udp = UdpProtocol()
        self.protocols: dict[int, ConnProtocol] = {IPPROTO_TCP: self.tcp, IPPROTO_UDP: self.udp}
        self.totals = Stats()
        self.verdicts: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.passes: Counter[str] = Counter()
        self._sysctls = Sysctls()
        self.defense = Defense()
        self.conn_limit = 0  # entries the table may hold (0: no limit), from a memory cap
        # The fused established-flow path of hook_in and hook_out; off, every packet
        # takes the general path (the tests compare the two).
        self.fused = True
        # The sync daemon (director.core.sync): which of master and backup run
        # (IP_VS_STATE_*), the master's buffers when it runs, and whether backup_only
        # holds the director back from balancing now.
        self.sync_state = 0
        self.sync_master: Master | None = None
        self.backup_only = False
        # The director's own addresses, which the shell keeps (cache_bypass sends on
        # only what is addressed elsewhere); None: not known, nothing is bypassed.
        self.local_addrs: frozenset[bytes] | None = None
        # The application helpers in force (director.core.app): none until the daemon
        # loads them (app.configure), as no ip_vs_ftp is loaded until modprobe.
        self.apps = AppTable()

    # -- control ---------------------------------------------------------------

    @property
    def sysctls(self) -> Sysctls:
        return self._sysctls

    @sysctls.setter
    def sysctls(self, sysctls: Sysctls) -> None:
        """New settings (Sysctls.updated): the schedulers read theirs again."""
        self._sysctls = sysctls
        self._tune()
        self._sync_changed()

    def set_sync(self, state: int, master: Master | None) -> None:
        """The sync daemons running now (IP_VS_STATE_MASTER | IP_VS_STATE_BACKUP), and
        the master's side if one runs."""
        self.sync_state = state
        self.sync_master = master
        self._sync_changed()

    def _sync_changed(self) -> None:
        """sysctl_backup_only: backup_only takes effect while the backup runs."""
        self.backup_only = bool(self.sync_state & IP_VS_STATE_BACKUP) and self._sysctls.backup_only
        if self.sync_master is not None:
            self.sync_master.sysctls = self._sysctls

    def _tune(self) -> None:
        pmtu_disc = self._sysctls.pmtu_disc
        for svc in self.services:
            svc.scheduler.tune(self._sysctls)
            for dest in svc.dests:
                dest.pmtu_disc = pmtu_disc

    @staticmethod
    def check(config: Config) -> None:
        """Refuse what the data plane cannot carry yet, before anything is changed: an
        IPv6 service or real server whose forwarding method does not carry IPv6
        (``Xmit.families``).  Mixed families are the model's question (IPVS allows
        them for tunnels only)."""
        for svc in config.services:
            svc_v6 = ":" in svc.addr if svc.addr else None  # a fwmark service: either
            for dest in svc.dests:
                xmit = named(dest.method)
                if xmit is None:
                    continue  # not a family question (bind_xmit refuses it)
                dest_v6 = ":" in dest.addr
                if (svc_v6 or dest_v6) and 6 not in xmit.families:
                    addr = svc.addr if svc_v6 else dest.addr
                    raise ConfigError(
                        f"{addr}: IPv6 with forwarding method {dest.method} is not "
                        "supported by director yet"
                    )

    def configure(self, config: Config) -> None:
        """Make the live tables follow a validated configuration."""
        retired = len(self.services.trash)
        self.services.apply(config)
        self._tune()
        if self.sysctls.expire_nodest_conn and len(self.services.trash) > retired:
            self._expire_nodest_conns()
        self.tcp.set_timeouts(config.timeouts.tcp, config.timeouts.tcpfin)
        self.udp.set_timeout(config.timeouts.udp)

    def _expire_nodest_conns(self) -> None:
        """ip_vs_expire_nodest_conn_flush, queued by __ip_vs_del_dest when
        expire_nodest_conn is set: every entry of a removed real server that controls
        nothing goes at once, and so does its template once that controls nothing."""
        for conn in self.conns.all():
            if conn.dest.available or conn.n_control or not self.conns.is_hashed(conn):
                continue
            control = conn.control
            self.conns.remove(conn)
            if control is not None and not control.n_control:
                self.conns.remove(control)
        self.services.collect_trash()

    def expire(self, now: float, budget: int | None = None) -> int:
        """The connection collector: remove what timed out, return how many.  With a
        ``budget`` it visits at most that many entries (one slice); the caller calls
        again, between packets, while ``conns.behind(now)``.  Learned path MTUs past
        their time are dropped on every call."""
        expired = self.conns.expire(now, budget)
        self.services.expire_pmtu(now)
        if expired and self.services.trash:
            self.services.collect_trash()
        return len(expired)

    def defend(self, availmem: int, now: float) -> int:
        """The defence timer's second (defense_work_handler): ``availmem`` in 4 KiB
        pages; returns how many entries drop_entry let go."""
        self.defense.update(self.sysctls, availmem, self.tcp)
        return self.defense.random_dropentry(self.conns, now)

    def forget(self, daddr: bytes) -> int:
        """The neighbour of a real server did not resolve and its packets were lost.
        IPVS keeps its connections (a failed send is not a dead connection); only
        entries whose first packet was the one lost go, so their retries are
        scheduled afresh."""
        doomed = [conn for conn in self.conns if conn.daddr == daddr and conn.in_pkts <= 1]
        for conn in doomed:
            self.conns.remove(conn)
        return len(doomed)

    # -- the kernel fast path: conntrack carries the connections -------------------

    def ct_seen(
        self,
        protocol: int,
        caddr: bytes,
        cport: int,
        vaddr: bytes,
        vport: int,
        state: str | None,
        ttl: float | None,
        now: float,
    ) -> bool:
        """Conntrack reports a fast-path connection alive (an event, a dump): its entry
        follows conntrack's TCP state (and the real server's counts with it) and lives
        as long as conntrack keeps it (``ttl``: conntrack's timeout left; None, when
        the message did not say, keeps the entry's own).  Whether the connection has
        an entry here."""
        conn = self.conns.find_in(protocol, caddr, cport, vaddr, vport)
        if conn is None:
            return False
        if protocol == IPPROTO_TCP and state is not None:
            new = proto_tcp.CONNTRACK_STATES.get(state)
            if new is not None and new != conn.state:
                proto_tcp.move(conn, new)
        if ttl is not None:
            conn.timeout = max(int(ttl), 1)
        conn.expires = now + conn.timeout
        return True

    def ct_gone(self, protocol: int, caddr: bytes, cport: int, vaddr: bytes, vport: int) -> bool:
        """Conntrack destroyed a fast-path connection: its entry goes (its template
        stays, as it outlives an expired connection)."""
        conn = self.conns.find_in(protocol, caddr, cport, vaddr, vport)
        if conn is None:
            return False
        self.conns.remove(conn)
        return True

    def ct_account(self, svc: Service, dest: Dest, inpkts: int, inbytes: int, outpkts: int,
                   outbytes: int) -> None:  # fmt: skip
        """Packets and bytes the kernel counted for a real server's fast-path
        connections since last time (the packets the worker never saw), into the same
        stats as the every-packet path's, per real server, service and in total."""
        for stats in (dest.stats, svc.stats, self.totals):
            stats.inpkts += inpkts
            stats.inbytes += inbytes
            stats.outpkts += outpkts
            stats.outbytes += outbytes

    def which(
        self,
        protocol: int,
        caddr: bytes,
        cport: int,
        vaddr: bytes,
        vport: int,
        now: float,
        mark: int = 0,
    ) -> Dest | None:
        """The real server a packet with this tuple would go to now, changing nothing:
        its connection's, else its persistence template's, else the scheduler's choice
        made on a copy of the scheduler (schedulers keep state between picks)."""
        conn = self.conns.find_in(protocol, caddr, cport, vaddr, vport)
        if conn is not None and conn.dest.available:
            return conn.dest
        svc = self.services.lookup(protocol, vaddr, vport, mark)
        if svc is None:
            return None
        flags = TH_SYN if protocol == IPPROTO_TCP else 0
        probe = Packet(bytearray(), protocol, caddr, vaddr, cport, vport, 0, 0, flags, mark)
        if svc.conf.persistent is not None:
            template = self.conns.templates.get(persist.template_key(svc, probe))
            if template is not None and persist.usable(template, self.sysctls):
                return template.dest
        # Copy the scheduler's own state only: the service and its real servers stay
        # themselves, so that identities the scheduler keeps still match.
        memo: dict[int, object] = {id(d): d for d in svc.dests}
        memo[id(svc)] = svc
        return copy.deepcopy(svc.scheduler, memo).schedule(svc, probe, now)

    # -- packets ---------------------------------------------------------------

    def hook_in(self, buf: bytearray, now: float, mark: int = 0) -> Verdict:
        """LOCAL_IN: a packet from a client to a VIP.

        The common case is fused: a packet of a known connection whose real server is
        still there (a TCP segment of the ACK, FIN or RST row, whatever state it moves
        the connection to, or a UDP datagram), and that the connection's transmitter
        can send without a refusal (``Xmit.fused_in``), is counted, moved (set_tcp_state
        by the same table and ``proto_tcp.move``), timed and rewritten here in a few
        steps.  Everything else (a SYN: is_new_conn; a segment of no row), and anything
        the fused path is not sure of, takes the general path (``hook_in_general``),
        which does the same work step by step; the property tests prove the two give
        the same bytes, verdicts, connection state, counters and timers."""
        if self.backup_only:
            return self._pass("backup_only")
        if self.fused and len(buf) >= 28:
            vihl, length, frag, protocol, saddr, daddr, sport, dport = _FUSED.unpack_from(buf)
            if vihl == 0x45 and length == len(buf) and not frag & _FRAG:
                conn = self.conns.in_get(protocol << 48 | saddr << 16 | sport, daddr << 16 | dport)
                if conn is not None and conn.dest.available:
                    proto = conn.proto
                    if proto is self.tcp:
                        row = _ROWS_IN[buf[33]] if length >= 40 else -1
                        if row < 0 or buf[32] < _TH_DOFF5:
                            return self._in_general(buf, now, mark, conn)
                        state = conn.state
                        new = proto.table[INPUT_ONLY if conn.nooutput else INPUT][row][state]
                        timeout = proto.timeouts[new]
                    elif proto is self.udp:
                        state = new = 0  # UDP has one state
                        timeout = proto.timeouts[0]
                    else:
                        return self._in_general(buf, now, mark, conn)
                    verdict = conn.xmit.fused_in(conn, buf, length)
                    if verdict is not None:
                        if new != state:
                            move(conn, new)  # set_tcp_state, after the send asked nothing
                        stats = conn.dest.stats  # ip_vs_in_stats, unrolled
                        stats.inpkts += 1
                        stats.inbytes += length
                        stats = conn.svc.stats
                        stats.inpkts += 1
                        stats.inbytes += length
                        stats = self.totals
                        stats.inpkts += 1
                        stats.inbytes += length
                        conn.in_pkts += 1
                        conn.timeout = timeout
                        conn.expires = now + timeout
                        self.verdicts[VERDICT_NAMES[verdict[0]]] += 1
                        if self.sync_master is not None:
                            self.sync_master.sync_conn(conn, now)
                        return verdict
                elif conn is None:
                    # No entry (a client's SYN, most often): the general path takes
                    # the packet as parse would read it, and looks nothing up again.
                    pkt = parse_plain4(buf, protocol, saddr, daddr, sport, dport, mark)
                    if pkt is not None:
                        return self._in_general(buf, now, mark, None, pkt)
                return self._in_general(buf, now, mark, conn)
            if vihl >> 4 == 6:
                return self._in_fused6(buf, now, mark)
        return self._in_general(buf, now, mark, _LOOKUP)

    def _in_fused6(self, buf: bytearray, now: float, mark: int) -> Verdict:
        """hook_in's fused path for an IPv6 packet whose transport header follows the
        fixed header (no extension headers), as for IPv4 (``Xmit.fused_in6``).  The
        IPv4 path keeps the same steps inline, for its speed."""
        if len(buf) < 48:
            return self._in_general(buf, now, mark, _LOOKUP)
        plen, protocol, src_hi, src_lo, dst_hi, dst_lo, sport, dport = _FUSED6.unpack_from(buf)
        length = plen + IPV6_HLEN
        if length != len(buf) or (protocol != IPPROTO_TCP and protocol != IPPROTO_UDP):
            return self._in_general(buf, now, mark, _LOOKUP)
        conn = self.conns.in_get(
            V6_KEY | protocol << 144 | src_hi << 80 | src_lo << 16 | sport,
            dst_hi << 80 | dst_lo << 16 | dport,
        )
        if conn is None or not conn.dest.available:
            return self._in_general(buf, now, mark, conn)
        proto = conn.proto
        if proto is self.tcp:
            row = _ROWS_IN[buf[53]] if length >= 60 else -1
            if row < 0 or buf[52] < _TH_DOFF5:
                return self._in_general(buf, now, mark, conn)
            state = conn.state
            new = proto.table[INPUT_ONLY if conn.nooutput else INPUT][row][state]
            timeout = proto.timeouts[new]
        elif proto is self.udp:
            state = new = 0  # UDP has one state
            timeout = proto.timeouts[0]
        else:
            return self._in_general(buf, now, mark, conn)
        verdict = conn.xmit.fused_in6(conn, buf, length)
        if verdict is None:
            return self._in_general(buf, now, mark, conn)
        if new != state:
            move(conn, new)  # set_tcp_state
        for stats in (conn.dest.stats, conn.svc.stats, self.totals):  # ip_vs_in_stats
            stats.inpkts += 1
            stats.inbytes += length
        conn.in_pkts += 1
        conn.timeout = timeout
        conn.expires = now + timeout
        self.verdicts[VERDICT_NAMES[verdict[0]]] += 1
        if self.sync_master is not None:
            self.sync_master.sync_conn(conn, now)
        return verdict

    def hook_in_general(self, buf: bytearray, now: float, mark: int = 0) -> Verdict:
        """hook_in, every step of ip_vs_in in turn."""
        if self.backup_only:
            return self._pass("backup_only")
        return self._in_general(buf, now, mark, _LOOKUP)

    def _in_general(
        self,
        buf: bytearray,
        now: float,
        mark: int,
        found: Conn | _Unseen | None,
        pkt: Packet | None = None,
    ) -> Verdict:
        """The general path, given the connection the fused path found for the same
        packet (or None), or ``_LOOKUP`` to look it up; and the packet as ``parse``
        reads it, when the fused path has it (``parse_plain4``)."""
        if pkt is None:
            try:
                pkt = parse(buf, mark)
            except PacketError as err:
                if err.icmp:
                    return self._icmp_in(buf, mark, now)
                return self._refuse(err.reason)
        created = False
        if found is _LOOKUP:
            conn = self.conns.find_in(pkt.protocol, pkt.saddr, pkt.sport, pkt.daddr, pkt.dport)
        else:
            conn = found
        if conn is None and self.conns.no_cport:
            # A helper's data connection waiting for its client's port.
            conn = self.conns.find_no_cport(
                pkt.protocol, pkt.saddr, pkt.sport, pkt.daddr, pkt.dport
            )
        if conn is not None and self._is_new_conn(pkt) and self._resched(conn):
            self.conns.remove(conn)  # a template is never here: it holds no such entry
            conn = None
        if conn is not None and not conn.dest.available:
            # ip_vs_in: the real server was removed.  By default its packets are dropped
            # silently; with expire_nodest_conn the connection goes and a SYN is
            # scheduled afresh.
            if not self._sysctls.expire_nodest_conn:
                return self._count((DROP, "dest_unavailable"))
            self.conns.remove(conn)
            conn = None
        if conn is None:
            svc = self.services.lookup(pkt.protocol, pkt.daddr, pkt.dport, mark)
            if svc is None:
                return self._pass("no_service")
            if pkt.protocol == IPPROTO_TCP:
                # tcp_conn_schedule: only a SYN without RST opens a connection (SYN+ACK
                # too, for active FTP, as the kernel allows; with sloppy_tcp anything
                # but a RST); anything else is left to the local stack, which answers
                # it with a reset.
                flags = pkt.tcp_flags
                if (
                    flags & TH_RST
                    if self._sysctls.sloppy_tcp
                    else flags & (TH_SYN | TH_RST) != TH_SYN
                ):
                    return self._pass("not_syn")
            scheduled = self._schedule(svc, pkt, now)
            if isinstance(scheduled, tuple):
                return self._count(scheduled)
            conn = scheduled
            created = True
        self._count_in(conn, pkt.length)
        conn.in_pkts += 1
        conn.proto.transition(conn, INPUT, pkt.tcp_flags)
        conn.expires = now + conn.timeout
        verdict = conn.xmit.xmit_in(conn, pkt)
        if verdict[0] == DROP and created:
            # A failed send is not a dead connection: IPVS drops the packet and keeps
            # the entry (the next packet may find the route back).  Only an entry this
            # very packet made goes, so the client's retry is scheduled afresh.
            self.conns.remove(conn)
        elif self.sync_master is not None:
            self.sync_master.sync_conn(conn, now)  # ip_vs_in_hook, after the send
        return self._count(verdict)

    def hook_out(self, buf: bytearray, now: float, skb_info: int = 0) -> Verdict:
        """FORWARD: a packet from a real server; NAT replies are rewritten.  ``skb_info``:
        the queue's NFQA_SKB_INFO flags (a GSO super-packet, a partial checksum).

        Fused as hook_in is: a reply of a known connection, a TCP segment of any row
        (the server's SYN-ACK too: ip_vs_out has no is_new_conn) or a UDP datagram,
        that is not the first the connection sees (that clears its NOOUTPUT) and that
        its transmitter rewrites without a question (``Xmit.fused_out``, or
        ``Xmit.fused_out_partial`` for a packet whose checksum is the kernel's partial
        seed).  backup_only does not hold replies back (ip_vs_out_hook has no such
        test, only ip_vs_in_hook and ip_vs_forward_icmp)."""
        if self.fused and len(buf) >= 28:
            vihl, length, frag, protocol, saddr, daddr, sport, dport = _FUSED.unpack_from(buf)
            if vihl == 0x45 and length == len(buf) and not frag & _FRAG:
                conn = self.conns.out_get(protocol << 48 | daddr << 16 | dport, saddr << 16 | sport)
                if conn is not None and not conn.nooutput:
                    proto = conn.proto
                    if proto is self.tcp:
                        row = _ROWS_OUT[buf[33]] if length >= 40 else -1
                        if row < 0 or buf[32] < _TH_DOFF5:
                            return self._out_general(buf, now, conn, skb_info)
                        state = conn.state
                        new = proto.table[OUTPUT][row][state]
                        timeout = proto.timeouts[new]
                    elif proto is self.udp:
                        state = new = 0  # UDP has one state
                        timeout = proto.timeouts[0]
                    else:
                        return self._out_general(buf, now, conn, skb_info)
                    verdict = (
                        conn.xmit.fused_out_partial(conn, buf, skb_info)
                        if skb_info & SKB_CSUMNOTREADY
                        else conn.xmit.fused_out(conn, buf)
                    )
                    if verdict is not None:
                        if new != state:
                            move(conn, new)  # set_tcp_state
                        stats = conn.dest.stats  # ip_vs_out_stats, unrolled
                        stats.outpkts += 1
                        stats.outbytes += length
                        stats = conn.svc.stats
                        stats.outpkts += 1
                        stats.outbytes += length
                        stats = self.totals
                        stats.outpkts += 1
                        stats.outbytes += length
                        if conn.control is not None and proto is self.udp:
                            conn.assure_control()  # udp_state_transition, an answer
                        conn.timeout = timeout
                        conn.expires = now + timeout
                        self.verdicts[VERDICT_NAMES[verdict[0]]] += 1
                        return verdict
                return self._out_general(buf, now, conn, skb_info)
            if vihl >> 4 == 6:
                return self._out_fused6(buf, now, skb_info)
        return self._out_general(buf, now, _LOOKUP, skb_info)

    def _out_fused6(self, buf: bytearray, now: float, skb_info: int) -> Verdict:
        """hook_out's fused path for an IPv6 reply without extension headers."""
        if len(buf) < 48:
            return self._out_general(buf, now, _LOOKUP, skb_info)
        plen, protocol, src_hi, src_lo, dst_hi, dst_lo, sport, dport = _FUSED6.unpack_from(buf)
        length = plen + IPV6_HLEN
        if length != len(buf) or (protocol != IPPROTO_TCP and protocol != IPPROTO_UDP):
            return self._out_general(buf, now, _LOOKUP, skb_info)
        conn = self.conns.out_get(
            V6_KEY | protocol << 144 | dst_hi << 80 | dst_lo << 16 | dport,
            src_hi << 80 | src_lo << 16 | sport,
        )
        if conn is None or conn.nooutput:
            return self._out_general(buf, now, conn, skb_info)
        proto = conn.proto
        if proto is self.tcp:
            row = _ROWS_OUT[buf[53]] if length >= 60 else -1
            if row < 0 or buf[52] < _TH_DOFF5:
                return self._out_general(buf, now, conn, skb_info)
            state = conn.state
            new = proto.table[OUTPUT][row][state]
            timeout = proto.timeouts[new]
        elif proto is self.udp:
            state = new = 0  # UDP has one state
            timeout = proto.timeouts[0]
        else:
            return self._out_general(buf, now, conn, skb_info)
        verdict = conn.xmit.fused_out6(conn, buf, skb_info)
        if verdict is None:
            return self._out_general(buf, now, conn, skb_info)
        if new != state:
            move(conn, new)  # set_tcp_state
        for stats in (conn.dest.stats, conn.svc.stats, self.totals):  # ip_vs_out_stats
            stats.outpkts += 1
            stats.outbytes += length
        if conn.control is not None and proto is self.udp:
            conn.assure_control()  # udp_state_transition, an answer
        conn.timeout = timeout
        conn.expires = now + timeout
        self.verdicts[VERDICT_NAMES[verdict[0]]] += 1
        return verdict

    def hook_out_general(self, buf: bytearray, now: float, skb_info: int = 0) -> Verdict:
        """hook_out, every step of ip_vs_out in turn."""
        return self._out_general(buf, now, _LOOKUP, skb_info)

    def _out_general(
        self, buf: bytearray, now: float, found: Conn | _Unseen | None, skb_info: int = 0
    ) -> Verdict:
        """As _in_general."""
        try:
            pkt = parse(buf, 0, skb_info)
        except PacketError as err:
            if err.icmp:
                return self._icmp_out(buf)
            return self._refuse(err.reason)
        if found is _LOOKUP:
            conn = self.conns.find_out(pkt.protocol, pkt.saddr, pkt.sport, pkt.daddr, pkt.dport)
        else:
            conn = found
        if conn is None:
            if self.sysctls.nat_icmp_send:
                return self._nat_icmp_send(pkt)
            return self._pass("no_conn")
        self._count_out(conn, pkt.length)
        conn.proto.transition(conn, OUTPUT, pkt.tcp_flags)
        conn.expires = now + conn.timeout
        return self._count(conn.xmit.xmit_out(conn, pkt))

    def _nat_icmp_send(self, pkt: Packet) -> Verdict:
        """nat_icmp_send: ip_vs_out_hook's answer to a packet from a NAT real server's
        address and port (ip_vs_has_real_service) that belongs to no connection: ICMP
        port unreachable back to the real server, the packet dropped; a TCP reset is
        left to go on.  The error's source is the director's address on the route
        toward the real server (icmp_send's choice for a forwarded packet)."""
        dest = self.services.real_service(pkt.protocol, pkt.saddr, pkt.sport)
        if dest is None or pkt.tcp_flags & TH_RST:
            return self._pass("no_conn")
        if dest.route is None:
            return self._count((DROP, "nat_icmp_send"))  # icmp_send finds no route
        source = dest.route.source
        if len(pkt.saddr) == 16:
            return self._count((SEND, port_unreachable6(pkt.buf, source)))
        return self._count((SEND, port_unreachable(pkt.buf, source)))

    def _icmp_in(self, buf: bytearray, mark: int, now: float) -> Verdict:
        """ip_vs_in_icmp / ip_vs_in_icmp_v6: an error from outside about a connection
        goes to its real server; the quoted packet is one the VIP sent, so the key is
        read reversed.  An ICMPv6 error for a NAT connection whose checksum is wrong
        is dropped first (ip_vs_checksum_common_check)."""
        try:
            err = parse_icmp_error(buf, mark)
        except PacketError as exc:
            return self._refuse(exc.reason)
        if err is None:
            return self._pass("icmp_other")
        if err.tunnel_dst is not None:
            verdict = self._icmp_tunnel(err, now)
            if verdict is not None:
                return verdict
            # Not about one of our GUE or GRE tunnels after all: a UDP packet's error.
            err = parse_icmp_error(buf, mark, tunnels=False)
            if err is None:
                return self._pass("icmp_other")
        conn = self.conns.find_in(
            err.inner_protocol, err.inner_daddr, err.inner_dport, err.inner_saddr,
            err.inner_sport,
        )  # fmt: skip
        if conn is None:
            if not self.sysctls.schedule_icmp:
                return self._pass("icmp_no_conn")
            scheduled = self._schedule_icmp(err, mark, now)
            if not isinstance(scheduled, Conn):
                return scheduled
            conn = scheduled
        if not _icmp6_checksum_ok(conn, err):
            return self._count((DROP, "icmp_checksum"))
        self._count_in(conn, err.pkt.length)
        return self._count(conn.xmit.icmp_in(conn, err))

    def _schedule_icmp(self, err: IcmpError, mark: int, now: float) -> Conn | Verdict:
        """schedule_icmp: ip_vs_in_icmp's ip_vs_try_to_schedule on the quoted header read
        reversed (IP_VS_HDR_INVERSE): the client's connection to the VIP is scheduled as
        its own packet would be (tcp_conn_schedule asks for no SYN of an ICMP error) and
        the error goes to the real server chosen.  Not a service's: it goes on to the
        local stack; no real server: dropped, with no answer (ip_vs_leave answers no
        ICMP error)."""
        svc = self.services.lookup(err.inner_protocol, err.inner_saddr, err.inner_sport, mark)
        if svc is None:
            return self._pass("icmp_no_conn")
        probe = Packet(
            err.pkt.buf, err.inner_protocol, err.inner_daddr, err.inner_saddr, err.inner_dport,
            err.inner_sport, err.inner_l4, err.pkt.length, 0, mark,
        )  # fmt: skip
        scheduled = self._schedule(svc, probe, now, icmp=True)
        if isinstance(scheduled, tuple):
            return self._count(scheduled)
        return scheduled

    def _icmp_tunnel(self, err: IcmpError, now: float) -> Verdict | None:
        """ip_vs_in_icmp's "ICMP for IPIP": an error about a packet the director
        tunnelled to a real server quotes the client's request (not reversed); an
        ICMPv6 one with a wrong checksum is dropped, as ip_vs_in_icmp checks it for
        tunnels.  The client hears of it from the VIP, quoting its own request.  Fragmentation
        needed (packet too big) teaches the real server's path MTU (ipv4_update_pmtu,
        kept apart from the route so a route lookup does not forget it); a client not
        doing path MTU discovery (IPv4 without DF) hears nothing; one that does is
        told the resulting path MTU less the tunnel header (20 bytes of IPv4, 40 of
        IPv6), so discovery works past the director's links.

        The kernel looks through IPv4-in-IPv4 only (ip_vs_in_icmp_v6 has no tunnel
        case, and passes such an error on to the local stack, which does nothing for
        it): here IPv6 tunnels, and tunnels of the other family than the client's,
        are looked through the same way, so path MTU discovery works through VS/TUN
        for IPv6 too.  Across families the error is translated as RFC 7915 4.2 / 5.2
        translate it (packet too big and fragmentation needed, time exceeded, the
        unreachables); what has no counterpart is not relayed.

        GUE and GRE tunnels too (ipvs_udp_decap, ipvs_gre_decap): the quote's UDP and
        GUE or GRE header is looked through when a real server of that address has
        that tunnel type (and, for GUE, that port: ip_vs_find_tunnel), and the MTU told
        is less their length as well (``hlen_ipip + ulen``).  None: the quote only
        looked like one of ours (an error about some UDP packet, read again as such)."""
        conn = self.conns.find_in(
            err.inner_protocol, err.inner_saddr, err.inner_sport, err.inner_daddr,
            err.inner_dport,
        )  # fmt: skip
        dest = conn.dest if conn is not None else None
        if (
            conn is None
            or dest is None
            or dest.addr != err.tunnel_dst
            or conn.xmit.name != "tunnel"
            or dest.tun_type != err.tunnel_type
            or (err.tunnel_type == "gue" and dest.tun_port != err.tunnel_port)
        ):  # ip_vs_find_tunnel: a real server of that address, tunnel type and port
            return None if err.tunnel_type != "ipip" else self._pass("icmp_no_conn")
        buf = err.pkt.buf
        at = err.pkt.l4
        outer6 = len(err.pkt.saddr) == 16
        if outer6 and ipv6_pseudo_sum(buf, IPPROTO_ICMPV6, at, err.pkt.length):
            return self._count((DROP, "icmp_checksum"))  # checked for tunnels too
        client6 = len(err.inner_saddr) == 16
        icmp = (buf[at], buf[at + 1])
        if outer6 != client6:
            translated = (_ICMP6_TO_4 if outer6 else _ICMP4_TO_6).get(icmp)
            if translated is None:
                translated = (_ICMP6_TO_4 if outer6 else _ICMP4_TO_6).get((icmp[0], -1))
            if translated is None:
                return self._count((DROP, "icmp_untranslated"))
        else:
            translated = icmp
        mtu = 0
        if icmp == ((ICMPV6_PKT_TOOBIG, 0) if outer6 else (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED)):
            hlen = (IPV6_HLEN if outer6 else TUNNEL_HLEN) + err.tunnel_ulen  # hlen_ipip + ulen
            mtu = int.from_bytes(buf[at + 4 : at + 8] if outer6 else buf[at + 6 : at + 8], "big")
            route = conn.dest.route
            if route is not None:
                # rt6_do_update_pmtu never goes below IPV6_MIN_MTU (net/ipv6/route.c)
                conn.dest.learn_pmtu(max(mtu, IPV6_MIN_MTU) if outer6 else mtu, route, now)
            if not client6 and not buf[err.inner + 6] & 0x40:  # the client's packet had no DF
                return self._count((DROP, "icmp_no_pmtud"))
            if route is not None:
                mtu = conn.dest.path_mtu(route)  # "Prefer the resulting PMTU"
            if mtu > (IPV6_MIN_MTU if client6 else 68) + hlen:
                mtu -= hlen
        if client6:
            return self._count(
                (SEND, icmp6_error(buf[err.inner :], translated[0], translated[1], mtu))
            )
        return self._count((SEND, unreachable(buf[err.inner :], translated[1], mtu, translated[0])))

    def _icmp_out(self, buf: bytearray) -> Verdict:
        """ip_vs_out_icmp / ip_vs_out_icmp_v6: a NAT real server's error about a
        connection is made to come from the VIP before it reaches the client
        (handle_response_icmp, which drops an error whose checksum is wrong)."""
        try:
            err = parse_icmp_error(buf)
        except PacketError as exc:
            return self._refuse(exc.reason)
        if err is None:
            return self._pass("icmp_other")
        conn = self.conns.find_out(
            err.inner_protocol, err.inner_daddr, err.inner_dport, err.inner_saddr,
            err.inner_sport,
        )  # fmt: skip
        if conn is None:
            return self._pass("icmp_no_conn")
        if not _icmp6_checksum_ok(conn, err):
            return self._count((DROP, "icmp_checksum"))
        self._count_out(conn, err.pkt.length)
        return self._count(conn.xmit.icmp_out(conn, err))

    # -- helpers -----------------------------------------------------------------

    def _count_in(self, conn: Conn, length: int) -> None:
        """ip_vs_in_stats: whole IP packets, per real server, service and in total;
        none for a cache_bypass entry, which has no real server."""
        if conn.dest.port == 0 and conn.dest is conn.svc.bypass_dest:
            return
        for stats in (conn.dest.stats, conn.svc.stats, self.totals):
            stats.inpkts += 1
            stats.inbytes += length

    def _count_out(self, conn: Conn, length: int) -> None:
        """ip_vs_out_stats."""
        for stats in (conn.dest.stats, conn.svc.stats, self.totals):
            stats.outpkts += 1
            stats.outbytes += length

    def _schedule(
        self, svc: Service, pkt: Packet, now: float, icmp: bool = False
    ) -> Conn | Verdict:
        """ip_vs_schedule (and ip_vs_sched_persist for persistent services), or
        ip_vs_leave's ICMP port unreachable when no real server is left (a drop for
        an ICMP error being scheduled, ``icmp``)."""
        if self.defense.drop_rate and self.defense.todrop():
            return (DROP, "defense_drop_packet")
        if self.conn_limit and len(self.conns) + len(self.conns.templates) >= self.conn_limit:
            return (DROP, "conn_table_full")
        template = None
        dport = None
        if svc.conf.persistent is not None:
            template = self._template(svc, pkt, now)
            dest = template.dest if template is not None else None
            if template is not None:
                dport = template.dport or pkt.dport
        else:
            dest = svc.scheduler.schedule(svc, pkt, now)
        if dest is None:
            if icmp:
                return (DROP, "no_dest")
            if self.sysctls.cache_bypass and not svc.protocol and self._bypassable(pkt.daddr):
                return self._bypass(svc, pkt, now)
            self.drops["no_dest"] += 1
            if len(pkt.daddr) == 16:
                return (SEND, port_unreachable6(pkt.buf))
            return (SEND, port_unreachable(pkt.buf))
        try:
            xmit = bind_xmit(dest)
        except KeyError:
            return (DROP, "unsupported_method")
        conn = new_conn(
            self,
            self.protocols[pkt.protocol],
            pkt.protocol,
            pkt.saddr,
            pkt.sport,
            pkt.daddr,
            pkt.dport,
            svc,
            dest,
            xmit,
            dport=dport,
        )
        conn.expires = now + conn.timeout
        if not (svc.conf.ops and pkt.protocol == IPPROTO_UDP):
            self.conns.add(conn, template)
        elif template is not None:
            # One-packet scheduling (-o): the entry serves this datagram only and is
            # never hashed (IP_VS_CONN_F_ONE_PACKET); its template counts the packet
            # (ip_vs_in_hook, or the master's sync up the chain of control), which
            # drop_entry's todrop_entry looks at.
            conn.control = template  # not counted in n_control: it is never hashed
            if self.sync_master is None:
                template.in_pkts += 1
        dest.stats.conns += 1
        svc.stats.conns += 1
        self.totals.conns += 1
        return conn

    def _bypassable(self, daddr: bytes) -> bool:
        """ip_vs_addr_is_unicast: a unicast address that is not the director's own
        (``local_addrs``; while the shell has not said, none is bypassed)."""
        local = self.local_addrs
        if local is None or daddr in local or not any(daddr):
            return False
        if len(daddr) == 16:
            return daddr[0] != 0xFF  # not multicast
        return daddr[0] < 224 and daddr[0] != 127  # not multicast, broadcast, loopback

    def _bypass(self, svc: Service, pkt: Packet, now: float) -> Conn:
        """ip_vs_leave's cache_bypass entry (IP_VS_CONN_F_BYPASS): no real server (the
        service's ``bypass_dest``, 0.0.0.0:0), no connection counted (ip_vs_conn_new,
        not ip_vs_schedule's ip_vs_conn_stats); its packets go on to their own
        destination (ip_vs_bypass_xmit) for as long as the entry lives, a real
        server added meanwhile or not."""
        dest = svc.bypass_dest
        conn = Conn(
            self.protocols[pkt.protocol], pkt.protocol, pkt.saddr, pkt.sport, pkt.daddr,
            pkt.dport, svc, dest, bind_xmit(dest), dport=0,
        )  # fmt: skip
        conn.expires = now + conn.timeout
        if not (svc.conf.ops and pkt.protocol == IPPROTO_UDP):  # IP_VS_CONN_F_ONE_PACKET
            self.conns.add(conn)
        return conn

    def _template(self, svc: Service, pkt: Packet, now: float) -> Template | None:
        """ip_vs_sched_persist: the client's template, made if it has none (or none
        still valid), and restarted for another persistence period."""
        key = persist.template_key(svc, pkt)
        template = self.conns.templates.get(key)
        if template is not None and not persist.usable(template, self.sysctls):
            self.conns.remove(template)
            template = None
        if template is None:
            dest = svc.scheduler.schedule(svc, pkt, now)
            if dest is None:
                return None
            template = persist.new_template(
                self.protocols[pkt.protocol], key, svc, dest, bind_xmit(dest), now
            )
            self.conns.add(template)
        template.expires = now + template.timeout
        return template

    @staticmethod
    def _is_new_conn(pkt: Packet) -> bool:
        """is_new_conn (ip_vs_core.c): a TCP SYN."""
        return pkt.protocol == IPPROTO_TCP and bool(pkt.tcp_flags & TH_SYN)

    def _resched(self, conn: Conn) -> bool:
        """ip_vs_in_hook, a SYN (is_new_conn) that finds an entry: with
        expire_nodest_conn an entry whose real server is quiesced (weight 0) goes and
        the SYN is scheduled afresh; otherwise conn_reuse_mode decides.  A userspace
        director has no conntrack of its own, so the old-conntrack case (drop the SYN
        and let the client retry) never arises."""
        if self._sysctls.expire_nodest_conn and conn.dest.weight == 0:
            return True
        return self._reusable(conn)

    def _reusable(self, conn: Conn) -> bool:
        """is_new_conn_expected: may a SYN that finds this connection start afresh?

        On the kernel fast path a SYN reaches the worker only when conntrack calls it
        NEW: for a connection conntrack saw established (or past it), that is a new
        connection on the same tuple (conntrack reopened the tuple from TIME_WAIT, or
        its entry is gone), whatever state the entry here last heard of; in SYN_RECV
        it is the first SYN sent again."""
        mode = self._sysctls.conn_reuse_mode
        if not mode or conn.control is not None or conn.protocol != IPPROTO_TCP:
            return False
        state = conn.state
        if conn.xmit.name == KERNEL_NAT:
            return state != SYN_RECV
        return state in (TIME_WAIT, CLOSE) or (
            bool(mode & 2) and state == FIN_WAIT and conn.nooutput
        )

    def _pass(self, reason: str) -> Verdict:
        """Not the director's: the packet goes on as the kernel would send it, counted
        by why (a VIP's packet for no service, a TCP packet that may not open one...)."""
        self.passes[reason] += 1
        return self._count(_PASS)

    def _refuse(self, reason: str) -> Verdict:
        if reason == "unhandled_protocol":
            return self._pass("unhandled_protocol")
        return self._count((DROP, reason))

    def _count(self, verdict: Verdict) -> Verdict:
        action = verdict[0]
        self.verdicts[VERDICT_NAMES[action]] += 1
        if action == DROP:
            self.drops[str(verdict[1])] += 1
        return verdict
