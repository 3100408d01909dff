"""Golden packets for the FTP helper (net/netfilter/ipvs/ip_vs_ftp.c, the framework
net/netfilter/ipvs/ip_vs_app.c): the 227 reply's rewrite with a change of length, the
sequence and acknowledgement numbers of the later packets both ways (vs_fix_seq,
vs_fix_ack_seq, vs_seq_update), the data connections ip_vs_ftp_out / ip_vs_ftp_in
make, and what ip_vs_ftp_get_addrport leaves alone.

Every expected packet is built by dpkt from the fields the kernel would write, dpkt
computing every checksum itself; a request sent on to the real server is one hop older
(TTL 61 -> 60: ip_vs_nat_xmit's __ip_vs_get_out_rt calls decrement_ttl,
net/netfilter/ipvs/ip_vs_xmit.c).
"""

from __future__ import annotations

import json
import socket
import struct

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from director.core import app, conn_dump, sync
from director.core.app import AppConn, fix_ack_seq, fix_seq, seq_update
from director.core.app_ftp import FTP_EPSV, _passive_command, get_addrport
from director.core.engine import Director
from director.core.proto_tcp import ESTABLISHED, LISTEN
from director.core.xmit import ACCEPT, SEND
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import CLIENT, RS1, VIP

ACK = dpkt.tcp.TH_ACK
SYN = dpkt.tcp.TH_SYN
PSH = dpkt.tcp.TH_PUSH
CSEQ = 1000  # the client's first sequence number after its SYN
SSEQ = 5000  # the real server's


def seg(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int = ACK | PSH,
        data: bytes = b"", ttl: int = 61) -> bytearray:  # fmt: skip
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, data=data)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=ttl, id=7,
                    data=tcp)  # fmt: skip
    return bytearray(bytes(ip))


def director(ports: tuple[int, ...] = (21,), persistent: int | None = None) -> Director:
    d = Director()
    services = [ServiceConf("tcp", VIP, 21, scheduler="rr", persistent=persistent,
                            dests=(DestConf(RS1, 21, "masq"),))]  # fmt: skip
    if persistent is not None:
        services.append(ServiceConf("tcp", VIP, 0, scheduler="rr", persistent=persistent,
                                    dests=(DestConf(RS1, 0, "masq"),)))  # fmt: skip
    d.configure(Config(services=tuple(services)))
    app.configure(d, "ftp", ports)
    return d


def established(d: Director, cport: int = 40000) -> AppConn:
    """The control connection's handshake through the director."""
    assert d.hook_in(seg(CLIENT, VIP, cport, 21, CSEQ - 1, 0, SYN), 0.0)[0] == SEND
    reply = seg(RS1, CLIENT, 21, cport, SSEQ - 1, CSEQ, SYN | ACK)
    assert d.hook_out(reply, 0.0)[0] == ACCEPT
    assert d.hook_in(seg(CLIENT, VIP, cport, 21, CSEQ, SSEQ, ACK), 0.0)[0] == SEND
    conn = d.conns.find_in(6, socket.inet_aton(CLIENT), cport, socket.inet_aton(VIP), 21)
    assert isinstance(conn, AppConn) and conn.state == ESTABLISHED
    return conn


def pasv(d: Director, reply: bytes, cseq: int = CSEQ, sseq: int = SSEQ,
         seen: int | None = None) -> tuple[int, object]:  # fmt: skip
    """PASV from the client (acknowledging ``seen``, the server's ``sseq`` once the
    director moved it back), then the server's ``reply``: the reply's verdict."""
    cmd = seg(CLIENT, VIP, 40000, 21, cseq, sseq if seen is None else seen, data=b"PASV\r\n")
    verdict = d.hook_in(cmd, 1.0)
    assert verdict == (SEND, seg(CLIENT, RS1, 40000, 21, cseq, sseq, data=b"PASV\r\n", ttl=60))
    return d.hook_out(seg(RS1, CLIENT, 21, 40000, sseq, cseq + 6, data=reply), 1.0)


def test_pasv_reply_names_the_vip_and_moves_later_sequence_numbers_both_ways() -> None:
    """ip_vs_ftp_out: "227 Entering Passive Mode (198,18,0,2,195,80)" becomes the VIP's
    (203,0,113,5: one character longer); the later packets of the real server carry
    seq + 1 (vs_fix_seq, delta 1 after init_seq) and the client's acknowledgements of
    them ack - 1 (vs_fix_ack_seq), whichever path they would take."""
    d = director()
    conn = established(d)
    old = b"227 Entering Passive Mode (198,18,0,2,195,80).\r\n"
    new = b"227 Entering Passive Mode (203,0,113,5,195,80).\r\n"
    assert pasv(d, old) == (ACCEPT, seg(VIP, CLIENT, 21, 40000, SSEQ, CSEQ + 6, data=new))
    assert conn.out_seq == (SSEQ, 1, 0)
    after = SSEQ + len(old)
    more = b"150 Here comes the directory listing.\r\n"
    assert d.hook_out(seg(RS1, CLIENT, 21, 40000, after, CSEQ + 6, data=more), 2.0) == (
        ACCEPT, seg(VIP, CLIENT, 21, 40000, after + 1, CSEQ + 6, data=more),
    )  # fmt: skip
    # The client acknowledges what it got (one byte more than the server sent).
    ack = seg(CLIENT, VIP, 40000, 21, CSEQ + 6, after + 1 + len(more), ACK)
    assert d.hook_in(ack, 2.0) == (SEND, seg(CLIENT, RS1, 40000, 21, CSEQ + 6,
                                             after + len(more), ACK, ttl=60))  # fmt: skip
    # An acknowledgement of the 227 reply's first bytes only (not past init_seq + delta)
    # takes previous_delta, 0.
    early = seg(CLIENT, VIP, 40000, 21, CSEQ + 6, SSEQ + 1, ACK)
    assert d.hook_in(early, 2.0) == (SEND, seg(CLIENT, RS1, 40000, 21, CSEQ + 6, SSEQ + 1, ACK,
                                               ttl=60))  # fmt: skip
    assert d.apps.counters["ftp_pasv"] == 1


def test_pasv_makes_the_data_connection_the_client_opens_to_the_vip() -> None:
    """ip_vs_ftp_out's ip_vs_conn_new: client:0 -> VIP:50000 -> RIP:50000 with
    IP_VS_CONN_F_NO_CPORT, in LISTEN (ip_vs_tcp_conn_listen), controlled by the
    control connection (ip_vs_control_add); the client's SYN fills its port in
    (ip_vs_conn_fill_cport) and goes to the real server, the reply leaves as the VIP."""
    d = director()
    conn = established(d)
    pasv(d, b"227 Entering Passive Mode (198,18,0,2,195,80)\r\n")
    data = d.conns.find_in(6, socket.inet_aton(CLIENT), 0, socket.inet_aton(VIP), 50000)
    assert data is not None and data.state == LISTEN and data.control is conn
    assert data.dport == 50000 and conn.n_control == 1
    assert data.timeout == d.tcp.timeouts[LISTEN]
    syn = seg(CLIENT, VIP, 40001, 50000, 7000, 0, SYN)
    assert d.hook_in(syn, 2.0) == (SEND, seg(CLIENT, RS1, 40001, 50000, 7000, 0, SYN, ttl=60))
    assert data.cport == 40001 and not d.conns.no_cport
    synack = seg(RS1, CLIENT, 50000, 40001, 9000, 7001, SYN | ACK)
    assert d.hook_out(synack, 2.0) == (ACCEPT, seg(VIP, CLIENT, 50000, 40001, 9000, 7001,
                                                   SYN | ACK))  # fmt: skip
    # The data connection is not an application's: its packets keep their numbers.
    assert type(data) is not AppConn
    # The control connection outlives it: at its time it is put off while it controls.
    d.conns.remove(data)
    assert conn.n_control == 0


def test_port_is_left_as_it_is_and_opens_the_way_from_port_20() -> None:
    """ip_vs_ftp_in: PORT 203,0,113,10,156,65 (client port 40001) is not rewritten (no
    diff for incoming packets) and makes client:40001 <- VIP:20 <- RIP:20 (vport - 1,
    dport - 1): the real server's SYN from port 20 leaves as the VIP, the client's
    answer reaches the real server's port 20."""
    d = director()
    conn = established(d)
    cmd = b"PORT 203,0,113,10,156,65\r\n"
    verdict = d.hook_in(seg(CLIENT, VIP, 40000, 21, CSEQ, SSEQ, data=cmd), 1.0)
    assert verdict == (SEND, seg(CLIENT, RS1, 40000, 21, CSEQ, SSEQ, data=cmd, ttl=60))
    data = d.conns.find_in(6, socket.inet_aton(CLIENT), 40001, socket.inet_aton(VIP), 20)
    assert data is not None and data.control is conn and data.dport == 20
    assert data.state == LISTEN
    syn = seg(RS1, CLIENT, 20, 40001, 3000, 0, SYN)
    assert d.hook_out(syn, 1.0) == (ACCEPT, seg(VIP, CLIENT, 20, 40001, 3000, 0, SYN))
    synack = seg(CLIENT, VIP, 40001, 20, 8000, 3001, SYN | ACK)
    assert d.hook_in(synack, 1.0) == (SEND, seg(CLIENT, RS1, 40001, 20, 8000, 3001, SYN | ACK,
                                                ttl=60))  # fmt: skip
    assert d.apps.counters["ftp_port"] == 1
    assert conn.in_seq == conn.out_seq == (0, 0, 0)


def test_epsv_reply_keeps_its_text_and_makes_the_entry() -> None:
    """EPSV then "229 Entering Extended Passive Mode (|||50000|)": the kernel writes
    "|||%u|" of the entry's virtual port, the same text here (no delta)."""
    d = director()
    conn = established(d)
    cmd = seg(CLIENT, VIP, 40000, 21, CSEQ, SSEQ, data=b"EPSV\r\n")
    assert d.hook_in(cmd, 1.0)[0] == SEND and conn.app_data == FTP_EPSV
    reply = b"229 Entering Extended Passive Mode (|||50000|)\r\n"
    out = d.hook_out(seg(RS1, CLIENT, 21, 40000, SSEQ, CSEQ + 6, data=reply), 1.0)
    assert out == (ACCEPT, seg(VIP, CLIENT, 21, 40000, SSEQ, CSEQ + 6, data=reply))
    assert conn.out_seq == (0, 0, 0)
    assert d.conns.find_in(6, socket.inet_aton(CLIENT), 0, socket.inet_aton(VIP), 50000)


def test_two_resized_replies_add_their_deltas() -> None:
    """vs_seq_update: a second resize after the first moves delta to previous_delta
    and adds its own: packets after it move by 2, acknowledgements past it by 2."""
    d = director()
    conn = established(d)
    first = b"227 Entering Passive Mode (198,18,0,2,195,80)\r\n"
    pasv(d, first)
    s2 = SSEQ + len(first)
    second = b"227 Entering Passive Mode (198,18,0,2,195,81)\r\n"
    out = pasv(d, second, CSEQ + 6, s2, seen=s2 + 1)  # the client acks what it saw
    assert out == (ACCEPT, seg(VIP, CLIENT, 21, 40000, s2 + 1, CSEQ + 12,
                               data=second.replace(b"198,18,0,2", b"203,0,113,5")))  # fmt: skip
    assert conn.out_seq == (s2, 2, 1)
    s3 = s2 + len(second)
    later = seg(RS1, CLIENT, 21, 40000, s3, CSEQ + 12, data=b"226 ok\r\n")
    assert d.hook_out(later, 2.0) == (ACCEPT, seg(VIP, CLIENT, 21, 40000, s3 + 2, CSEQ + 12,
                                                  data=b"226 ok\r\n"))  # fmt: skip
    ack = seg(CLIENT, VIP, 40000, 21, CSEQ + 12, s3 + 2 + 8, ACK)
    assert d.hook_in(ack, 2.0) == (SEND, seg(CLIENT, RS1, 40000, 21, CSEQ + 12, s3 + 8, ACK,
                                             ttl=60))  # fmt: skip


HOSTILE = [
    # (reply, counter): what ip_vs_ftp_get_addrport refuses or leaves alone
    (b"227 Entering Passive Mode (198,18,0,2,195", "ftp_partial"),  # cut by the segment's end
    (b"227 Entering Passive Mode (198,18,0,2,195)\r\n", "ftp_partial"),  # i != 5
    (b"227 Entering Passive Mode (198,51,100,7,195,80)\r\n", "ftp_foreign"),  # another host
    (b"227 " + b"(" * 3000, "ftp_partial"),  # huge, no number before the end
]


@pytest.mark.parametrize(("reply", "counter"), HOSTILE)
def test_hostile_replies_are_left_alone_and_counted(reply: bytes, counter: str) -> None:
    """A 227 that does not parse (ip_vs_ftp_get_addrport's -1) is passed on as it is;
    one naming another address than the real server's is left alone too (the kernel
    would make an entry to it; here an entry's real server is its destination)."""
    d = director()
    conn = established(d)
    out = pasv(d, reply)
    assert out == (ACCEPT, seg(VIP, CLIENT, 21, 40000, SSEQ, CSEQ + 6, data=reply))
    assert d.apps.counters[counter] == 1
    assert conn.out_seq == (0, 0, 0) and not d.conns.no_cport


def test_numbers_past_255_wrap_as_the_kernels_unsigned_char() -> None:
    """p[i] = p[i]*10 + c - '0' in an unsigned char: 454 is 198 (454 - 256)."""
    d = director()
    established(d)
    reply = b"227 Entering Passive Mode (454,18,0,2,195,80)\r\n"
    out = pasv(d, reply)
    new = b"227 Entering Passive Mode (203,0,113,5,195,80)\r\n"
    assert out == (ACCEPT, seg(VIP, CLIENT, 21, 40000, SSEQ, CSEQ + 6, data=new))


def test_no_helper_on_other_ports_or_without_the_module() -> None:
    """tcp_app_conn_bind: only a connection whose virtual port the helper watches is
    bound; with no ports (the module not loaded) a 227 goes out untouched."""
    d = director(ports=())
    d.hook_in(seg(CLIENT, VIP, 40000, 21, CSEQ - 1, 0, SYN), 0.0)
    conn = d.conns.find_in(6, socket.inet_aton(CLIENT), 40000, socket.inet_aton(VIP), 21)
    assert conn is not None and type(conn) is not AppConn
    d = director(ports=(2121,))
    d.hook_in(seg(CLIENT, VIP, 40000, 21, CSEQ - 1, 0, SYN), 0.0)
    conn = d.conns.find_in(6, socket.inet_aton(CLIENT), 40000, socket.inet_aton(VIP), 21)
    assert conn is not None and type(conn) is not AppConn


def test_a_helpers_connection_takes_the_general_path_with_the_same_result() -> None:
    """The fused paths skip a helper's connections (AppMasquerade has no fused_*):
    fused or not, the same bytes, and the sequence fixes are applied."""
    results = []
    for fused in (True, False):
        d = director()
        d.fused = fused
        established(d)
        out = [pasv(d, b"227 Entering Passive Mode (198,18,0,2,195,80)\r\n")]
        more = seg(RS1, CLIENT, 21, 40000, SSEQ + 48, CSEQ + 6, data=b"150 x\r\n")
        out.append(d.hook_out(more, 2.0))
        results.append(out)
    assert results[0] == results[1]
    assert results[0][1] == (ACCEPT, seg(VIP, CLIENT, 21, 40000, SSEQ + 49, CSEQ + 6,
                                         data=b"150 x\r\n"))  # fmt: skip


def test_persistent_ftp_template_has_no_port() -> None:
    """ip_vs_sched_persist: a persistent service on port 21 (FTPPORT) makes the
    template <caddr, 0, vaddr, 0>, which the VIP's persistent port-zero service shares,
    so the data connections go to the control connection's real server."""
    d = director(persistent=300)
    d.hook_in(seg(CLIENT, VIP, 40000, 21, CSEQ - 1, 0, SYN), 0.0)
    keys = list(d.conns.templates)
    assert keys == [(6, socket.inet_aton(CLIENT), 0, socket.inet_aton(VIP), 0)]
    d.hook_in(seg(CLIENT, VIP, 40001, 50000, 1, 0, SYN), 0.0)
    assert len(d.conns.templates) == 1
    conn = d.conns.find_in(6, socket.inet_aton(CLIENT), 40001, socket.inet_aton(VIP), 50000)
    assert conn is not None and conn.control is d.conns.templates[keys[0]]


ADDRPORT = [
    # (data, pattern, skip, ext, mode, family, expected (result, addr, port))
    (b"227 Entering Passive Mode (1,2,3,4,5,6)", b"227 ", b"(", False, 1, 4,
     (1, bytes((1, 2, 3, 4)), 5 * 256 + 6)),
    (b"227 =1,2,3,4,5,6\r\n", b"227 ", b"(", False, 1, 4, (1, bytes((1, 2, 3, 4)), 1286)),
    (b"227 =1,2,3,4,5,6", b"227 ", b"(", False, 1, 4, (-1, None, 0)),  # no terminator
    # A seventh number ends the address as any other character would (i == 5).
    (b"227 (1,2,3,4,5,6,7)", b"227 ", b"(", False, 1, 4, (1, bytes((1, 2, 3, 4)), 1286)),
    (b"22", b"227 ", b"(", False, 1, 4, (-1, None, 0)),  # a partial match
    (b"230 ok", b"227 ", b"(", False, 1, 4, (0, None, 0)),
    (b"port 1,2,3,4,0,21\r\n", b"PORT", b" ", False, 0, 4, (1, bytes((1, 2, 3, 4)), 21)),
    (b"EPRT |1|198.18.0.9|4000|\r\n", b"EPRT", b" ", True, 2, 4,
     (1, socket.inet_aton("198.18.0.9"), 4000)),
    (b"EPRT |2|2001:db8::1|4000|\r\n", b"EPRT", b" ", True, 2, 4, (-1, None, 0)),  # family
    (b"EPRT |1|198.18.0.9|0|\r\n", b"EPRT", b" ", True, 2, 4, (-1, None, 0)),  # !hport
    (b"229 (|||6446|)", b"229 ", b"(", True, 3, 4, (1, b"preset", 6446)),
    (b"229 (|||6446|)", b"229 ", b"(", True, 2, 4, (-1, None, 0)),  # no family: EPSV only
    (b"229 (|||71982|)", b"229 ", b"(", True, 3, 4, (1, b"preset", 71982 - 65536)),  # __u16
]  # fmt: skip


@pytest.mark.parametrize(("data", "pattern", "skip", "ext", "mode", "family", "expected"),
                         ADDRPORT)  # fmt: skip
def test_get_addrport(data: bytes, pattern: bytes, skip: bytes, ext: bool, mode: int,
                      family: int, expected: tuple[int, bytes | None, int]) -> None:  # fmt: skip
    """ip_vs_ftp_get_addrport's results, case by case of its code."""
    found, addr, port, _, _ = get_addrport(data, pattern, skip[0], ext, mode, family, b"preset")
    assert (found, addr if found == 1 else None, port if found == 1 else 0) == expected


def test_seq_arithmetic_wraps() -> None:
    """after() is modulo 2^32: a delta across the wrap moves the number past zero."""
    vseq = seq_update((0, 0, 0), False, 0xFFFFFFF0, 3)
    assert vseq == (0xFFFFFFF0, 3, 0)
    assert fix_seq(vseq, 0xFFFFFFFE) == 1
    assert fix_ack_seq(vseq, 2) == 0xFFFFFFFF
    # Not after the last resized packet: no new deltas (a retransmission).
    assert seq_update(vseq, True, 0xFFFFFFE0, 5) == vseq


def _after_pasv() -> tuple[Director, bytes]:
    d = director()
    established(d)
    reply = b"227 Entering Passive Mode (198,18,0,2,195,80)\r\n"
    pasv(d, reply)
    return d, reply


def test_restart_dump_keeps_the_deltas_and_the_waiting_data_connection() -> None:
    """The restart table dump (director.core.conn_dump, through JSON as the daemon
    writes it) carries cp->in_seq / out_seq and app_data: after a load the real
    server's next packet still gets seq + 1, the client's ack - 1, and the passive
    data entry still waits for its client's port under its control connection."""
    d, reply = _after_pasv()
    dumped = json.loads(json.dumps(conn_dump.dump(d, 2.0)))
    fresh = director()
    assert conn_dump.load(fresh, dumped, 10.0) == (2, 0)
    ctl = fresh.conns.find_in(6, socket.inet_aton(CLIENT), 40000, socket.inet_aton(VIP), 21)
    assert isinstance(ctl, AppConn) and ctl.out_seq == (SSEQ, 1, 0) and ctl.n_control == 1
    after = SSEQ + len(reply)
    more = seg(RS1, CLIENT, 21, 40000, after, CSEQ + 6, data=b"150 x\r\n")
    assert fresh.hook_out(more, 11.0) == (ACCEPT, seg(VIP, CLIENT, 21, 40000, after + 1,
                                                      CSEQ + 6, data=b"150 x\r\n"))  # fmt: skip
    ack = seg(CLIENT, VIP, 40000, 21, CSEQ + 6, after + 8, ACK)
    assert fresh.hook_in(ack, 11.0) == (SEND, seg(CLIENT, RS1, 40000, 21, CSEQ + 6, after + 7,
                                                  ACK, ttl=60))  # fmt: skip
    syn = seg(CLIENT, VIP, 40001, 50000, 7000, 0, SYN)
    assert fresh.hook_in(syn, 11.0) == (SEND, seg(CLIENT, RS1, 40001, 50000, 7000, 0, SYN, ttl=60))


def test_sync_carries_the_seq_option_to_the_backup() -> None:
    """ip_vs_sync_conn sends a connection with IP_VS_CONN_F_OUT_SEQ with its SEQ option
    (IPVS_OPT_SEQ_DATA: in_seq then out_seq, struct ip_vs_seq each); the backup's
    ip_vs_proc_conn takes it, so after a failover the numbers stay moved."""
    d, reply = _after_pasv()
    ctl = d.conns.find_in(6, socket.inet_aton(CLIENT), 40000, socket.inet_aton(VIP), 21)
    assert isinstance(ctl, AppConn)
    entry = sync.pack_conn(ctl)
    assert len(entry) == 36 + 2 + 24  # struct ip_vs_sync_v4 and the option
    assert entry[36:38] == bytes((sync.OPT_SEQ_DATA, 24))
    assert entry[38:62] == struct.pack("!6I", 0, 0, 0, SSEQ, 1, 0)
    assert struct.unpack_from("!I", entry, 4)[0] & sync.F_OUT_SEQ
    decoded = sync.decode(sync.encode([sync.from_conn(ctl)])[0])
    backup = director()
    for conn in decoded.conns:
        assert sync.proc_conn(backup, conn, 5.0) == "new"
    got = backup.conns.find_in(6, socket.inet_aton(CLIENT), 40000, socket.inet_aton(VIP), 21)
    assert isinstance(got, AppConn) and got.out_seq == (SSEQ, 1, 0)
    after = SSEQ + len(reply)
    more = seg(RS1, CLIENT, 21, 40000, after, CSEQ + 6, data=b"150 x\r\n")
    assert backup.hook_out(more, 6.0) == (ACCEPT, seg(VIP, CLIENT, 21, 40000, after + 1,
                                                      CSEQ + 6, data=b"150 x\r\n"))  # fmt: skip


def seg6(src: str, dst: str, sport: int, dport: int, seq: int, ack: int,
         flags: int = ACK | PSH, data: bytes = b"") -> bytearray:  # fmt: skip
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, data=data)
    ip = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src),
                      dst=socket.inet_pton(socket.AF_INET6, dst), nxt=6, hlim=61, data=tcp,
                      plen=len(bytes(tcp)))  # fmt: skip
    return bytearray(bytes(ip))


def test_ipv6_epsv_and_eprt() -> None:
    """IPv6 (ip_vs_ftp_in): PASV is IPv4's only ("cp->af == AF_INET &&"), EPSV and
    "EPSV 2" set passive mode, the 229 reply makes the entry to VIP6:port; EPRT
    |2|addr|port| makes the active entry from port 20, |1| is another family's,
    refused."""
    from tests.core.packets6 import CLIENT6, RS6_1, VIP6

    def a6(text: str) -> bytes:
        return socket.inet_pton(socket.AF_INET6, text)

    d = Director()
    d.configure(Config(services=(ServiceConf("tcp", VIP6, 21, scheduler="rr",
                                             dests=(DestConf(RS6_1, 21, "masq"),)),)))  # fmt: skip
    app.configure(d, "ftp", (21,))
    assert d.hook_in(seg6(CLIENT6, VIP6, 40000, 21, CSEQ - 1, 0, SYN), 0.0)[0] == SEND
    d.hook_out(seg6(RS6_1, CLIENT6, 21, 40000, SSEQ - 1, CSEQ, SYN | ACK), 0.0)
    d.hook_in(seg6(CLIENT6, VIP6, 40000, 21, CSEQ, SSEQ), 0.0)
    conn = d.conns.find_in(6, a6(CLIENT6), 40000, a6(VIP6), 21)
    assert isinstance(conn, AppConn) and conn.state == ESTABLISHED
    d.hook_in(seg6(CLIENT6, VIP6, 40000, 21, CSEQ, SSEQ, data=b"PASV\r\n"), 1.0)
    assert conn.app_data == 0  # not for IPv6
    d.hook_in(seg6(CLIENT6, VIP6, 40000, 21, CSEQ + 6, SSEQ, data=b"EPSV 2\r\n"), 1.0)
    assert conn.app_data == FTP_EPSV
    reply = b"229 Entering Extended Passive Mode (|||50001|)\r\n"
    out = d.hook_out(seg6(RS6_1, CLIENT6, 21, 40000, SSEQ, CSEQ + 14, data=reply), 1.0)
    assert out == (ACCEPT, seg6(VIP6, CLIENT6, 21, 40000, SSEQ, CSEQ + 14, data=reply))
    assert d.conns.find_in(6, a6(CLIENT6), 0, a6(VIP6), 50001) is not None
    bad = b"EPRT |1|203.0.113.10|40001|\r\n"
    d.hook_in(seg6(CLIENT6, VIP6, 40000, 21, CSEQ + 14, SSEQ + len(reply), data=bad), 2.0)
    assert d.apps.counters["ftp_partial"] == 1
    good = f"EPRT |2|{CLIENT6}|40001|\r\n".encode()
    cmd = seg6(CLIENT6, VIP6, 40000, 21, CSEQ + 14 + len(bad), SSEQ + len(reply), data=good)
    assert d.hook_in(cmd, 2.0)[0] == SEND
    data = d.conns.find_in(6, a6(CLIENT6), 40001, a6(VIP6), 20)
    assert data is not None and data.dport == 20 and data.control is conn
    syn = seg6(RS6_1, CLIENT6, 20, 40001, 3000, 0, SYN)
    assert d.hook_out(syn, 2.0) == (ACCEPT, seg6(VIP6, CLIENT6, 20, 40001, 3000, 0, SYN))


def _kernel_scan(data: bytes, v6: bool) -> int | None:
    """ip_vs_ftp_in's loop as the kernel writes it, byte by byte."""
    at = 0
    while at <= len(data) - 6:
        if not v6 and data[at : at + 6].lower() == b"pasv\r\n":
            return 1
        if data[at : at + 4].lower() == b"epsv" and data[at + 4] in b" \r":
            if data[at + 4] == 0x20:
                if at > len(data) - 7 or data[at + 6] != 0x0D:
                    return 0
                if data[at + 5] != (0x32 if v6 else 0x31):
                    return 0
            return 3
        at += 1
    return None


@given(
    st.lists(st.sampled_from([b"PASV\r\n", b"pasv", b"EPSV", b"epsv ", b"EPSV\r", b"EPSV 1\r",
                              b"EPSV 2\r", b"\r\n", b"x", b" ", b"1", b"2"]), max_size=8),
    st.booleans(),
)  # fmt: skip
def test_the_command_scan_finds_what_the_kernels_loop_finds(parts: list[bytes], v6: bool) -> None:
    """_passive_command (bytes.find) against the loop of ip_vs_ftp_in it replaces."""
    data = b"".join(parts)
    assert _passive_command(data, v6) == _kernel_scan(data, v6)
