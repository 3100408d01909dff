"""The FTP helper (net/netfilter/ipvs/ip_vs_ftp.c), ``ip_vs_ftp``.

Bound to NAT connections of the ports it watches (the module's ``ports=``, 21 by
default; directord's ``ftp_ports``), it makes the FTP data connections work through
the director:

- passive mode: the client's ``PASV`` (IPv4) or ``EPSV`` puts the control connection
  in passive mode (cp->app_data); the real server's ``227`` reply naming its own
  address and port is rewritten to name the VIP and the same port, and a connection
  entry client:0 -> VIP:port -> RIP:port is made (IP_VS_CONN_F_NO_CPORT, the client's
  port filled in by its first packet), controlled by the control connection
  (ip_vs_ftp_out).  A ``229`` reply (EPSV) names only the port: ``|||port|``.
- active mode: the client's ``PORT a,b,c,d,p,q`` (or ``EPRT |1|addr|port|``) is left
  as it is and makes the entry client:port <- VIP:20 <- RIP:20 (the control
  connection's virtual and real ports less one) that the real server's connection
  from port 20 takes, leaving as the VIP (ip_vs_ftp_in).

The lines are parsed as ip_vs_ftp_get_addrport parses them: within the one packet
(a line cut by the end of the segment is a partial match, left alone), decimal
numbers kept in a byte each (a number past 255 wraps, as in the kernel's unsigned
char), an extended address only of the connection's family, a port of zero refused.
What is left alone is counted (``AppTable.counters``): ``ftp_partial`` for a command
or reply that matched but did not parse, ``ftp_foreign`` for a 227/229 naming another
address than the real server's (the kernel makes the entry to that address; an entry
here always goes to its real server, so the reply is left alone), besides
``ftp_pasv``, ``ftp_epsv``, ``ftp_port`` and ``ftp_eprt`` for what was handled.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from director.core import proto_tcp
from director.core.app import (
    APP_MANGLED,
    APP_OK,
    App,
    AppConn,
    new_conn,
    payload,
    register,
    replace,
)
from director.core.packet import IPPROTO_TCP
from director.core.proto_tcp import ESTABLISHED, LISTEN
from director.core.xmit import bind_xmit

if TYPE_CHECKING:
    from director.core.conn import Conn
    from director.core.packet import Packet

# cp->app_data: the mode the last command put the control connection in.
FTP_ACTIVE, FTP_PASV, FTP_EPRT, FTP_EPSV = 0, 1, 2, 3
FTP_PORT = FTP_ACTIVE

SERVER_STRING_PASV = b"227 "
CLIENT_STRING_PORT = b"PORT"
SERVER_STRING_EPSV = b"229 "
CLIENT_STRING_EPRT = b"EPRT"


def _isdigit(c: int) -> bool:
    return 0x30 <= c <= 0x39


def get_addrport(
    data: bytes, pattern: bytes, skip: int, ext: bool, mode: int, family: int,
    addr: bytes | None = None,
) -> tuple[int, bytes | None, int, int, int]:  # fmt: skip
    """ip_vs_ftp_get_addrport over ``data`` (the payload, up to the end of the
    packet): (1, address, port, start, end) when a line starting with ``pattern``
    (case-insensitive) parses, the address and port's text at ``data[start:end]``;
    (0, ...) when the pattern does not match; (-1, ...) when it matched (or may have,
    cut short) but did not parse.  ``skip`` is the character before the numbers
    ("(" or " ", 0 for none); ``family`` 4 or 6; ``addr`` the address preset for an
    EPSV reply that names none."""
    limit = len(data)
    plen = len(pattern)
    none = (0, None, 0, 0, 0)
    bad = (-1, None, 0, 0, 0)
    if limit < plen:
        return bad if data.lower() == pattern[:limit].lower() else none
    if data[:plen].lower() != pattern.lower():
        return none
    s = plen
    if skip:
        found = False
        while True:
            if s == limit:
                return bad
            if not found:
                # "(" is optional for non-extended format, so catch the start of
                # IPv4 address
                if not ext and _isdigit(data[s]):
                    break
                if data[s] == skip:
                    found = True
            elif data[s] != skip:
                break
            s += 1
    if not ext:
        p = [0] * 6
        i = 0
        at = s
        while True:
            if at == limit:
                return bad
            c = data[at]
            if _isdigit(c):
                p[i] = (p[i] * 10 + c - 0x30) & 0xFF  # unsigned char p[6]
            elif c == 0x2C and i < 5:
                i += 1
                p[i] = 0
            else:
                break  # unexpected character or terminator
            at += 1
        if i != 5:
            return bad
        return 1, bytes(p[:4]), p[4] << 8 | p[5], s, at
    if s == limit:
        return bad
    start = s
    edelim = data[s]
    s += 1
    if edelim < 33 or edelim > 126:
        return bad
    if s == limit:
        return bad
    if data[s] == edelim:
        # Address family is usually missing for EPSV response
        if mode != FTP_EPSV:
            return bad
        s += 1
        if s == limit or data[s] != edelim:
            return bad
        s += 1
    else:
        # We allow address only from same family
        if data[s] != (0x32 if family == 6 else 0x31):
            return bad
        s += 1
        if s == limit or data[s] != edelim:
            return bad
        s += 1
        if s == limit:
            return bad
        ep = data.find(bytes((edelim,)), s)
        if ep < 0:
            return bad  # in4_pton / in6_pton found no end
        try:
            text = data[s:ep].decode("ascii")
            parsed = ipaddress.ip_address(text)
        except ValueError:
            return bad
        if parsed.version != family:
            return bad
        addr = parsed.packed
        s = ep + 1
    hport = 0
    while True:
        if s == limit:
            return bad
        if not _isdigit(data[s]):
            break
        hport = (hport * 10 + data[s] - 0x30) & 0xFFFF  # __u16 hport
        s += 1
    if not hport or data[s] != edelim:
        return bad
    s += 1
    return 1, addr, hport, start, s


def _passive_command(data: bytes, v6: bool) -> int | None:
    """ip_vs_ftp_in's scan, "while (data <= data_limit - 6)": at the first place in the
    payload where "PASV\r\n" (IPv4 only) or "EPSV" then a space or CR starts, the
    mode it sets (FTP_PASV, FTP_EPSV, or 0 for an "EPSV <proto>" of another family or
    cut short, which ends the scan all the same); None when there is none.  Found
    with bytes.find, not byte by byte: a large segment costs no Python loop."""
    lower = data.lower()
    last = len(data) - 6
    pasv = lower.find(b"pasv\r\n", 0, last + 6) if not v6 else -1
    at = lower.find(b"epsv", 0, (pasv if pasv >= 0 else last) + 4)
    while 0 <= at <= last and lower[at + 4] not in b" \r":
        at = lower.find(b"epsv", at + 1, (pasv if pasv >= 0 else last) + 4)
    if at < 0 or at > last:
        return FTP_PASV if pasv >= 0 else None
    if data[at + 4] == 0x20:
        if at > len(data) - 7 or data[at + 6] != 0x0D:
            return 0
        if data[at + 5] != (0x32 if v6 else 0x31):
            return 0
    return FTP_EPSV


@register
class Ftp(App):
    """ip_vs_ftp: pkt_out is ip_vs_ftp_out, pkt_in ip_vs_ftp_in."""

    name = "ftp"
    protocol = IPPROTO_TCP
    default_ports = (21,)

    def init_conn(self, conn: AppConn) -> None:
        """ip_vs_ftp_init_conn (IP_VS_CONN_F_NFCT: conntrack is not used here)."""
        conn.app_data = FTP_ACTIVE

    def _count(self, what: str) -> None:
        self.director.apps.counters[what] += 1

    def pkt_out(self, conn: AppConn, pkt: Packet) -> tuple[int, int]:
        """ip_vs_ftp_out: the 227 (or 229) reply to a PASV (EPSV) names the VIP."""
        if conn.state != ESTABLISHED:
            return APP_OK, 0  # Only useful for established sessions
        mode = conn.app_data
        if mode not in (FTP_PASV, FTP_EPSV):
            return APP_OK, 0
        start, limit = payload(pkt)
        if start >= limit:
            return APP_OK, 0
        data = bytes(pkt.buf[start:limit])
        family = 6 if len(conn.caddr) == 16 else 4
        if mode == FTP_PASV:
            found, addr, port, begin, end = get_addrport(
                data, SERVER_STRING_PASV, ord("("), False, FTP_PASV, family
            )
        else:
            found, addr, port, begin, end = get_addrport(
                data, SERVER_STRING_EPSV, ord("("), True, FTP_EPSV, family, conn.daddr
            )
        if found != 1:
            if found < 0:
                self._count("ftp_partial")
            return APP_OK, 0
        if addr != conn.daddr:
            self._count("ftp_foreign")
            conn.app_data = FTP_ACTIVE
            return APP_OK, 0
        data_conn = self.director.conns.find_out(IPPROTO_TCP, conn.daddr, port, conn.caddr, 0)
        if data_conn is None:
            data_conn = self._new(conn, conn.caddr, 0, conn.vaddr, port, port)
            self.director.conns.add(data_conn, conn, no_cport=True)
        else:
            self._listen(data_conn, conn)
        if mode == FTP_PASV:
            v = data_conn.vaddr
            text = b"%d,%d,%d,%d,%d,%d" % (v[0], v[1], v[2], v[3], port >> 8, port & 0xFF)
            self._count("ftp_pasv")
        else:
            # Only port, client will use VIP for the data connection
            text = b"|||%d|" % data_conn.vport
            self._count("ftp_epsv")
        diff = replace(pkt, start + begin, start + end, text)
        conn.app_data = FTP_ACTIVE
        return APP_MANGLED, diff

    def pkt_in(self, conn: AppConn, pkt: Packet) -> tuple[int, int]:
        """ip_vs_ftp_in: PASV / EPSV set passive mode; PORT / EPRT make the entry of
        the active data connection (no diff: the command is not rewritten)."""
        if conn.state != ESTABLISHED:
            return APP_OK, 0
        start, limit = payload(pkt)
        if start >= limit:
            return APP_OK, 0
        data = bytes(pkt.buf[start:limit])
        v6 = len(conn.caddr) == 16
        mode = _passive_command(data, v6)
        if mode is not None:
            if mode:
                conn.app_data = mode  # (Extended) Passive mode on
            return APP_OK, 0
        family = 6 if v6 else 4
        found = 0
        if not v6:
            found, addr, port, _, _ = get_addrport(
                data, CLIENT_STRING_PORT, ord(" "), False, FTP_PORT, family
            )
            what = "ftp_port"
        if found != 1:
            if found < 0:
                self._count("ftp_partial")
            found, addr, port, _, _ = get_addrport(
                data, CLIENT_STRING_EPRT, ord(" "), True, FTP_EPRT, family
            )
            what = "ftp_eprt"
        if found != 1 or addr is None:
            if found < 0:
                self._count("ftp_partial")
            return APP_OK, 0
        conn.app_data = FTP_ACTIVE  # Passive mode off
        vport = (conn.vport - 1) & 0xFFFF
        data_conn = self.director.conns.find_in(IPPROTO_TCP, addr, port, conn.vaddr, vport)
        if data_conn is None:
            data_conn = self._new(conn, addr, port, conn.vaddr, vport, (conn.dport - 1) & 0xFFFF)
            self.director.conns.add(data_conn, conn)
        else:
            self._listen(data_conn, conn)
        self._count(what)
        return APP_OK, 0

    def _new(
        self, conn: AppConn, caddr: bytes, cport: int, vaddr: bytes, vport: int, dport: int
    ) -> Conn:
        """ip_vs_conn_new for a data connection of ``conn``'s real server, put in
        LISTEN (ip_vs_tcp_conn_listen) before it is hashed."""
        director = self.director
        data_conn = new_conn(
            director, director.tcp, IPPROTO_TCP, caddr, cport, vaddr, vport, conn.svc,
            conn.dest, bind_xmit(conn.dest), dport=dport,
        )  # fmt: skip
        data_conn.state = LISTEN  # from NONE: both inactive, no counter moves
        self._listen(data_conn, conn)
        return data_conn

    def _listen(self, data_conn: Conn, conn: Conn) -> None:
        """ip_vs_tcp_conn_listen: the entry waits in LISTEN for its first packet, for
        LISTEN's timeout from now (the control connection's packet, whose entry the
        engine timed just before the transmitter ran: expires - timeout is now)."""
        if data_conn.state != LISTEN:
            proto_tcp.move(data_conn, LISTEN)
        data_conn.timeout = self.director.tcp.timeouts[LISTEN]
        data_conn.expires = conn.expires - conn.timeout + data_conn.timeout
