"""Persistence templates, thresholds, quiescing, one-packet scheduling, removed real
servers and connection reuse, each against the kernel's rules (ip_vs_core.c,
ip_vs_conn.c, ip_vs_ctl.c)."""

from __future__ import annotations

import ipaddress
import socket

from director.core.engine import Director
from director.core.packet import Packet
from director.core.persist import mask, template_key
from director.core.service import ServiceTable, pack_addr, pack_netmask
from director.core.xmit import DROP, SEND
from director.ctl.ipvsadm import load_rules
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import ACK, CLIENT, FIN, RS1, RS2, SYN, VIP, tcp, udp
from tests.core.packets6 import tcp6

OTHER = "203.0.113.11"
NEIGHBOUR = "203.0.113.200"  # same /24 as CLIENT, for -M 255.255.255.0


def make(*services: ServiceConf) -> Director:
    d = Director()
    d.configure(Config(services=services))
    return d


def nat(*dests: tuple[str, int]) -> tuple[DestConf, ...]:
    return tuple(DestConf(a, p, "masq") for a, p in dests)


def server_of(action_data) -> str:
    action, data = action_data
    assert action == SEND
    return socket.inet_ntoa(bytes(data[16:20]))


def test_persistence_keeps_a_client_on_one_server_until_the_timeout():
    d = make(
        ServiceConf("tcp", VIP, 80, scheduler="rr", persistent=60, dests=nat((RS1, 80), (RS2, 80)))
    )
    first = server_of(d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0))
    other = server_of(d.hook_in(tcp(OTHER, VIP, 40000, 80, SYN), 0.0))
    assert first != other  # rr moved on for the second client
    for port in range(40001, 40010):
        assert server_of(d.hook_in(tcp(CLIENT, VIP, port, 80, SYN), float(port - 40000))) == first
    (template,) = [t for t in d.conns.templates.values() if t.caddr == socket.inet_aton(CLIENT)]
    assert (template.cport, template.vport, template.dport, template.state_name) == (
        0,
        80,
        80,
        "NONE",
    )
    assert template.n_control == 10
    assert template.dest.persistconns == 1


def test_a_template_outlives_the_connections_it_controls():
    d = make(ServiceConf("udp", VIP, 53, scheduler="rr", persistent=10, dests=nat((RS1, 53))))
    d.hook_in(udp(CLIENT, VIP, 5000, 53), 0.0)  # the connection lives 300 s (UDP)
    assert d.expire(11.0) == 0  # template due at 10 s but still controls one
    assert d.expire(299.0) == 0  # put off by 10 s at a time while the connection lives
    assert len(d.conns.templates) == 1
    d.expire(311.0)  # the UDP connection went at 300 s, the template at its next check
    assert not d.conns.templates


def test_a_deferred_template_is_put_off_by_60_s_from_then_on():
    """ip_vs_conn.c ip_vs_conn_expire, expire_later: a template whose timer fires while
    it still controls connections gets ``cp->timeout = 60*HZ`` and is restarted with
    it; ip_vs_core.c ip_vs_sched_persist then restarts an existing template with that
    timeout (ip_vs_conn_put(ct)), not the service's -p, for every later connection."""
    d = make(ServiceConf("udp", VIP, 53, scheduler="rr", persistent=10, dests=nat((RS1, 53))))
    d.hook_in(udp(CLIENT, VIP, 5000, 53), 0.0)  # the connection lives 300 s (UDP)
    (template,) = d.conns.templates.values()
    assert (template.timeout, template.expires) == (10, 10.0)
    d.expire(11.0)
    assert (template.timeout, template.expires) == (60, 70.0)
    d.hook_in(udp(CLIENT, VIP, 5001, 53), 15.0)  # another connection through it
    assert template.expires == 75.0  # 15 + 60, not 15 + 10


def test_template_expires_then_the_client_is_scheduled_afresh():
    d = make(
        ServiceConf("tcp", VIP, 80, scheduler="rr", persistent=5, dests=nat((RS1, 80), (RS2, 80)))
    )
    first = server_of(d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0))
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, dr := (ACK | 0)), 0.1)
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, dr | 0x04), 0.2)  # RST: CLOSE, 10 s
    d.expire(30.0)
    assert not d.conns.templates and len(d.conns) == 0
    assert server_of(d.hook_in(tcp(CLIENT, VIP, 40001, 80, SYN), 31.0)) != first


def test_netmask_groups_clients():
    d = make(
        ServiceConf(
            "tcp",
            VIP,
            80,
            scheduler="rr",
            persistent=60,
            netmask="255.255.255.0",
            dests=nat((RS1, 80), (RS2, 80)),
        )
    )
    a = server_of(d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0))
    b = server_of(d.hook_in(tcp(NEIGHBOUR, VIP, 40000, 80, SYN), 0.0))
    assert a == b
    assert len(d.conns.templates) == 1


def test_port_zero_service_keeps_the_clients_port_and_one_template():
    d = make(
        ServiceConf("tcp", VIP, 0, scheduler="rr", persistent=60, dests=(DestConf(RS1, 0, "masq"),))
    )
    _, data80 = d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0)
    _, data443 = d.hook_in(tcp(CLIENT, VIP, 40001, 443, SYN), 0.0)
    assert int.from_bytes(data80[22:24], "big") == 80
    assert int.from_bytes(data443[22:24], "big") == 443
    (template,) = d.conns.templates.values()
    assert (template.vport, template.dport) == (0, 0)


def test_fwmark_service_matches_by_mark_with_an_ip_template():
    d = make(
        ServiceConf(
            "fwm", fwmark=7, scheduler="rr", persistent=60, dests=(DestConf(RS1, 0, "masq"),)
        )
    )
    assert server_of(d.hook_in(tcp(CLIENT, VIP, 40000, 443, SYN), 0.0, mark=7)) == RS1
    assert d.hook_in(tcp(CLIENT, VIP, 40001, 443, SYN), 0.0, mark=0) == (0, None)
    (template,) = d.conns.templates.values()
    assert (template.protocol, template.proto.name, template.vaddr) == (0, "IP", b"\0\0\0\7")


def test_quiescent_template_is_kept_unless_expire_quiescent_template():
    conf = ServiceConf(
        "tcp", VIP, 80, scheduler="wlc", persistent=60, dests=nat((RS1, 80), (RS2, 80))
    )
    d = make(conf)
    first = server_of(d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0))
    quiesced = tuple(
        DestConf(x.addr, x.port, "masq", weight=0 if x.addr == first else 1) for x in conf.dests
    )
    d.configure(
        Config(
            services=(ServiceConf("tcp", VIP, 80, scheduler="wlc", persistent=60, dests=quiesced),)
        )
    )
    assert server_of(d.hook_in(tcp(CLIENT, VIP, 40001, 80, SYN), 1.0)) == first
    d.sysctls.expire_quiescent_template = True
    assert server_of(d.hook_in(tcp(CLIENT, VIP, 40002, 80, SYN), 2.0)) != first


def test_weight_zero_drains_but_the_open_connection_goes_on():
    d = make(ServiceConf("tcp", VIP, 80, scheduler="rr", dests=nat((RS1, 80), (RS2, 80))))
    first = server_of(d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0))
    weights = tuple(DestConf(a, 80, "masq", weight=0 if a == first else 1) for a in (RS1, RS2))
    d.configure(Config(services=(ServiceConf("tcp", VIP, 80, scheduler="rr", dests=weights),)))
    assert server_of(d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK), 1.0)) == first
    for port in range(40001, 40006):
        assert server_of(d.hook_in(tcp(CLIENT, VIP, port, 80, SYN), 1.0)) != first


def test_upper_threshold_overloads_and_lower_threshold_clears():
    d = make(
        ServiceConf(
            "udp",
            VIP,
            53,
            scheduler="rr",
            dests=(DestConf(RS1, 53, "masq", u_threshold=3, l_threshold=1),),
        )
    )
    dest = next(iter(d.services)).dests[0]
    for port in range(3):
        d.hook_in(udp(CLIENT, VIP, 5000 + port, 53), 0.0)
    assert dest.overloaded
    assert d.hook_in(udp(CLIENT, VIP, 6000, 53), 0.0)[0] == SEND
    assert d.drops["no_dest"] == 1  # the only server is overloaded: port unreachable
    d.expire(300.0)
    assert not dest.overloaded  # 0 < lower threshold 1


def test_upper_threshold_alone_clears_below_three_quarters():
    d = make(
        ServiceConf(
            "udp", VIP, 53, scheduler="rr", dests=(DestConf(RS1, 53, "masq", u_threshold=4),)
        )
    )
    dest = next(iter(d.services)).dests[0]
    for port in range(4):
        d.hook_in(udp(CLIENT, VIP, 5000 + port, 53), float(port))
    assert dest.overloaded
    d.expire(300.0)  # one left: 3 * 4 = 12 is not < 4 * 3
    assert dest.overloaded
    d.expire(301.0)  # two gone: 2 * 4 = 8 < 12
    assert not dest.overloaded


def test_one_packet_scheduling_hashes_nothing():
    d = make(ServiceConf("udp", VIP, 53, scheduler="rr", ops=True, dests=nat((RS1, 53), (RS2, 53))))
    servers = {server_of(d.hook_in(udp(CLIENT, VIP, 5000, 53), 0.0)) for _ in range(4)}
    assert servers == {RS1, RS2}
    assert len(d.conns) == 0
    assert next(iter(d.services)).stats.conns == 4


def test_removed_server_drops_silently_unless_expire_nodest_conn():
    d = make(ServiceConf("tcp", VIP, 80, scheduler="rr", dests=nat((RS1, 80), (RS2, 80))))
    first = server_of(d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0))
    rest = tuple(DestConf(a, 80, "masq") for a in (RS1, RS2) if a != first)
    d.configure(Config(services=(ServiceConf("tcp", VIP, 80, scheduler="rr", dests=rest),)))
    assert d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK), 1.0) == (DROP, "dest_unavailable")
    assert len(d.services.trash) == 1  # kept while a connection still uses it
    d.sysctls.expire_nodest_conn = True
    assert server_of(d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 2.0)) != first
    assert not d.services.trash[0].conns


def test_removing_a_server_with_expire_nodest_conn_flushes_its_entries():
    """ip_vs_ctl.c __ip_vs_del_dest queues ip_vs_expire_nodest_conn_flush
    (ip_vs_conn.c) when expire_nodest_conn is set: the removed server's connections,
    and then the templates that control nothing any more, go at once, not at their
    next packet; other servers' entries stay.  Without the sysctl they stay until they
    expire (their packets are dropped)."""
    conf = ServiceConf("tcp", VIP, 80, scheduler="rr", persistent=300,
                       dests=nat((RS1, 80), (RS2, 80)))  # fmt: skip
    for flush in (False, True):
        d = make(conf)
        d.sysctls.expire_nodest_conn = flush
        for client, port in (("203.0.113.10", 40000), ("203.0.113.11", 40001)):
            d.hook_in(tcp(client, VIP, port, 80, SYN), 0.0)
            d.hook_in(tcp(client, VIP, port, 80, ACK), 0.1)
        gone = next(c for c in d.conns if c.cport == 40000).dest
        rest = tuple(x for x in conf.dests if pack_addr(x.addr) != gone.addr)
        d.configure(Config(services=(ServiceConf("tcp", VIP, 80, scheduler="rr",
                                                 persistent=300, dests=rest),)))  # fmt: skip
        ports = sorted(c.cport for c in d.conns)
        assert ports == ([40001] if flush else [40000, 40001])
        assert len(d.conns.templates) == (1 if flush else 2)
        assert (gone.activeconns, gone.persistconns) == ((0, 0) if flush else (1, 1))
        assert (not d.services.trash) is flush


def test_readded_server_is_revived_with_its_counters():
    conf = ServiceConf("tcp", VIP, 80, scheduler="rr", dests=nat((RS1, 80)))
    d = make(conf)
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0)
    old = next(iter(d.services)).dests[0]
    d.configure(Config(services=(ServiceConf("tcp", VIP, 80, scheduler="rr"),)))
    d.configure(Config(services=(conf,)))
    assert next(iter(d.services)).dests[0] is old
    assert old.stats.conns == 1 and old.activeconns == 1  # SYN_RECV is active


def test_a_server_moved_to_another_service_comes_back_fresh():
    """ip_vs_ctl.c ip_vs_trash_get_dest matches a removed server by its service
    (dest->protocol, vaddr, vport, vfwmark) as well as its address and port: moved
    from :80 to :8080, RS1 starts with no counters and no connections there, and the
    :80 connection still finds its server removed; put back into :80 it is revived."""
    web = ServiceConf("tcp", VIP, 80, scheduler="rr", dests=nat((RS1, 80)))
    d = make(web)
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0)
    old = next(iter(d.services)).dests[0]
    moved = ServiceConf("tcp", VIP, 8080, scheduler="rr", dests=nat((RS1, 80)))
    d.configure(Config(services=(ServiceConf("tcp", VIP, 80, scheduler="rr"), moved)))
    other = d.services.lookup(6, pack_addr(VIP), 8080)
    assert other is not None
    new = other.dests[0]
    assert new is not old
    assert (new.stats.conns, new.activeconns, new.inactconns) == (0, 0, 0)
    assert d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK), 1.0) == (DROP, "dest_unavailable")
    d.configure(Config(services=(web, moved)))
    assert d.services.lookup(6, pack_addr(VIP), 80).dests[0] is old
    assert old.available and old.stats.conns == 1


def test_syn_to_a_quiesced_server_is_rescheduled_with_expire_nodest_conn():
    """ip_vs_core.c ip_vs_in_hook: a SYN (is_new_conn) meeting an entry whose real server
    has weight 0 reschedules when expire_nodest_conn is set (the entry expires now);
    without it, or for a packet that is not a SYN, the entry carries on to the
    quiesced server, as IPVS lets established connections drain."""
    conf = ServiceConf("tcp", VIP, 80, scheduler="rr", dests=nat((RS1, 80), (RS2, 80)))
    for expire_nodest in (False, True):
        d = make(conf)
        d.sysctls.expire_nodest_conn = expire_nodest
        first = server_of(d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0))
        d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK), 0.1)  # ESTABLISHED: not reusable
        quiesced = tuple(DestConf(a, 80, "masq", weight=0 if a == first else 1)
                         for a in (RS1, RS2))  # fmt: skip
        d.configure(Config(services=(ServiceConf("tcp", VIP, 80, scheduler="rr",
                                                 dests=quiesced),)))  # fmt: skip
        assert server_of(d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK, b"more"), 1.0)) == first
        again = server_of(d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 2.0))
        assert (again != first) is expire_nodest
        (conn,) = list(d.conns)
        assert conn.state_name == ("SYN_RECV" if expire_nodest else "ESTABLISHED")


def test_syn_on_time_wait_schedules_afresh():
    d = make(ServiceConf("tcp", VIP, 80, scheduler="rr", dests=nat((RS1, 80), (RS2, 80))))
    first = server_of(d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0))
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK), 0.1)
    d.hook_in(tcp(CLIENT, VIP, 40000, 80, FIN | ACK), 0.2)
    d.hook_out(tcp(first, CLIENT, 80, 40000, FIN | ACK), 0.3)
    (conn,) = list(d.conns)
    assert conn.state_name == "TIME_WAIT"
    assert server_of(d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 1.0)) != first
    d.sysctls.conn_reuse_mode = 0


def test_sloppy_tcp_schedules_mid_stream():
    d = make(ServiceConf("tcp", VIP, 80, scheduler="rr", dests=nat((RS1, 80))))
    assert d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK), 0.0) == (0, None)
    d.sysctls.sloppy_tcp = True
    assert server_of(d.hook_in(tcp(CLIENT, VIP, 40000, 80, ACK), 0.0)) == RS1


# -- IPv6: -M as a prefix length ---------------------------------------------------


def _v6_packet(saddr: str, sport: int = 40000) -> Packet:
    """The fields template_key reads, of a TCP packet from ``saddr`` to the IPv6 VIP."""
    return Packet(bytearray(60), 6, ipaddress.IPv6Address(saddr).packed,
                  ipaddress.IPv6Address(VIP6).packed, sport, 80, 40, 60)  # fmt: skip


VIP6 = "2001:db8:1::100"


def test_minus_m_64_masks_an_ipv6_client_to_its_slash_64():
    """ip_vs_sched_persist (net/netfilter/ipvs/ip_vs_core.c): for an AF_INET6 service
    ``snet_plen = svc->netmask; ipv6_addr_prefix(&snet.in6, &iph->saddr.in6,
    snet_plen)``: the template's client is the first 64 bits of the address, the other
    64 zero.  ipvsadm -M 64 sends the prefix length as the netmask."""
    config = load_rules(
        f"-A -t [{VIP6}]:80 -s rr -p 300 -M 64\n-a -t [{VIP6}]:80 -r [2001:db8:2::2]:80 -m\n"
    )
    table = ServiceTable()
    table.apply(config)
    (svc,) = table
    assert svc.netmask == b"\xff" * 8 + b"\x00" * 8
    key = template_key(svc, _v6_packet("2001:db8:1:0:aaaa:bbbb:cccc:dddd"))
    assert key == (6, ipaddress.IPv6Address("2001:db8:1::").packed, 0, svc.key[1], 80)
    assert template_key(svc, _v6_packet("2001:db8:1::10", 50000)) == key
    assert template_key(svc, _v6_packet("2001:db8:1:1::10"))[1] != key[1]


def test_an_ipv6_prefix_of_any_length_is_the_kernels_ipv6_addr_prefix():
    """ipv6_addr_prefix (include/net/ipv6.h) keeps ``plen / 8`` whole bytes, then the top
    ``plen % 8`` bits of the next one (``0xff << (8 - b)``), and zeroes the rest."""
    addr = bytes(range(0xF0, 0x100))  # f0 f1 ... ff: every bit position differs
    for plen in (1, 7, 8, 48, 56, 63, 64, 65, 127, 128):
        o, b = divmod(plen, 8)
        expected = addr[:o] + (bytes([addr[o] & (0xFF << (8 - b)) & 0xFF]) if b else b"")
        expected += bytes(16 - len(expected))
        assert mask(addr, pack_netmask(str(plen))) == expected, plen


def test_an_ipv6_service_without_minus_m_keeps_whole_addresses():
    """ipvsadm's default IPv6 netmask is 128: one template per client address."""
    table = ServiceTable()
    table.apply(
        load_rules(f"-A -t [{VIP6}]:80 -s rr -p 300\n-a -t [{VIP6}]:80 -r [2001:db8:2::2]:80 -m\n")
    )
    (svc,) = table
    assert svc.netmask == b"\xff" * 16
    client = ipaddress.IPv6Address("2001:db8:1::10").packed
    assert template_key(svc, _v6_packet("2001:db8:1::10"))[1] == client


def test_an_ipv6_fwmark_template_is_found_again():
    """ip_vs_sched_persist: a firewall-mark template's virtual address is ``union
    nf_inet_addr fwmark = { .ip = htonl(svc->fwmark) }``, for IPv6 the mark followed by
    12 zero bytes: the key a template is filed under (its own addresses) is the key the
    next connection looks it up by."""
    d = make(ServiceConf("fwm", "::", fwmark=7, scheduler="rr", persistent=60,
                         dests=(DestConf("2001:db8:2::2", 0, "masq"),)))  # fmt: skip
    (svc,) = d.services
    key = template_key(svc, _v6_packet("2001:db8:1::10"))
    assert key[3] == bytes([0, 0, 0, 7]) + bytes(12)
    first = d._template(svc, _v6_packet("2001:db8:1::10"), 0.0)
    assert first is not None and first.in_key == key
    assert d._template(svc, _v6_packet("2001:db8:1::10", 40001), 1.0) is first
    assert len(d.conns.templates) == 1


def test_minus_m_64_through_the_hook_keeps_a_slash_64_on_one_server():
    """The whole path: rr would alternate, but every client of 2001:db8:1::/64 comes
    through one template to one real server; a client of another /64 is scheduled
    afresh (rr's next)."""
    d = make(ServiceConf("tcp", VIP6, 80, scheduler="rr", persistent=60, netmask="64",
                         dests=nat(("2001:db8:2::2", 80), ("2001:db8:2::3", 80))))  # fmt: skip

    def server(client: str, port: int) -> bytes:
        action, data = d.hook_in(tcp6(client, VIP6, port, 80, SYN), 1.0)
        assert action == SEND and isinstance(data, bytearray)
        return bytes(data[24:40])

    first = server("2001:db8:1::10", 40000)
    for i, client in enumerate(("2001:db8:1::11", "2001:db8:1:0:aaaa::1", "2001:db8:1::10")):
        assert server(client, 40001 + i) == first
    assert server("2001:db8:1:1::10", 40000) != first
    assert len(d.conns.templates) == 2
