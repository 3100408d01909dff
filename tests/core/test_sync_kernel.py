"""A sync datagram the kernel itself sent, read by director's backup.

Captured in ../shared/ipvs-vm (Debian 12, kernel 6.1.0-57, ipvsadm 1.31): a director
namespace with `ipvsadm -A -t 203.0.113.5:80 -s rr`, `-a ... -r 198.18.0.2:80 -m`,
`-A -t 203.0.113.5:81 -s rr -p 300`, `-a ... -r 198.18.0.2:81 -m` and
`ipvsadm --start-daemon master --mcast-interface sync0 --syncid 7`; the client
203.0.113.10 fetched a page from port 80 (local port 40000), then from port 81 (local
port 40001); a host of the sync LAN joined 224.0.0.81:8848 and kept what came: one
datagram from 198.19.0.1 with nine entries.

What it must say comes from that scenario and from the kernel's layout
(include/net/ip_vs.h, net/netfilter/ipvs/ip_vs_sync.c): the header (reserved 0,
syncid, size, nr_conns, version 1, spare), then struct ip_vs_sync_v4 entries (type,
protocol, ver_size, flags, state, cport, vport, dport, fwmark, timeout, caddr, vaddr,
daddr), read here field by field with struct, independently of director's decoder.
"""

from __future__ import annotations

import socket
import struct

from director.core import proto_tcp, sync
from director.core.engine import Director
from director.ctl.ipvsadm import load_rules

DATAGRAM = bytes.fromhex(
    "0007014c09010000000600240000000000019c40005000500000000000000384cb00710acb007105c6120002000600240000010000059c40005000500000000000000078cb00710acb007105c612000200060024000011000000000000510051000000000000012ccb00710acb007105c612000200060024000011000001000000510051000000000000012ccb00710acb007105c6120002000600240000000000019c41005100510000000000000384cb00710acb007105c612000200060024000011000001000000510051000000000000012ccb00710acb007105c612000200060024000011000001000000510051000000000000012ccb00710acb007105c6120002000600240000010000059c41005100510000000000000078cb00710acb007105c612000200060024000011000001000000510051000000000000012ccb00710acb007105c6120002"
)
IP_VS_CONN_F_SYNC, IP_VS_CONN_F_INACTIVE, IP_VS_CONN_F_TEMPLATE = 0x20, 0x100, 0x1000
IP_VS_TCP_S_ESTABLISHED, IP_VS_TCP_S_TIME_WAIT = 1, 5
CLIENT, VIP, RS = (socket.inet_aton(a) for a in ("203.0.113.10", "203.0.113.5", "198.18.0.2"))


def kernel_layout(buf: bytes) -> tuple[tuple[int, ...], list[tuple[object, ...]]]:
    """The header and the entries by the kernel's struct layout (all IPv4, 36 bytes)."""
    header = struct.unpack_from("!BBHBBH", buf, 0)
    entries = [struct.unpack_from("!BBHIHHHHII4s4s4s", buf, 8 + 36 * i) for i in range(header[3])]
    return header, entries


def test_the_kernels_datagram_reads_as_its_layout_says() -> None:
    header, entries = kernel_layout(DATAGRAM)
    assert header == (0, 7, len(DATAGRAM), 9, 1, 0)  # syncid 7, 9 entries, version 1
    got = sync.decode(DATAGRAM, syncid=7)
    assert (got.syncid, got.version, dict(got.errors)) == (7, 1, {})
    assert len(got.conns) == 9
    for conn, (_type, proto, _size, flags, state, cport, vport, dport, fwmark, timeout,
               caddr, vaddr, daddr) in zip(got.conns, entries, strict=True):  # fmt: skip
        assert (conn.protocol, conn.state, conn.cport, conn.vport, conn.dport) == (
            proto, state, cport, vport, dport)  # fmt: skip
        assert (conn.fwmark, conn.timeout, conn.caddr, conn.vaddr, conn.daddr) == (
            fwmark, timeout, caddr, vaddr, daddr)  # fmt: skip
        assert conn.flags == flags | IP_VS_CONN_F_SYNC  # ip_vs_proc_sync_conn adds it


def test_the_scenario_is_in_it() -> None:
    """The port 80 connection, established (900 s: IPVS's tcp timeout) then in
    TIME_WAIT (120 s) and inactive; the port 81 one the same, and its persistence
    template (client port 0, 300 s)."""
    seen = {(c.vport, c.cport, c.state, c.timeout, c.flags & (IP_VS_CONN_F_INACTIVE
             | IP_VS_CONN_F_TEMPLATE)) for c in sync.decode(DATAGRAM, syncid=7).conns}  # fmt: skip
    assert (80, 40000, IP_VS_TCP_S_ESTABLISHED, 900, 0) in seen
    assert (80, 40000, IP_VS_TCP_S_TIME_WAIT, 120, IP_VS_CONN_F_INACTIVE) in seen
    assert (81, 40001, IP_VS_TCP_S_ESTABLISHED, 900, 0) in seen
    assert (81, 40001, IP_VS_TCP_S_TIME_WAIT, 120, IP_VS_CONN_F_INACTIVE) in seen
    assert any(vport == 81 and cport == 0 and timeout == 300 and flags & IP_VS_CONN_F_TEMPLATE
               for vport, cport, _, timeout, flags in seen)  # fmt: skip
    assert {c.caddr for c in sync.decode(DATAGRAM, syncid=7).conns} == {CLIENT}


def test_a_backup_with_the_same_services_takes_every_entry() -> None:
    """ip_vs_proc_conn on director's side: the two connections in TIME_WAIT, bound to
    its own real servers, and the template of the persistent service."""
    d = Director()
    d.configure(load_rules(
        "-A -t 203.0.113.5:80 -s rr\n-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m\n"
        "-A -t 203.0.113.5:81 -s rr -p 300\n-a -t 203.0.113.5:81 -r 198.18.0.2:81 -m\n"
    ))  # fmt: skip
    outcomes = [sync.proc_conn(d, conn, 10.0) for conn in sync.decode(DATAGRAM, syncid=7).conns]
    assert "no_dest" not in outcomes and "ipv6" not in outcomes, outcomes
    conns = {(c.vport, c.cport): c for c in d.conns}
    assert set(conns) == {(80, 40000), (81, 40001)}
    for conn in conns.values():
        assert (conn.daddr, conn.state) == (RS, proto_tcp.STATE_NAMES.index("TIME_WAIT"))
        assert conn.dest.addr == RS and conn.dest.inactconns == 1
    assert len(d.conns.templates) == 1
    assert sync.decode(DATAGRAM, syncid=8).conns == []  # another syncid's: not taken


def test_what_our_master_sends_for_the_scenario_is_what_the_kernels_backup_took() -> None:
    """The same two connections, established through director's packet path, and the
    template, as the master sends them.  The bytes are built here from the layout
    (the kernel's v1 header and ip_vs_sync_v4 entries).  Sent in the IPVS VM to kernel
    6.1's backup daemon (`--start-daemon backup --mcast-interface sync0 --syncid 7`,
    the same services), they made `ipvsadm -Lcn` list 203.0.113.10:40000 ->
    203.0.113.5:80 -> 198.18.0.2:80 ESTABLISHED (14:58 left), 203.0.113.10:40001 ->
    :81 ESTABLISHED and the template 203.0.113.10:0 -> :81 ASSURED (04:58), one
    ActiveConn on each real server."""
    from tests.core.packets import ACK, SYN, tcp

    d = Director()
    d.configure(load_rules(
        "-A -t 203.0.113.5:80 -s rr\n-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m\n"
        "-A -t 203.0.113.5:81 -s rr -p 300\n-a -t 203.0.113.5:81 -r 198.18.0.2:81 -m\n"
    ))  # fmt: skip
    for cport, vport in ((40000, 80), (40001, 81)):
        for flags, payload, at in ((SYN, b"", 1.0), (ACK, b"", 1.1), (ACK, b"GET /\r\n", 1.2)):
            d.hook_in(tcp("203.0.113.10", "203.0.113.5", cport, vport, flags, payload), at)
    conns = sorted(d.conns, key=lambda c: c.cport) + list(d.conns.templates.values())
    (ours,) = sync.encode([sync.from_conn(c) for c in conns], syncid=7)

    def v4(flags: int, state: int, cport: int, port: int, timeout: int) -> bytes:
        return struct.pack("!BBHIHHHHII4s4s4s", 0, 6, 36, flags, state, cport, port, port, 0,
                           timeout, CLIENT, VIP, RS)  # fmt: skip

    entries = (
        v4(0, IP_VS_TCP_S_ESTABLISHED, 40000, 80, 900)
        + v4(0, IP_VS_TCP_S_ESTABLISHED, 40001, 81, 900)
        + v4(IP_VS_CONN_F_TEMPLATE, IP_VS_TCP_S_ESTABLISHED, 0, 81, 300)
    )
    assert ours == struct.pack("!BBHBBH", 0, 7, 8 + len(entries), 3, 1, 0) + entries
