"""The connection sync protocol (director.core.sync) against the kernel's wire.

The layouts below are written from net/netfilter/ipvs/ip_vs_sync.c, field by field
with their byte offsets, independently of the module's own struct formats:

struct ip_vs_sync_mesg (version 1 header, 8 bytes)::

    0 reserved u8 (0)   1 syncid u8   2 size be16   4 nr_conns u8   5 version s8 (1)
    6 spare u16 (0)

struct ip_vs_sync_mesg_v0 (4 bytes)::

    0 nr_conns u8   1 syncid u8   2 size be16

struct ip_vs_sync_v4 (36 bytes; ip_vs_sync_v6 the same with 16-byte addresses, 72)::

    0 type u8   1 protocol u8   2 ver_size be16 (version << 12 | size)   4 flags be32
    8 state be16   10 cport be16   12 vport be16   14 dport be16   16 fwmark be32
    20 timeout be32 (seconds)   24 caddr   28 vaddr   32 daddr

struct ip_vs_sync_conn_v0 (24 bytes, 48 with struct ip_vs_sync_conn_options)::

    0 reserved u8   1 protocol u8   2 cport be16   4 vport be16   6 dport be16
    8 caddr   12 vaddr   16 daddr   20 flags be16   22 state be16

An option follows an entry's fixed part as type u8, length u8, data (IPVS_OPT_SEQ_DATA
1: two struct ip_vs_seq of three be32 each; IPVS_OPT_PE_DATA 2; IPVS_OPT_PE_NAME 3;
IPVS_OPT_F_PARAM 0x40 marks an option that may be ignored), and each entry is padded
to 32 bits.  Flags and their masks are include/uapi/linux/ip_vs.h's.
"""

from __future__ import annotations

import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from director.core import proto_tcp, sync
from director.core.engine import Director
from director.core.sync import SyncConn, decode, encode
from director.core.sysctl import Sysctls
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import ACK, CLIENT, FIN, RS1, RS2, SYN, VIP, tcp, udp

# include/uapi/linux/ip_vs.h
IP_VS_CONN_F_MASQ = 0x0000
IP_VS_CONN_F_DROUTE = 0x0003
IP_VS_CONN_F_SYNC = 0x0020
IP_VS_CONN_F_HASHED = 0x0040
IP_VS_CONN_F_NOOUTPUT = 0x0080
IP_VS_CONN_F_INACTIVE = 0x0100
IP_VS_CONN_F_OUT_SEQ = 0x0200
IP_VS_CONN_F_TEMPLATE = 0x1000
IP_VS_CONN_F_NFCT = 1 << 16
IP_VS_TCP_S_ESTABLISHED = 1
IP_VS_TCP_S_FIN_WAIT = 4
IP_VS_TCP_S_CLOSE_WAIT = 7

C, V, D = (socket.inet_aton(a) for a in (CLIENT, VIP, RS1))


def be(value: int, size: int) -> bytes:
    return value.to_bytes(size, "big")


def header_v1(syncid: int, size: int, nr_conns: int) -> bytes:
    return bytes((0, syncid)) + be(size, 2) + bytes((nr_conns, 1)) + be(0, 2)


def entry_v4(
    protocol: int = 6, flags: int = IP_VS_CONN_F_MASQ, state: int = IP_VS_TCP_S_ESTABLISHED,
    cport: int = 40000, vport: int = 80, dport: int = 8080, fwmark: int = 0, timeout: int = 900,
    options: bytes = b"", size: int | None = None, kind: int = 0, version: int = 0,
) -> bytes:  # fmt: skip
    """struct ip_vs_sync_v4 and its options, unpadded."""
    size = 36 + len(options) if size is None else size
    return (
        bytes((kind, protocol)) + be(version << 12 | size, 2) + be(flags, 4) + be(state, 2)
        + be(cport, 2) + be(vport, 2) + be(dport, 2) + be(fwmark, 4) + be(timeout, 4)
        + C + V + D + options
    )  # fmt: skip


def pad(entry: bytes) -> bytes:
    return entry + bytes(-len(entry) % 4)


def message(*entries: bytes, syncid: int = 0, count: int | None = None) -> bytes:
    body = b"".join(pad(e) for e in entries[:-1]) + (entries[-1] if entries else b"")
    n = len(entries) if count is None else count
    return header_v1(syncid, 8 + len(body), n) + body


def test_a_kernel_v1_ipv4_entry_decodes_field_by_field():
    """ip_vs_proc_sync_conn: flags masked by IP_VS_CONN_F_BACKUP_MASK (NFCT and HASHED
    gone), IP_VS_CONN_F_SYNC added; timeout in seconds; fwmark as sent."""
    flags = IP_VS_CONN_F_DROUTE | IP_VS_CONN_F_NOOUTPUT | IP_VS_CONN_F_NFCT | IP_VS_CONN_F_HASHED
    got = decode(message(entry_v4(flags=flags, fwmark=7, timeout=123), syncid=5), syncid=5)
    assert not got.errors
    assert got.syncid == 5 and got.version == 1
    (conn,) = got.conns
    assert conn == SyncConn(
        6, IP_VS_CONN_F_DROUTE | IP_VS_CONN_F_NOOUTPUT | IP_VS_CONN_F_SYNC,
        IP_VS_TCP_S_ESTABLISHED, C, 40000, V, 80, D, 8080, 7, 123,
    )  # fmt: skip


def test_entries_are_padded_to_32_bits_and_options_read():
    """A SEQ option (2 + 24 bytes) makes a 62-byte entry, padded to 64 before the next;
    an ignorable unknown option (IPVS_OPT_F_PARAM) is stepped over."""
    seq = bytes((1, 24)) + b"".join(be(x, 4) for x in (1, 2, 3, 4, 5, 6))
    first = entry_v4(flags=IP_VS_CONN_F_OUT_SEQ, options=seq)
    assert len(first) == 62
    second = entry_v4(cport=40001, options=bytes((0x40 | 9, 2, 0xAA, 0xBB)))
    got = decode(message(first, second))
    assert not got.errors
    a, b = got.conns
    assert (a.in_seq, a.out_seq) == ((1, 2, 3), (4, 5, 6))
    assert b.cport == 40001


def test_an_ipv6_entry_is_72_bytes():
    """struct ip_vs_sync_v6: type STYPE_F_INET6, 16-byte addresses."""
    c6, v6, d6 = (socket.inet_pton(socket.AF_INET6, f"2001:db8::{i}") for i in (1, 2, 3))
    entry = (
        bytes((1, 17)) + be(72, 2) + be(0, 4) + be(0, 2) + be(5353, 2) + be(53, 2) + be(53, 2)
        + be(0, 4) + be(300, 4) + c6 + v6 + d6
    )  # fmt: skip
    assert len(entry) == 72
    (conn,) = decode(message(entry)).conns
    assert (conn.af, conn.caddr, conn.vaddr, conn.daddr) == (6, c6, v6, d6)
    assert sync.encode_entry(conn)[:4] == bytes((1, 17)) + be(72, 2)


def test_a_v0_message_decodes():
    """ip_vs_process_message_v0: 4-byte header, 24-byte entries (48 with SEQ); no
    timeout (0: the backup takes the protocol's)."""
    e1 = (
        bytes((0, 6)) + be(40000, 2) + be(80, 2) + be(8080, 2) + C + V + D
        + be(IP_VS_CONN_F_INACTIVE, 2) + be(3, 2)
    )  # fmt: skip
    e2 = (
        bytes((0, 17)) + be(5000, 2) + be(53, 2) + be(53, 2) + C + V + D
        + be(IP_VS_CONN_F_OUT_SEQ, 2) + be(0, 2) + bytes(24)
    )  # fmt: skip
    body = e1 + e2
    got = decode(bytes((2, 9)) + be(4 + len(body), 2) + body)
    assert not got.errors and got.version == 0 and got.syncid == 9
    a, b = got.conns
    assert (a.protocol, a.cport, a.state, a.timeout) == (6, 40000, 3, 0)
    assert a.flags == IP_VS_CONN_F_INACTIVE | IP_VS_CONN_F_SYNC
    assert (b.protocol, b.in_seq) == (17, (0, 0, 0))


def layout_v4(buf: bytes, p: int) -> dict[str, object]:
    """Read an entry by the offsets of struct ip_vs_sync_v4 (module docstring)."""

    def u(o: int, n: int) -> int:
        return int.from_bytes(buf[p + o : p + o + n], "big")

    return {
        "type": buf[p], "protocol": buf[p + 1], "version": u(2, 2) >> 12, "size": u(2, 2) & 0xFFF,
        "flags": u(4, 4), "state": u(8, 2), "cport": u(10, 2), "vport": u(12, 2),
        "dport": u(14, 2), "fwmark": u(16, 4), "timeout": u(20, 4),
        "caddr": buf[p + 24 : p + 28], "vaddr": buf[p + 28 : p + 32], "daddr": buf[p + 32 : p + 36],
    }  # fmt: skip


def test_our_datagram_reads_with_the_kernels_layout():
    """A message our encoder made, read by the kernel's offsets: header version 1,
    size the datagram's length, entries 36 bytes with flags sent without HASHED."""
    conns = [
        SyncConn(6, IP_VS_CONN_F_INACTIVE | IP_VS_CONN_F_HASHED, 3, C, 40000 + i, V, 80, D,
                 8080, 0, 60)
        for i in range(3)
    ]  # fmt: skip
    (data,) = encode(conns, syncid=42)
    assert data[0] == 0 and data[1] == 42 and data[4] == 3 and data[5] == 1 and data[6:8] == b"\0\0"
    assert int.from_bytes(data[2:4], "big") == len(data) == 8 + 3 * 36
    for i in range(3):
        fields = layout_v4(data, 8 + 36 * i)
        assert fields == {
            "type": 0, "protocol": 6, "version": 0, "size": 36, "flags": IP_VS_CONN_F_INACTIVE,
            "state": 3, "cport": 40000 + i, "vport": 80, "dport": 8080, "fwmark": 0,
            "timeout": 60, "caddr": C, "vaddr": V, "daddr": D,
        }  # fmt: skip


def test_messages_are_cut_at_sync_maxlen():
    """ip_vs_sync_conn: a buffer is sent when the next entry (and its padding) would pass
    its end; the buffer is max(len + header, sync_maxlen) long."""
    conns = [SyncConn(6, 0, 1, C, 1000 + i, V, 80, D, 80) for i in range(100)]
    messages = encode(conns, maxlen=8 + 36 * 10)
    assert [m[4] for m in messages] == [10] * 10
    assert all(len(m) == 8 + 360 for m in messages)
    assert [c.cport for m in messages for c in decode(m).conns] == [1000 + i for i in range(100)]


# -- malformed datagrams: every refusal of ip_vs_process_message, by reason ---------


def reasons(buf: bytes, syncid: int = 0) -> dict[str, int]:
    return dict(decode(buf, syncid).errors)


def test_header_and_size_refusals():
    assert reasons(b"\0\0\0") == {"header_short": 1}
    good = message(entry_v4())
    assert reasons(good[:-1]) == {"size_mismatch": 1}
    assert reasons(good + b"\0") == {"size_mismatch": 1}
    assert reasons(message(entry_v4(), syncid=3), syncid=4) == {"syncid": 1}
    assert reasons(message(entry_v4(), syncid=3), syncid=0) == {}  # 0 takes every syncid


def test_count_and_entry_size_lies():
    one = entry_v4()
    assert reasons(message(one, count=2)) == {"entry_short": 1}
    assert reasons(message(entry_v4(size=200))) == {"entry_size": 1}
    assert reasons(message(entry_v4(size=20))) == {"entry_fixed": 1}
    assert reasons(message(entry_v4(version=1))) == {"entry_version": 1}
    assert reasons(message(entry_v4(kind=2))) == {"bad_type": 1}


def test_option_refusals_drop_the_rest_of_the_datagram():
    """ip_vs_proc_sync_conn's negative returns: the rest of the datagram is dropped."""
    ok = entry_v4(cport=1)
    cases = {
        "option_short": bytes((1,)),
        "option_length": bytes((1, 0, 0, 0)),
        "option_seq": bytes((1, 4, 0, 0, 0, 0)),
        "option_pe_name": bytes((3, 17)) + bytes(17),
    }
    for reason, option in cases.items():
        got = decode(message(entry_v4(options=option), ok))
        assert dict(got.errors) == {reason: 1}, reason
        assert got.conns == []


def test_entry_refusals_skip_that_entry_only():
    """ip_vs_proc_sync_conn's positive returns (unknown mandatory option, protocol,
    state, PE): the entry is skipped, the next one is taken."""
    ok = entry_v4(cport=1)
    cases = {
        "unknown_option": entry_v4(options=bytes((9, 2, 0, 0))),
        "protocol": entry_v4(protocol=132),
        "state": entry_v4(state=11),  # IP_VS_TCP_S_LAST
        "pe": entry_v4(options=bytes((2, 3, 1, 2, 3, 3, 3)) + b"sip"),
    }
    for reason, bad in cases.items():
        got = decode(message(bad, ok))
        assert dict(got.errors) == {reason: 1}, reason
        assert [c.cport for c in got.conns] == [1], reason


def test_v0_refusals():
    e = bytes((0, 6)) + be(1, 2) + be(80, 2) + be(80, 2) + C + V + D + be(0, 2) + be(1, 2)
    assert reasons(bytes((2, 0)) + be(4 + 24, 2) + e) == {"v0_short": 1}
    seq = bytes((0, 6)) + be(1, 2) + be(80, 2) + be(80, 2) + C + V + D + be(0x200, 2) + be(1, 2)
    assert reasons(bytes((1, 0)) + be(4 + 24, 2) + seq) == {"v0_options_short": 1}
    bad_state = e[:-2] + be(20, 2)
    got = decode(bytes((2, 0)) + be(4 + 48, 2) + bad_state + e)
    assert dict(got.errors) == {"state": 1} and len(got.conns) == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 255))
def test_any_bytes_decode_without_raising(data: bytes, syncid: int):
    got = decode(data, syncid)
    assert set(got.errors) <= set(sync.REASONS) | set(sync.IGNORED)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_body_behind_a_truthful_header_decodes_without_raising(body: bytes):
    for count in (1, 5, 255):
        decode(header_v1(0, 8 + len(body), count) + body)
        decode(bytes((count, 0)) + be(4 + len(body), 2) + body)


seqs = st.none() | st.tuples(*(st.integers(0, 2**32 - 1),) * 3)
addr4 = st.binary(min_size=4, max_size=4)


@st.composite
def sync_conns(draw: st.DrawFn) -> SyncConn:
    template = draw(st.booleans())
    protocol = draw(st.sampled_from((6, 17)))
    states = 2 if template else sync.NUM_STATES[protocol]
    seq = draw(st.booleans())
    flags = draw(st.integers(0, 0xFFFF)) & sync.F_BACKUP_MASK & ~(sync.F_SEQ_MASK)
    flags |= (sync.F_TEMPLATE if template else 0) | (sync.F_OUT_SEQ if seq else 0) | sync.F_SYNC
    return SyncConn(
        protocol, flags, draw(st.integers(0, states - 1)), draw(addr4), draw(st.integers(0, 65535)),
        draw(addr4), draw(st.integers(0, 65535)), draw(addr4), draw(st.integers(0, 65535)),
        draw(st.integers(0, 2**32 - 1)), draw(st.integers(1, 2**32 - 1)),
        draw(seqs) or (0, 0, 0) if seq else None, draw(seqs) or (0, 0, 0) if seq else None,
    )  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(st.lists(sync_conns(), max_size=60), st.integers(1, 255), st.integers(100, 1472))
def test_encode_decode_round_trip(conns: list[SyncConn], syncid: int, maxlen: int):
    out = []
    for data in encode(conns, syncid=syncid, maxlen=maxlen):
        assert len(data) <= max(maxlen, 8 + 62)
        got = decode(data, syncid)
        assert not got.errors
        out += got.conns
    assert out == conns


@settings(max_examples=100, deadline=None)
@given(st.lists(sync_conns(), max_size=30))
def test_v0_round_trip(conns: list[SyncConn]):
    """Version 0 carries 16 bits of flags and no fwmark or timeout."""
    out = [c for data in encode(conns, version=0) for c in decode(data).conns]
    assert out == [
        SyncConn(c.protocol, c.flags & 0xFFFF, c.state, c.caddr, c.cport, c.vaddr, c.vport,
                 c.daddr, c.dport, 0, 0, c.in_seq, c.out_seq)
        for c in conns
    ]  # fmt: skip


# -- the master: what is sent when (ip_vs_sync_conn_needed, sb_queue_tail) -----------


def director(method: str = "masq", persistent: int | None = None) -> Director:
    d = Director()
    d.configure(
        Config(
            services=(
                ServiceConf("tcp", VIP, 80, scheduler="rr", persistent=persistent,
                            dests=(DestConf(RS1, 8080, method), DestConf(RS2, 8080, method))),
                ServiceConf("udp", VIP, 53, scheduler="rr", dests=(DestConf(RS1, 53, method),)),
            )
        )
    )  # fmt: skip
    return d


def master(d: Director, **sysctls: str) -> sync.Master:
    if sysctls:
        d.sysctls = d.sysctls.updated(sysctls)
    m = sync.Master(0, 1472, d.sysctls)
    d.set_sync(sync.IP_VS_STATE_MASTER, m)
    return m


def sent(m: sync.Master, now: float) -> list[SyncConn]:
    return [c for data in m.take(now) for c in decode(data).conns]


def test_a_tcp_connection_is_synced_at_its_3rd_packet_then_every_50th():
    """sync_threshold 3 50: ESTABLISHED at the 2nd packet is a state change, but not
    forced (ip_vs_sync_conn_needed goes on to the threshold); the 3rd packet syncs,
    then the 53rd, 103rd."""
    d = director()
    m = master(d)
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0)
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK), 0.0)
    assert m.entries == 0
    synced_at = []
    for n in range(3, 110):
        d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK), 0.0)
        if m.entries > len(synced_at):
            synced_at.append(n)
    assert synced_at == [3, 53, 103]


def test_a_state_change_other_than_established_syncs_at_once():
    d = director()
    m = master(d)
    for flags in (SYN, ACK, ACK):
        d.hook_in(tcp(CLIENT, VIP, 40000, 80, flags), 0.0)
    assert m.entries == 1
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, FIN | ACK), 0.0)
    assert m.entries == 2
    (_, fin) = [c for data in m.take(3.0) for c in decode(data).conns]
    assert fin.state == IP_VS_TCP_S_CLOSE_WAIT  # the client's FIN, NAT: tcp_states' sCW


def test_the_buffer_goes_out_after_2_seconds_and_a_full_one_20_ms_after_queueing():
    """IPVS_SYNC_FLUSH_TIME and IPVS_SYNC_SEND_DELAY."""
    d = director()
    m = master(d)
    for flags in (SYN, ACK, ACK):
        d.hook_in(tcp(CLIENT, VIP, 40000, 80, flags), 10.0)
    assert m.take(11.9) == []
    assert m.next_wakeup() == 12.0
    (data,) = m.take(12.0)
    fields = layout_v4(data, 8)
    assert (fields["cport"], fields["vport"], fields["dport"], fields["timeout"]) == (
        40000, 80, 8080, 900)  # fmt: skip
    assert fields["flags"] == IP_VS_CONN_F_MASQ  # active, not synced itself
    m.maxlen = 8 + 36 * 2  # two entries a message
    for port in range(41000, 41003):
        for flags in (SYN, ACK, ACK):
            d.hook_in(tcp(CLIENT, VIP, port, 80, flags), 20.0)
    assert len(m.queue) == 1 and m.take(20.01) == []
    assert [c.cport for c in sent(m, 20.02)] == [41000, 41001]


def test_templates_are_synced_with_their_connections():
    """The control chain: a persistent connection's template follows it (its in_pkts
    counted by sync); with sync_persist_mode only the template is synced."""
    d = director(persistent=300)
    m = master(d)
    for flags in (SYN, ACK, ACK):
        d.hook_in(tcp(CLIENT, VIP, 40000, 80, flags), 0.0)
    got = sent(m, 5.0)
    templates = [c for c in got if c.flags & IP_VS_CONN_F_TEMPLATE]
    conns = [c for c in got if not c.flags & IP_VS_CONN_F_TEMPLATE]
    assert len(conns) == 1 and len(templates) == 3  # one per packet: no threshold for them
    assert (templates[0].cport, templates[0].timeout, templates[0].vport) == (0, 300, 80)
    d2 = director(persistent=300)
    m2 = master(d2, sync_persist_mode="1")
    for flags in (SYN, ACK, ACK):
        d2.hook_in(tcp(CLIENT, VIP, 40000, 80, flags), 0.0)
    assert all(c.flags & IP_VS_CONN_F_TEMPLATE for c in sent(m2, 5.0))


def test_udp_is_synced_at_the_threshold_only():
    d = director()
    m = master(d)
    for _ in range(60):
        d.hook_in(udp(CLIENT, VIP, 5000, 53), 0.0)
    assert m.entries == 2  # the 3rd and the 53rd


def test_sync_refresh_period_syncs_when_the_timeout_moved():
    """sync_refresh_period 10 with sync_period 0: a connection is synced again once
    its end moved by at least min(refresh, max(timeout / 2, 10 s))."""
    d = director()
    m = master(d, sync_threshold="3", sync_period="0", sync_refresh_period="10")
    for flags in (SYN, ACK, ACK):
        d.hook_in(tcp(CLIENT, VIP, 40000, 80, flags), 0.0)
    assert m.entries == 1
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK), 5.0)
    assert m.entries == 1
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK), 11.0)
    assert m.entries == 2


def test_the_queue_holds_sync_qlen_max_messages():
    d = director()
    m = master(d, sync_qlen_max="1")
    m.maxlen = 8 + 36
    for port in range(41000, 41004):
        for flags in (SYN, ACK, ACK):
            d.hook_in(tcp(CLIENT, VIP, port, 80, flags), 0.0)
    assert len(m.queue) == 1 and m.dropped == 2


def test_version_0_is_sent_with_sync_version_0():
    d = director()
    m = master(d, sync_version="0")
    for flags in (SYN, ACK, ACK):
        d.hook_in(tcp(CLIENT, VIP, 40000, 80, flags), 0.0)
    (data,) = m.take(2.0)
    assert data[0] == 1 and len(data) == 4 + 24  # nr_conns first: the v0 header
    (conn,) = decode(data).conns
    assert conn.cport == 40000


# -- the backup: ip_vs_proc_conn -------------------------------------------------------


def entry(**kw: object) -> SyncConn:
    base: dict[str, object] = dict(
        protocol=6, flags=IP_VS_CONN_F_SYNC, state=IP_VS_TCP_S_ESTABLISHED, caddr=C, cport=40000,
        vaddr=V, vport=80, daddr=D, dport=8080, fwmark=0, timeout=900,
    )  # fmt: skip
    base.update(kw)
    return SyncConn(**base)  # type: ignore[arg-type]


def test_the_backup_binds_an_entry_to_its_own_real_server():
    d = director()
    assert sync.proc_conn(d, entry(), 100.0) == "new"
    conn = d.conns.find_in(6, C, 40000, V, 80)
    assert conn is not None and sync.is_synced(conn)
    assert conn.dest.addr == D and conn.dest.port == 8080
    assert (conn.state, conn.timeout, conn.expires) == (IP_VS_TCP_S_ESTABLISHED, 900, 1000.0)
    assert (conn.dest.activeconns, conn.dest.inactconns) == (1, 0)
    assert conn.in_pkts == Sysctls().sync_threshold


def test_the_backup_refreshes_and_moves_counters_with_the_state():
    d = director()
    sync.proc_conn(d, entry(), 0.0)
    assert sync.proc_conn(d, entry(state=IP_VS_TCP_S_FIN_WAIT, flags=IP_VS_CONN_F_INACTIVE,
                                   timeout=120), 50.0) == "update"  # fmt: skip
    conn = d.conns.find_in(6, C, 40000, V, 80)
    assert conn is not None and (conn.state, conn.expires) == (IP_VS_TCP_S_FIN_WAIT, 170.0)
    assert (conn.dest.activeconns, conn.dest.inactconns) == (0, 1)
    assert d.expire(169.0) == 0 and d.expire(170.0) == 1


def test_a_new_real_server_replaces_the_entry_and_a_late_end_is_ignored():
    """ip_vs_proc_conn: another daddr:dport for the client expires the old entry, unless
    the message is INACTIVE (the end of the entry already replaced)."""
    d = director()
    sync.proc_conn(d, entry(), 0.0)
    rs2 = socket.inet_aton(RS2)
    assert sync.proc_conn(d, entry(daddr=rs2), 1.0) == "replaced"
    assert sync.proc_conn(d, entry(flags=IP_VS_CONN_F_INACTIVE, state=6), 2.0) == "stale"
    conn = d.conns.find_in(6, C, 40000, V, 80)
    assert conn is not None and conn.dest.addr == rs2 and len(d.conns) == 1


def test_no_service_or_real_server_here_is_left_out():
    d = director()
    assert sync.proc_conn(d, entry(vport=81), 0.0) == "no_dest"
    assert sync.proc_conn(d, entry(daddr=socket.inet_aton("198.18.0.9")), 0.0) == "no_dest"
    assert len(d.conns) == 0


def test_a_v0_entry_takes_the_protocols_timeout_and_a_template_180_s():
    d = director(persistent=300)
    sync.proc_conn(d, entry(timeout=0), 0.0)
    conn = d.conns.find_in(6, C, 40000, V, 80)
    assert conn is not None and conn.timeout == proto_tcp.DEFAULT_TIMEOUTS[1]
    sync.proc_conn(d, entry(flags=IP_VS_CONN_F_TEMPLATE, cport=0, state=0, timeout=0), 0.0)
    (template,) = d.conns.templates.values()
    assert template.timeout == 180 and template.dest.addr == D


def test_backup_packets_continue_on_synced_entries():
    """When the VIP moves to the backup: a client's next packet finds the synced entry
    (not a SYN: no scheduling) and goes to the master's real server."""
    d = director()
    sync.proc_conn(d, entry(daddr=socket.inet_aton(RS2)), 0.0)
    verdict = d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK), 1.0)
    assert verdict[0] != 0 or verdict[1] != "not_syn"
    assert d.passes.get("not_syn", 0) == 0
    (conn,) = d.conns
    assert conn.dest.addr == socket.inet_aton(RS2) and conn.in_pkts == 4


def test_backup_only_holds_the_director_back_while_the_backup_runs():
    """ip_vs_in_hook returns NF_ACCEPT with sysctl_backup_only; ip_vs_out_hook has no
    such test, so a reply of a connection the director holds is still handled."""
    d = director()
    d.sysctls = d.sysctls.updated({"backup_only": "1"})
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0)
    assert len(d.conns) == 1  # no backup running: balancing as ever
    d.set_sync(sync.IP_VS_STATE_BACKUP, None)
    d.hook_in(tcp(CLIENT, VIP, 40001, 80, SYN), 0.0)
    assert len(d.conns) == 1 and d.passes["backup_only"] == 1
    (conn,) = d.conns
    reply = tcp(socket.inet_ntoa(conn.daddr), CLIENT, conn.dport, 40000, SYN | ACK)
    verdict = d.hook_out(reply, 0.1)
    assert verdict[1] is not None and verdict[1][12:16] == socket.inet_aton(VIP)  # rewritten
    assert d.passes["backup_only"] == 1


def test_sync_threshold_must_be_below_sync_period():
    """proc_do_sync_threshold refuses val[0] >= val[1] unless val[1] is 0."""
    import pytest

    with pytest.raises(ValueError, match="sync_threshold"):
        Sysctls().updated({"sync_threshold": "50"})
    assert Sysctls().updated({"sync_threshold": "50", "sync_period": "0"}).sync_threshold == 50


def test_the_packet_paths_entry_is_encode_entry_of_from_conn():
    d = director(persistent=300)
    for flags in (SYN, ACK, ACK):
        d.hook_in(tcp(CLIENT, VIP, 40000, 80, flags), 0.0)
    for conn in d.conns.all():
        assert sync.pack_conn(conn) == sync.encode_entry(sync.from_conn(conn))
