"""IPv6 entries of the sync protocol (director.core.sync), against the kernel's wire.

struct ip_vs_sync_v6 (net/netfilter/ipvs/ip_vs_sync.c), 72 bytes, laid out here from
the kernel's struct independently of the module's formats::

    0 type u8 (STYPE_F_INET6 = 1)   1 protocol u8   2 ver_size be16   4 flags be32
    8 state be16   10 cport be16   12 vport be16   14 dport be16   16 fwmark be32
    20 timeout be32 (seconds)   24 caddr[16]   40 vaddr[16]   56 daddr[16]

A backup applies an IPv6 entry as an IPv4 one (ip_vs_proc_sync_conn fills the
connection parameters with ``af = AF_INET6`` and the 16-byte addresses, then
ip_vs_proc_conn); a master sends an IPv6 connection as this entry under version 1
and not at all under version 0 (ip_vs_sync_conn_v0: ``if (unlikely(cp->af !=
AF_INET)) return``).
"""

from __future__ import annotations

import ipaddress

from director.core import sync
from director.core.engine import Director
from director.core.packet import Packet
from director.core.persist import template_key
from director.core.route import Route
from director.core.sync import SyncConn, decode
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import ACK, CLIENT, SYN, VIP, tcp
from tests.core.packets6 import tcp6

IP_VS_CONN_F_MASQ = 0x0000
IP_VS_CONN_F_SYNC = 0x0020
IP_VS_CONN_F_INACTIVE = 0x0100
IP_VS_CONN_F_TEMPLATE = 0x1000
IP_VS_TCP_S_ESTABLISHED = 1


def a6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


C6, V6, D6 = a6("2001:db8:1::10"), a6("2001:db8:1::100"), a6("2001:db8:2::2")


def _v6_packet(saddr: str) -> Packet:
    """The fields template_key reads, of a TCP packet from ``saddr`` to V6 port 80."""
    return Packet(bytearray(60), 6, a6(saddr), V6, 40000, 80, 40, 60)


def be(value: int, size: int) -> bytes:
    return value.to_bytes(size, "big")


def entry_v6(
    flags: int = IP_VS_CONN_F_MASQ, state: int = IP_VS_TCP_S_ESTABLISHED, cport: int = 40000,
    vport: int = 80, dport: int = 8080, fwmark: int = 0, timeout: int = 900,
    caddr: bytes = C6, vaddr: bytes = V6, daddr: bytes = D6, protocol: int = 6,
) -> bytes:  # fmt: skip
    return (
        bytes((1, protocol)) + be(72, 2) + be(flags, 4) + be(state, 2) + be(cport, 2)
        + be(vport, 2) + be(dport, 2) + be(fwmark, 4) + be(timeout, 4) + caddr + vaddr + daddr
    )  # fmt: skip


def message(*entries: bytes) -> bytes:
    body = b"".join(entries)  # 72 is a multiple of 4: no padding
    return bytes((0, 0)) + be(8 + len(body), 2) + bytes((len(entries), 1)) + be(0, 2) + body


def layout_v6(buf: bytes, p: int) -> dict[str, object]:
    def u(o: int, n: int) -> int:
        return int.from_bytes(buf[p + o : p + o + n], "big")

    return {
        "type": buf[p], "protocol": buf[p + 1], "size": u(2, 2), "flags": u(4, 4),
        "state": u(8, 2), "cport": u(10, 2), "vport": u(12, 2), "dport": u(14, 2),
        "fwmark": u(16, 4), "timeout": u(20, 4), "caddr": buf[p + 24 : p + 40],
        "vaddr": buf[p + 40 : p + 56], "daddr": buf[p + 56 : p + 72],
    }  # fmt: skip


def director(*services: ServiceConf) -> Director:
    d = Director()
    d.configure(Config(services=services or (
        ServiceConf("tcp", "2001:db8:1::100", 80, scheduler="rr", persistent=300, netmask="64",
                    dests=(DestConf("2001:db8:2::2", 8080, "masq"),)),
    )))  # fmt: skip
    return d


def test_a_kernel_ipv6_entry_is_applied_to_the_table():
    d = director()
    got = decode(message(entry_v6()))
    assert not got.errors
    (conn,) = got.conns
    assert conn.af == 6
    assert sync.proc_conn(d, conn, 100.0) == "new"
    found = d.conns.find_in(6, C6, 40000, V6, 80)
    assert found is not None and sync.is_synced(found)
    assert (found.caddr, found.vaddr, found.daddr, found.dport) == (C6, V6, D6, 8080)
    assert (found.state, found.timeout, found.expires) == (IP_VS_TCP_S_ESTABLISHED, 900, 1000.0)
    assert (found.dest.activeconns, found.dest.inactconns) == (1, 0)
    assert sync.proc_conn(d, conn, 200.0) == "update"
    assert len(d.conns) == 1


def test_an_ipv6_template_is_filed_where_persistence_looks_for_it():
    """A master's template for the /64 of 2001:db8:1::10 (-M 64: the client network
    2001:db8:1::) is the one the backup's own ip_vs_sched_persist finds for any client
    of that /64."""
    d = director()
    snet = a6("2001:db8:1::")
    template = entry_v6(flags=IP_VS_CONN_F_TEMPLATE, cport=0, state=0, timeout=300, caddr=snet)
    (conn,) = decode(message(template)).conns
    assert sync.proc_conn(d, conn, 0.0) == "new"
    (svc,) = d.services
    key = template_key(svc, _v6_packet("2001:db8:1:0:abcd::1"))
    assert d.conns.templates[key].dest.addr == D6


def test_an_ipv6_fwmark_template_carries_the_mark_in_its_first_word():
    """The kernel's fwmark template has vaddr ``{ .ip = htonl(svc->fwmark) }``: 7 then 12
    zero bytes.  The backup files it where its own persistence looks it up."""
    d = director(ServiceConf("fwm", "::", fwmark=7, scheduler="rr", persistent=300, netmask="128",
                             dests=(DestConf("2001:db8:2::2", 0, "droute"),)))  # fmt: skip
    mark = be(7, 4) + bytes(12)
    template = entry_v6(flags=IP_VS_CONN_F_TEMPLATE, cport=0, state=0, vport=0, dport=0,
                        fwmark=7, timeout=300, protocol=0, vaddr=mark)  # fmt: skip
    (conn,) = decode(message(template)).conns
    assert sync.proc_conn(d, conn, 0.0) == "new"
    (svc,) = d.services
    assert template_key(svc, _v6_packet("2001:db8:1::10")) in d.conns.templates


def test_an_ipv6_connection_goes_out_as_a_72_byte_entry():
    """What a master sends for the connection the backup made: the kernel's layout,
    type STYPE_F_INET6, size 72, flags without HASHED."""
    d = director()
    (conn,) = decode(message(entry_v6())).conns
    sync.proc_conn(d, conn, 0.0)
    (entry,) = d.conns
    data = sync.pack_conn(entry)
    assert data == sync.encode_entry(sync.from_conn(entry))
    assert layout_v6(data, 0) == {
        "type": 1, "protocol": 6, "size": 72, "flags": IP_VS_CONN_F_SYNC, "state": 1,
        "cport": 40000, "vport": 80, "dport": 8080, "fwmark": 0, "timeout": 900,
        "caddr": C6, "vaddr": V6, "daddr": D6,
    }  # fmt: skip
    assert decode(message(data)).conns == [
        SyncConn(6, IP_VS_CONN_F_SYNC, 1, C6, 40000, V6, 80, D6, 8080, 0, 900)
    ]


def _sent(d: Director, version: int) -> list[SyncConn]:
    d.sysctls = d.sysctls.updated({"sync_version": str(version)})
    m = sync.Master(0, 1472, d.sysctls)
    d.set_sync(sync.IP_VS_STATE_MASTER, m)
    for conn in d.conns.all():
        conn.in_pkts = d.sysctls.sync_threshold
        m.sync_conn(conn, 10.0)
    return [c for data in m.take(20.0) for c in decode(data).conns]


def test_version_0_sends_no_ipv6_entry_version_1_does():
    d = director()
    for version in (0, 1):
        sync.proc_conn(d, decode(message(entry_v6())).conns[0], 0.0)
        sent = _sent(d, version)
        assert [c.caddr for c in sent] == ([] if version == 0 else [C6])


def test_a_mixed_family_connection_is_not_synced():
    """An IPv4 client tunnelled to an IPv6 real server: no entry can say it (one family
    for all three addresses), and the kernel never has to (sync daemons and
    mixed-family pools exclude each other: ip_vs_genl_new_daemon, ip_vs_genl_set_cmd).
    The same service with an IPv4 real server is synced."""
    for rs, expected in (("2001:db8:3::2", 0), ("198.19.0.2", 1)):
        d = director(ServiceConf("tcp", VIP, 80, scheduler="rr",
                                 dests=(DestConf(rs, 80, "tunnel"),)))  # fmt: skip
        for svc in d.services:
            for dest in svc.dests:
                source = bytes(16) if len(dest.addr) == 16 else bytes(4)
                dest.route = Route(ifindex=3, source=source, mtu=1500)
        m = sync.Master(0, 1472, d.sysctls)
        d.set_sync(sync.IP_VS_STATE_MASTER, m)
        for flags in (SYN, ACK, ACK):
            d.hook_in(tcp(CLIENT, VIP, 40000, 80, flags), 1.0)
        assert len([c for data in m.take(5.0) for c in decode(data).conns]) == expected


def test_an_ipv6_connection_is_synced_from_the_packet_path():
    """ip_vs_sync_conn from ip_vs_in: an IPv6 NAT connection's third packet (the sync
    threshold) sends it, with its template, as 72-byte entries."""
    d = director()
    m = sync.Master(0, 1472, d.sysctls)
    d.set_sync(sync.IP_VS_STATE_MASTER, m)
    for i, flags in enumerate((SYN, ACK, ACK)):
        d.hook_in(tcp6("2001:db8:1::10", "2001:db8:1::100", 40000, 80, flags), float(i))
    data = m.take(10.0)
    conns = [c for message in data for c in decode(message).conns]
    assert {(c.af, c.caddr, c.flags & IP_VS_CONN_F_TEMPLATE) for c in conns} == {
        (6, C6, 0),
        (6, a6("2001:db8:1::"), IP_VS_CONN_F_TEMPLATE),
    }
    assert all(layout_v6(message, 8)["size"] == 72 for message in data)
